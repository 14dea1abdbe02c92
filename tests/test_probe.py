"""Probe runs: a probe is the start of the full run (same numbers), a probe out of budget stops
cleanly and is never recorded, a whole run that fits is measured, probe features are what their
definition says, and the predictor learns from them without changing when they are off."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from synthetic_history import SMALL, synthetic_rows

from advisor.errors import PredictorError, TrainingError
from advisor.history import open_history
from advisor.predictor.estimator import AdvisorPredictor
from advisor.predictor.features import PROBE_PREFIX, FeatureSchema
from advisor.predictor.probes import PROBE_FEATURES, probe_features
from advisor.probe import run_probes
from advisor.runner import run_finetune
from advisor.session import Session
from advisor.specs import DatasetSpec, ModelSpec, RunResult

# ---------------------------------------------------------------------------- probe runs

#: One session for the runs on one pair (as recommend keeps one): the model, the test samples,
#: their zero-shot features and the curve's validation part load once.
_SESSION = Session()
MODEL, DATA = ModelSpec("lit-offline"), DatasetSpec("digits")
SMALL_RUN = dict(shots=4, seed=3, max_ood=40, ood=("fashion-mnist",))


def _probes(configs, epochs, budget_s=None, history=None):
    return run_probes(MODEL, DATA, configs, epochs=epochs, budget_s=budget_s, max_images=100, device="cpu",
                      quiet=True, history=history, session=_SESSION, **SMALL_RUN)


def _full(method: str, hparams: dict) -> RunResult:
    return run_finetune(MODEL, DATA, method, record=False, quiet=True, hparams=hparams, signals=False,
                        max_test=100, device="cpu", session=_SESSION, **SMALL_RUN)


def _strip(curve):
    return [{k: v for k, v in p.items() if k != "train_s"} for p in curve]  # wall-clock: may differ


def test_a_probe_follows_the_first_epochs_of_the_full_run_with_the_same_numbers() -> None:
    configs = {"coop": {"epochs": 4, "lr": 0.002}, "tpc_cma": {"epochs": 4}}
    probes = _probes(configs, epochs=2)
    loads = dict(_SESSION.loads)
    assert loads["model"] == 1 and loads["curve_validation"] == 1  # the second probe loaded nothing again
    for probe in probes:
        full = _full(probe.method, configs[probe.method])
        assert [p["epoch"] for p in full.curve] == [0, 1, 2, 4]
        assert (probe.epochs, probe.epochs_run, probe.stopped, probe.measured) == (4, 2, "epochs", False)
        assert _strip(probe.curve) == _strip(full.curve[:3])
        assert [p["train_loss"] for p in probe.curve[1:]] == full.losses[:2]
        assert probe.hparams == full.hparams  # the schedule of the whole run
        assert probe.id_gain is None and probe.cost_s > 0 and probe.budget_s is None
    assert probes[0].setup_s > 0 and probes[1].setup_s == 0.0
    assert _SESSION.loads["model"] == 1


def test_a_probe_out_of_budget_stops_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    configs = {"coop": {"epochs": 4, "lr": 0.002, "batch_size": 1}, "tpc_cma": {"epochs": 4}}
    with open_history(str(tmp_path / "h.db")) as h:
        first, second = _probes(configs, epochs=3, budget_s=0.001, history=h)
        assert h.count() == 0
    # The deadline is checked after every optimiser step: one step of the 40 of epoch 1, then a
    # clean stop with what was measured: the untouched model's point; the partial epoch gives none.
    assert (first.steps_run, first.epochs_run, first.stopped, first.measured, first.error) == (1, 0, "budget", False, None)
    assert [p["epoch"] for p in first.curve] == [0] and first.curve[0]["val_acc"] is not None
    assert first.budget_s == pytest.approx(0.0005)  # half the budget: two methods
    # Nothing was left for the second method: not run.
    assert (second.steps_run, second.epochs_run, second.stopped, second.curve, second.cost_s) == (0, 0, "budget", [], 0.0)


def test_a_budget_much_shorter_than_one_epoch_stops_inside_it_on_time() -> None:
    # CoOp at batch 1 on 40 shots: 40 optimiser steps in an epoch (seconds on a CPU); a check at
    # epoch ends only would run them all and return one epoch late, with a point at epoch 1.
    budget = 1.0
    (r,) = _probes({"coop": {"epochs": 4, "lr": 0.002, "batch_size": 1}}, epochs=2, budget_s=budget)
    assert (r.stopped, r.epochs_run, r.measured, r.error) == ("budget", 0, False, None)
    assert 1 <= r.steps_run < 40, r.steps_run
    assert [p["epoch"] for p in r.curve] == [0]
    # The training (the tuner's set-up and its steps) ends within a step or so of the deadline.
    assert r.train_s < budget + 2.0, (r.train_s, r.steps_run)


def test_a_whole_run_that_fits_the_budget_is_measured_and_recorded(tmp_path: Path) -> None:
    hparams = {"epochs": 3}
    with open_history(str(tmp_path / "h.db")) as h:
        (r,) = _probes({"tpc_cma": hparams}, epochs=1, budget_s=600.0, history=h)
        assert h.count() == 1
        stored = h.get_run(r.run_id)
    full = _full("tpc_cma", hparams)
    assert (r.measured, r.stopped, r.epochs_run, r.epochs) == (True, None, 3, 3)
    assert r.id_gain == pytest.approx(full.id_acc_after - full.id_acc_before, abs=1e-12)
    ood = [full.ood_after[k] - full.ood_before[k] for k in full.ood_before]
    assert r.ood_change == pytest.approx(float(np.mean(ood)), abs=1e-12)
    assert _strip(r.curve) == _strip(full.curve)
    assert stored["method"] == "tpc_cma" and [p["epoch"] for p in stored["curve"]] == [0, 1, 2, 3]
    assert stored["provenance"]["probe"] == {"epochs": 1, "budget_s": 600.0}


def test_bad_probe_requests_are_refused_before_any_work() -> None:
    with pytest.raises(TrainingError, match="--probe"):
        _probes({"coop": {}}, epochs=0)
    with pytest.raises(TrainingError, match="--probe-budget"):
        _probes({"coop": {}}, epochs=1, budget_s=-1.0)
    with pytest.raises(TrainingError, match="unknown hyper-parameter|rank"):
        _probes({"coop": {"rank": 4}}, epochs=1)


# ---------------------------------------------------------------------------- probe features

CURVE = [
    {"epoch": 0, "step": 0, "train_loss": None, "val_acc": 0.40, "ood_proxy_acc": 0.60, "train_s": 0.0},
    {"epoch": 1, "step": 4, "train_loss": 2.0, "val_acc": 0.50, "ood_proxy_acc": 0.55, "train_s": 0.5},
    {"epoch": 2, "step": 8, "train_loss": 1.5, "val_acc": 0.58, "ood_proxy_acc": 0.52, "train_s": 1.0},
    {"epoch": 5, "step": 20, "train_loss": 1.0, "val_acc": 0.70, "ood_proxy_acc": 0.50, "train_s": 2.5},
    {"epoch": 10, "step": 40, "train_loss": 0.5, "val_acc": 0.75, "ood_proxy_acc": 0.45, "train_s": 5.0},
]


def test_probe_features_against_a_hand_computation() -> None:
    one = probe_features(CURVE, 1, epochs=10)
    assert one["val_acc"] == 0.50 and one["val_gain"] == pytest.approx(0.10)
    assert one["train_loss"] == 2.0 and math.isnan(one["loss_ratio"])  # k = 1: no ratio
    assert one["ood_change"] == pytest.approx(-0.05) and one["log_train_s"] == pytest.approx(math.log(0.5))
    assert one["val_extrap"] == 0.50  # k = 1: the value at 1

    two = probe_features(CURVE, 2, epochs=10)
    assert two["val_gain"] == pytest.approx(0.18) and two["loss_ratio"] == pytest.approx(0.75)
    assert two["ood_change"] == pytest.approx(-0.08) and two["log_train_s"] == pytest.approx(0.0)
    # Line through (ln 1, 0.50) and (ln 2, 0.58), at ln 10: 0.58 + 0.08 / ln 2 * (ln 10 - ln 2).
    assert two["val_extrap"] == pytest.approx(0.58 + 0.08 / math.log(2) * math.log(5))

    # k = 5: least squares over ln 1, ln 2, ln 5 (0, 0.6931, 1.6094) of 0.50, 0.58, 0.70.
    x, y = [0.0, math.log(2), math.log(5)], [0.50, 0.58, 0.70]
    mx, my = sum(x) / 3, sum(y) / 3
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    five = probe_features(CURVE, 5, epochs=10)
    assert five["val_extrap"] == pytest.approx(0.70 + slope * math.log(2))
    assert five["loss_ratio"] == pytest.approx(0.5)
    # Clipped to [0, 1]; at the schedule's end (or without one) the value at k.
    steep = [dict(p, val_acc=v) for p, v in zip(CURVE[:3], (0.1, 0.5, 0.95))]
    assert probe_features(steep, 2, epochs=100)["val_extrap"] == 1.0
    assert probe_features(CURVE, 2)["val_extrap"] == 0.58
    assert probe_features(CURVE[:3], 2, epochs=2)["val_extrap"] == 0.58


def test_missing_points_and_values_are_nan() -> None:
    assert all(math.isnan(v) for v in probe_features([], 1).values())
    assert list(probe_features(None, 2)) == list(PROBE_FEATURES)
    at3 = probe_features(CURVE, 3, epochs=10)  # no point at epoch 3
    assert all(math.isnan(v) for v in at3.values())
    no_val = [dict(p, val_acc=None) for p in CURVE]
    f = probe_features(no_val, 2, epochs=10)
    assert math.isnan(f["val_acc"]) and math.isnan(f["val_gain"]) and math.isnan(f["val_extrap"])
    assert f["train_loss"] == 1.5  # the rest is still measured
    with pytest.raises(ValueError, match="at least one epoch"):
        probe_features(CURVE, 0)


# ---------------------------------------------------------------------------- the predictor


def _hidden_rows(n_datasets: int, seed: int, curve_every: int = 1):
    """SYNTHETIC rows whose ID gain depends on a hidden per-run value that no signal carries and
    the learning curve shows at epoch 1 (as a probe would); every ``curve_every``-th row has a curve."""
    rng = np.random.RandomState(seed)
    rows = synthetic_rows(n_datasets=n_datasets, shots=(16,), seed=seed)
    for i, r in enumerate(rows):
        hidden = float(rng.uniform(-0.1, 0.3))
        r["id_acc_after"] = r["id_acc_before"] + hidden
        r["run_id"] = f"{r['run_id']}-{seed}"
        if i % curve_every == 0:
            v0 = 0.3 + float(rng.normal(0, 0.01))
            r["curve"] = [{"epoch": 0, "step": 0, "train_loss": None, "val_acc": v0, "ood_proxy_acc": 0.5, "train_s": 0.0},
                          {"epoch": 1, "step": 5, "train_loss": 1.0 - hidden, "val_acc": v0 + 0.7 * hidden,
                           "ood_proxy_acc": 0.49, "train_s": 0.2}]
        else:
            r["curve"] = []
    return rows


def test_the_probe_predictor_learns_from_curves_and_takes_rows_without_them() -> None:
    train = _hidden_rows(6, seed=0, curve_every=2)  # half the runs without a curve (older runs)
    test = _hidden_rows(2, seed=1)
    probe = AdvisorPredictor(**SMALL, probe_epochs=1).fit_rows(train)
    plain = AdvisorPredictor(**SMALL).fit_rows(train)
    schema = probe.model_.schema
    assert schema.probe_epochs == 1 and schema.names[-len(PROBE_FEATURES):] == [PROBE_PREFIX + f for f in PROBE_FEATURES]
    X = probe.rows_matrix(train)
    assert np.isnan(X[1::2, -len(PROBE_FEATURES):]).all() and np.isfinite(X[::2, -7:-4]).all()
    truth = np.array([r["id_acc_after"] - r["id_acc_before"] for r in test])
    got = {name: est.model_.predict_rows(test)["mean"][:, 0] for name, est in (("probe", probe), ("plain", plain))}
    mae = {name: float(np.mean(np.abs(v - truth))) for name, v in got.items()}
    assert mae["probe"] < 0.5 * mae["plain"], mae
    no_curves = [dict(r, curve=[]) for r in test]
    assert np.isfinite(probe.model_.predict_rows(no_curves)["mean"]).all()
    # Stored and read back: the same schema and predictions.
    from advisor.predictor.stored import FittedPredictor

    back = FittedPredictor.from_json(probe.model_.to_json())
    assert back.schema.probe_epochs == 1
    assert np.array_equal(back.predict_rows(test)["mean"], probe.model_.predict_rows(test)["mean"])


def test_without_probe_epochs_curves_change_nothing() -> None:
    rows = _hidden_rows(4, seed=2)
    bare = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
    a = AdvisorPredictor(**SMALL).fit_rows(rows).model_
    b = AdvisorPredictor(**SMALL, probe_epochs=None).fit_rows(bare).model_
    assert a.feature_names == b.feature_names and not any(n.startswith(PROBE_PREFIX) for n in a.feature_names)
    assert np.array_equal(a.predict_rows(rows)["mean"], b.predict_rows(bare)["mean"])
    assert FeatureSchema.from_dict(a.schema.to_dict()) == a.schema
    old = {k: v for k, v in a.schema.to_dict().items() if k != "probe_epochs"}  # a stored predictor's schema
    assert FeatureSchema.from_dict(old).probe_epochs is None
    assert AdvisorPredictor().get_params()["probe_epochs"] is None
    with pytest.raises(PredictorError, match="probe_epochs"):
        AdvisorPredictor(**SMALL, probe_epochs=0).fit_rows(rows)


def _record(h, rows) -> None:
    for r in rows:
        h.record_run(RunResult(
            model=r["model"], pretrained=None, dataset=r["dataset"], method=r["method"], shots=r["shots"],
            seed=r["seed"], hparams={"epochs": 10}, split_hash="synthetic", id_acc_before=r["id_acc_before"],
            id_acc_after=min(1.0, max(0.0, r["id_acc_after"])), ood_before=r["ood_before"],
            ood_after={k: max(0.0, v) for k, v in r["ood_after"].items()}, gap_before=None, gap_after=None,
            wall_time_s=r["wall_time_s"], train_images_per_s=None, peak_memory_mb=None, trainable_params=1,
            device=r["device"], provenance={"synthetic": True}, signals=r["signals"], model_desc=r["model_desc"],
            dataset_desc=r["dataset_desc"], run_id=r["run_id"], curve=r["curve"],
        ))


def test_probe_predictors_are_stored_as_probe_k_and_trained_when_missing(tmp_path: Path, cli) -> None:
    from advisor.predictor.training import load_or_train_probe_predictor

    db = str(tmp_path / "h.db")
    with open_history(db) as h:
        _record(h, _hidden_rows(4, seed=3, curve_every=2))
        fitted, note = load_or_train_probe_predictor(h, 1)
        assert fitted.schema.probe_epochs == 1 and "trained one now" in note and "with a curve to epoch 1" in note
        assert h.load_predictor("probe-1") is not None and h.load_predictor("default") is None
        again, note = load_or_train_probe_predictor(h, 1)
        assert note is None and again.training_hash == fitted.training_hash
        with pytest.raises(PredictorError, match="to epoch 2"):
            load_or_train_probe_predictor(h, 2)  # the curves stop at epoch 1
    result = cli("predictor", "train", "--probe", "1", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    with open_history(db) as h:
        stored = h.load_predictor("probe-1")
        assert stored["scores"]["n_with_curve"] == 10 and stored["scores"]["probe_epochs"] == 1
        assert stored["id"] > 1 and h.load_predictor("default") is None
