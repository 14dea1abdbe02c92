"""A Session owns what is loaded: each thing is resolved once per session, and nothing is shared
between sessions (no module keeps a cache of its own)."""

from __future__ import annotations

import pytest

from advisor import embed
from advisor.session import Session, session_or_new
from advisor.specs import DatasetSpec, ModelSpec


def test_a_session_makes_each_thing_once_and_counts_it() -> None:
    session, made = Session(), []
    for _ in range(3):
        assert session.get("model", "a", lambda: made.append("a") or "A") == "A"
    assert made == ["a"] and session.loads["model"] == 1
    assert session.peek("model", "b") is None and session.loads["model"] == 1
    session.forget("model")
    assert session.peek("model", "a") is None


def test_no_session_means_a_fresh_one() -> None:
    s = Session()
    assert session_or_new(s) is s and session_or_new(None) is not session_or_new(None)


def test_a_model_is_loaded_once_per_session_and_not_shared_between_sessions() -> None:
    spec, before = ModelSpec("tiny-vit"), embed.stats["model_loads"]
    session = Session()
    first = embed.load_model(spec, "cpu", session=session)
    assert embed.load_model(spec, "cpu", session=session) is first
    assert embed.stats["model_loads"] - before == 1 and session.loads["model"] == 1
    assert embed.load_model(spec, "cpu", session=Session()) is not first  # another session loads its own
    assert embed.load_model(spec, "cpu", session=session, fresh=True) is not first  # a private copy


@pytest.mark.slow
def test_a_workers_runs_on_one_pair_resolve_the_model_dataset_and_signals_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from advisor import runner
    from advisor.run_checks import check_request
    from advisor.specs import RunRequest

    checks: list[str] = []
    real_check = runner.check_promptable
    monkeypatch.setattr(runner, "check_promptable",
                        lambda name, bundle: (checks.append(name), real_check(name, bundle))[1])
    session, loads = Session(), embed.stats["model_loads"]
    for seed, method in ((0, "coop"), (1, "coop"), (0, "tpc_cma")):
        req = RunRequest(ModelSpec("tiny-vit"), DatasetSpec("digits"), method, shots=1, seed=seed, epochs=1,
                         ood=("faces",), max_test=20, max_ood=10, device="cpu", record=False, quiet=True)
        run = runner.run_request(check_request(req), session)
        assert run.signals
    assert embed.stats["model_loads"] - loads == 1
    assert session.loads["model"] == 1 and session.loads["pair"] == 1 and session.loads["model_source"] == 1
    assert session.loads["dataset"] == 2  # digits and its OOD reference set
    assert session.loads["eval_set"] == 2 and session.loads["zero_shot"] == 2
    assert sorted(checks) == ["digits", "faces"]  # each dataset's prompts checked once


def test_the_model_name_is_resolved_once_per_session_for_the_weights_check_and_the_load(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from advisor import plugins
    from advisor.pair import prepare_pair

    real, resolved = plugins.get_model_source, []
    monkeypatch.setattr(plugins, "get_model_source", lambda name: (resolved.append(name), real(name))[1])
    session, spec = Session(), ModelSpec("tiny-vit")
    prepare_pair(spec, DatasetSpec("digits"), measure=False, allow_random_weights=True, session=session)
    embed.load_model(spec, "cpu", session=session)
    assert resolved == ["tiny-vit"] and session.loads["model_source"] == 1
