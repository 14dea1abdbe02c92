"""The run request: built once by the command line, the sweep grid and the worker, checked once."""

from __future__ import annotations

import dataclasses

import pytest

from advisor.errors import AdvisorError
from advisor.run_checks import check_request
from advisor.specs import DatasetSpec, ModelSpec, RunRequest
from advisor.sweep.grid import JobConfig, SweepSpecError, check_sweep_options

PAIR = (ModelSpec("tiny-vit"), DatasetSpec("digits"))


def test_a_request_is_frozen_and_keeps_private_copies_of_what_it_was_given() -> None:
    hp, ood = {"epochs": 1}, ["faces"]
    req = RunRequest(*PAIR, "coop", hparams=hp, ood=ood)
    hp["epochs"], ood[0] = 99, "digits"
    assert req.hparams == {"epochs": 1} and req.ood == ("faces",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.seed = 3  # type: ignore[misc]


def test_given_hparams_put_the_command_line_overrides_under_the_hparam_overrides() -> None:
    req = RunRequest(*PAIR, "coop", epochs=2, lr=None, hparams={"n_ctx": 4})
    assert req.given_hparams == {"epochs": 2, "n_ctx": 4}


def test_sweep_options_fill_the_request_fields_they_name() -> None:
    req = RunRequest(*PAIR, "coop").with_sweep_options({"max_images": 30, "max_ood": 7, "ood": ["faces"],
                                                         "signals": False, "save_adapter": False, "device": "cpu"})
    assert (req.max_test, req.max_ood, req.ood, req.signals, req.save_adapter, req.device) == \
        (30, 7, ("faces",), False, False, "cpu")


def test_the_sweep_grid_knows_exactly_the_options_the_request_declares() -> None:
    with pytest.raises(SweepSpecError, match="known: device, max_images, max_ood, ood, save_adapter, signals"):
        check_sweep_options({"epochs": 3})
    assert check_sweep_options({"max_images": 5}) == {"max_images": 5}


def test_a_sweep_job_builds_the_same_request_as_the_command_line() -> None:
    job = JobConfig(model="tiny-vit", dataset="digits", method="coop", shots=2, seed=1, hparams={"epochs": 1},
                    run={"max_images": 40, "ood": ["faces"]})
    built = job.request(db="h.db", quiet=True)
    assert built == RunRequest(*PAIR, "coop", shots=2, seed=1, hparams={"epochs": 1}, max_test=40, ood=("faces",),
                               db="h.db", quiet=True)


def test_check_request_uses_the_tuners_own_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    from advisor.specs import Tuner

    real, seen = Tuner.check_hparams, []

    def counting(self, hp):  # type: ignore[no-untyped-def]
        seen.append((self.name, dict(hp)))
        return real(self, hp)

    monkeypatch.setattr(Tuner, "check_hparams", counting)
    check_request(RunRequest(*PAIR, "coop", epochs=2, hparams={"batch_size": 4}, device="cpu"))
    assert seen == [("coop", {"epochs": 2, "batch_size": 4})]


def test_check_request_returns_the_resolved_hyper_parameters_and_device() -> None:
    checked = check_request(RunRequest(*PAIR, "coop", shots=2, epochs=3, device="cpu"))
    assert checked.device == "cpu" and checked.resolved["epochs"] == 3 and checked.tuner.name == "coop"


@pytest.mark.parametrize("change, message", [
    (dict(epochs=1, hparams={"epochs": 3}), "contradict"),
    (dict(seed=-1), "--seed"),
    (dict(max_test=0), "--max-images"),
    (dict(ood=("digits",)), "cannot be the dataset"),
    (dict(method="no-such-method"), "no-such-method"),
])
def test_check_request_refuses_in_one_line(change: dict, message: str) -> None:
    fields = {"method": "coop", "device": "cpu", **change}
    with pytest.raises(AdvisorError, match=message) as err:
        check_request(RunRequest(*PAIR, **fields))
    assert "\n" not in str(err.value)


def test_planning_leaves_the_device_and_the_ood_sets_to_the_worker() -> None:
    checked = check_request(RunRequest(*PAIR, "coop", ood=("digits",), device="cuda:7"), planning=True)
    assert checked.device == "cuda:7"


def test_run_finetune_takes_exactly_the_requests_fields() -> None:
    from advisor.runner import run_finetune

    with pytest.raises(TypeError):
        run_finetune(*PAIR, "coop", no_such_option=1)
