"""``advisor recommend`` against a real temporary SQLite history.

The runs are SYNTHETIC (see tests/synthetic_history.py; never written to registry.db) with a planted
relation: in-domain gain = SLOPE[method] * iimm, OOD change = FORGET[method] * iimm. The pair
asked about is the real ``digits`` dataset with the ``tiny-vit`` model; its signal set is stored
in the temporary history so no embedding is computed.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest
from click.testing import CliRunner

from advisor.errors import PredictorError, UnknownNameError
from advisor.recommendation import (
    MethodAdvice,
    RecommendError,
    choose,
    heuristic_ranking,
    recommend,
    support_for,
    winner_sentence,
)
from synthetic_history import MODEL_DESC, SLOPE, record_synthetic, synthetic_rows

PAIR_IIMM = 0.8


@pytest.fixture(scope="module")
def digits_desc():
    from advisor.data import dataset_descriptors, load_dataset

    return dataset_descriptors(load_dataset("digits"))


def _store_pair_signals(db, digits_desc, signals=None):
    from advisor.history import open_history

    values = signals or {"iimm": PAIR_IIMM, "gap": 0.5, "unrelated": 0.3, "zero_shot_acc": 0.3}  # SYNTHETIC values
    open_history(db).store_signal_set(dict(MODEL_DESC), digits_desc, "synthetic", values, {}, {})


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def history_db(home, digits_desc):
    db = str(home / "history.db")
    record_synthetic(db, synthetic_rows(n_datasets=4, shots=(16,), iimms=[0.2, 0.4, 0.6, 0.9]))
    _store_pair_signals(db, digits_desc)
    return db


def _registered():
    from advisor.plugins import get_tuners

    return set(get_tuners())


def test_recommend_trains_a_predictor_on_cold_start_and_explains(history_db):
    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="gain")
    assert rec.source == "predictor" and rec.signals_source == "history"
    assert rec.predictor["trained_now"] is True
    assert any("trained one now on 20 runs over 4 datasets" in n for n in rec.notes)
    methods = {a.method for a in rec.methods}
    assert methods == _registered()
    # the planted relation: at iimm 0.8, the largest slope wins on gain
    best = max(methods & set(SLOPE), key=SLOPE.get)
    assert rec.methods[0].method == best  # ranked by the predicted score
    if rec.tied:  # 4 datasets leave wide intervals: the best ones may not be told apart
        assert best in rec.tied and rec.winner == min(
            (a for a in rec.methods if a.method in rec.tied), key=lambda a: a.cost_s).method
        assert "cannot be told apart" in rec.sentence and rec.sentence.startswith(f"Use {rec.winner}, the cheapest")
    else:
        assert rec.winner == best
        assert rec.sentence.startswith(f"Use {best}: largest predicted in-domain gain")
    assert "\n" not in rec.sentence
    scores = [a.score for a in rec.methods if a.eligible]
    assert scores == sorted(scores, reverse=True)
    for a in rec.methods:
        assert a.id_gain_lo <= a.id_gain <= a.id_gain_hi
        assert a.ood_change_lo <= a.ood_change <= a.ood_change_hi
        assert a.cost_s_lo <= a.cost_s <= a.cost_s_hi
        assert a.contributions and a.support_runs == len(a.similar_runs) <= 4  # same family and near
        assert a.id_gain == pytest.approx(SLOPE[a.method] * PAIR_IIMM + 0.04, abs=0.15)
    assert rec.support["same_model_family"] == 20 and rec.support["same_dataset"] == 0

    again = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="gain")
    assert again.predictor["trained_now"] is False and again.winner == rec.winner
    assert not any("changed" in n for n in again.notes)


def test_objectives_and_constraints(history_db):
    gain = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="gain")
    by = {a.method: a for a in gain.methods}
    balanced = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="balanced")
    expected = max(by, key=lambda m: by[m].id_gain + by[m].ood_change)
    assert balanced.methods[0].method == expected  # best score; the winner may be a cheaper tie
    assert balanced.winner in ([expected] + balanced.tied)
    retain = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="retain")
    gainers = [m for m in by if by[m].id_gain > 0]
    assert retain.methods[0].method == max(gainers, key=lambda m: by[m].ood_change)

    # forbid the method that forgets most: it is dropped with the reason
    worst = min(by, key=lambda m: by[m].ood_change)
    limit = -by[worst].ood_change - 0.01
    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="gain", max_forgetting=limit)
    dropped = {a.method: a for a in rec.methods}[worst]
    assert not dropped.eligible and "--max-forgetting" in dropped.excluded and rec.winner != worst
    assert all(-a.ood_change <= limit for a in rec.methods if a.eligible)

    cheapest = min(a.cost_s for a in gain.methods)
    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, budget=cheapest * 0.5)
    assert rec.winner is None and rec.sentence.startswith("No method qualifies")
    assert all("--budget" in a.excluded for a in rec.methods)


def test_bad_arguments_are_one_line_errors(history_db):
    with pytest.raises(RecommendError, match="unknown objective"):
        recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="fastest")
    with pytest.raises(RecommendError, match="max-forgetting"):
        recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, max_forgetting=-1)
    with pytest.raises(UnknownNameError) as exc:
        recommend("no-such-model-xyz", "digits", db=history_db, allow_random_weights=True)
    assert "\n" not in str(exc.value)
    with pytest.raises(UnknownNameError) as exc:
        recommend("tiny-vit", "no-such-dataset-xyz", db=history_db, allow_random_weights=True)
    assert "\n" not in str(exc.value) and "no-such-dataset-xyz" in str(exc.value)


def test_cli_recommend_table_json_and_errors(history_db):
    from advisor.cli import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["recommend", "--model", "tiny-vit", "--dataset", "digits", "--allow-random-weights", "--db", history_db])
    assert r.exit_code == 0, r.output
    assert "ID gain [80%]" in r.output and "OOD change [80%]" in r.output and "cost s" in r.output
    flat = " ".join(r.output.split())  # the sentence may be wrapped to the terminal width
    assert "Use " in flat and ("best predicted in-domain gain plus OOD change" in flat
                               or "cannot be told apart here" in flat)
    assert "base" in r.output and "others" in r.output  # the contributions column adds up from the base
    r = runner.invoke(cli, ["recommend", "--model", "tiny-vit", "--dataset", "digits", "--allow-random-weights", "--db", history_db,
                            "--objective", "retain", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["objective"] == "retain" and doc["winner"] in {m["method"] for m in doc["methods"]}
    assert doc["methods"][0]["contributions"][0].keys() == {"feature", "value"}
    r = runner.invoke(cli, ["recommend", "--model", "nope-model", "--dataset", "digits", "--db", history_db])
    assert r.exit_code == 1 and r.output.startswith("Error: unknown model") and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["recommend", "--model", "tiny-vit", "--dataset", "nope-data", "--allow-random-weights", "--db", history_db])
    assert r.exit_code == 1 and r.output.startswith("Error: unknown dataset")


def test_predictor_trained_on_other_features_is_reported(history_db):
    from advisor.history import open_history
    from advisor.predictor import AdvisorPredictor

    h = open_history(history_db)
    est = AdvisorPredictor(n_estimators=10, n_bags=2).fit_rows(h.training_rows())
    doc = json.loads(est.to_json())
    doc["feature_names"] = ["legacy_" + f if f == "shots" else f for f in doc["feature_names"]]
    h.save_predictor("default", json.dumps(doc), doc["feature_names"], est.model_.training_hash, {})
    from advisor.cli import cli

    r = CliRunner().invoke(cli, ["recommend", "--model", "tiny-vit", "--dataset", "digits", "--allow-random-weights", "--db", history_db])
    assert r.exit_code == 1
    assert r.output.startswith("Error: stored predictor was trained on other features") and "shots" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_signal_drift_and_out_of_range_warnings(home, digits_desc):
    db = str(home / "drift.db")
    record_synthetic(db, synthetic_rows(n_datasets=4, shots=(16,), iimms=[0.2, 0.4, 0.6, 0.9]))
    # the pair lacks "gap", has a new third-party metric, and an iimm beyond the history's range
    _store_pair_signals(db, digits_desc, {"iimm": 1.5, "unrelated": 0.3, "new_metric": 2.0})
    rec = recommend("tiny-vit", "digits", db=db, allow_random_weights=True)
    text = " | ".join(rec.warnings + rec.notes)
    assert "missing for this pair (treated as missing): gap" in text
    assert "not used by the predictor (retrain to use them): new_metric" in text
    assert "iimm=1.5 lies outside the history's range [0.2, 0.9]" in rec.out_of_support


def test_predictor_without_any_shared_signal_is_an_error(home, digits_desc):
    db = str(home / "other-signals.db")
    record_synthetic(db, synthetic_rows(n_datasets=4, shots=(16,)))
    _store_pair_signals(db, digits_desc, {"completely_other": 1.0})
    with pytest.raises(PredictorError) as exc:
        recommend("tiny-vit", "digits", db=db, allow_random_weights=True)
    msg = str(exc.value)
    assert "\n" not in msg and "trained on signals gap, iimm, unrelated, zero_shot_acc, none of which the pair has" in msg


def test_cold_start_with_too_few_runs_falls_back_to_iimm_heuristic(home, digits_desc):
    db = str(home / "small.db")
    record_synthetic(db, synthetic_rows(n_datasets=2, shots=(16,), iimms=[0.3, 0.7])[:6])  # 6 runs
    _store_pair_signals(db, digits_desc)
    rec = recommend("tiny-vit", "digits", db=db, allow_random_weights=True, objective="balanced")
    assert rec.source == "iimm-heuristic"
    assert any(n.startswith("cold start: the history has 6 usable runs over 2 datasets") for n in rec.notes)
    assert any("fell back to the IIMM heuristic" in n for n in rec.notes)
    assert rec.winner is not None and rec.sentence.startswith(f"Use {rec.winner}")
    from advisor.history import open_history

    assert open_history(db).load_predictor("default") is None  # nothing trained on 6 runs


def test_cold_start_with_anchors_answers_from_the_anchor_and_the_methods_priors(home, digits_desc):
    """With the pair's anchors the cold start is numeric: anchor at the asked shots plus each
    method's median offset in the (tiny) history; feasible; and it says what it did."""
    db = str(home / "small-anchored.db")
    record_synthetic(db, synthetic_rows(n_datasets=2, shots=(16,), iimms=[0.3, 0.7])[:6])
    anchors = {"anchor_probe.k4": 0.8, "anchor_probe.k16": 0.9, "anchor_zs.k16": 0.3}  # SYNTHETIC values
    _store_pair_signals(db, digits_desc, {"iimm": PAIR_IIMM, "zero_shot_acc": 0.3, **anchors})
    rec = recommend("tiny-vit", "digits", db=db, allow_random_weights=True, objective="gain", shots=16)
    assert rec.source == "anchor-prior"
    assert any("a linear probe on the frozen features reaches 0.90 at 16 shots" in n for n in rec.notes)
    for a in rec.methods:
        assert a.id_gain is not None and -0.3 <= a.id_gain <= 0.7
    assert rec.anchors["probe"] == 0.9 and "reaches 0.90" in rec.anchor_sentence()
    rec8 = recommend("tiny-vit", "digits", db=db, allow_random_weights=True, objective="gain", shots=8)
    assert rec8.anchors["probe"] == pytest.approx(0.85)  # halfway in log shots between 4 and 16


# ------------------------------------------------------------------------------- pure functions


def _advice(m, g, o, c=10.0):
    return MethodAdvice(method=m, id_gain=g, ood_change=o, cost_s=c)


def test_choose_applies_objective_and_constraints():
    adv = lambda: [_advice("full", 0.30, -0.20, 100), _advice("lora", 0.25, -0.05, 50),
                   _advice("coop", 0.10, 0.00, 5), _advice("tpc_cma", -0.02, 0.01, 20)]
    assert choose(adv(), "gain")[1] == "full"
    assert choose(adv(), "balanced")[1] == "lora"  # 0.20 beats 0.10 and 0.10
    ranked, w = choose(adv(), "retain")
    assert w == "coop"  # least forgetting among gainers; tpc_cma forgets nothing but does not gain
    assert {a.method: a for a in ranked}["tpc_cma"].excluded.startswith("not predicted to gain")
    assert choose(adv(), "gain", max_forgetting=0.1)[1] == "lora"
    assert choose(adv(), "gain", budget=30)[1] == "coop"
    ranked, w = choose(adv(), "gain", budget=1)
    assert w is None and "No method qualifies" in winner_sentence(ranked, w, "gain", "predictor")


def test_support_warns_about_an_unseen_domain_and_flags_an_unseen_family():
    from advisor.predictor import HistorySupport

    rows = synthetic_rows(n_datasets=2, shots=(16,))
    summary, warnings = support_for({"name": "ViT-B-32", "family": "clip-vit"}, {"name": "x", "domain": ["satellite"]}, rows)
    assert summary["same_model_family"] == 0
    assert any("no dataset in the history shares a domain with 'x'" in w for w in warnings)
    flags = HistorySupport.from_rows(rows).flags({"model_desc": {"name": "ViT-B-32", "family": "clip-vit"}})
    assert [k for k, _ in flags] == ["family"] and "model family 'clip-vit' has no runs" in flags[0][1]
    summary, warnings = support_for(MODEL_DESC, {"name": "y", "domain": ["texture"]}, rows)
    assert warnings == [] and summary["same_model_family"] == len(rows)


def test_iimm_heuristic_rule_order_and_linear_fits():
    from advisor.recommendation import registered_methods

    methods, families = registered_methods()  # order and family from the tuners' registrations
    assert set(methods) == {"full", "lora", "coop", "contcoop", "tpc_cma"} and families["coop"] == "prompt"
    advice, note = heuristic_ranking({"iimm": 0.5}, [], methods, "gain", families)
    assert [a.method for a in advice][:2] == ["full", "lora"] and "cannot be called high or low" in note
    rows = synthetic_rows(n_datasets=3, shots=(16,), iimms=[0.2, 0.4, 0.6], methods=("coop",))
    advice, note = heuristic_ranking({"iimm": 0.1}, rows, methods, "gain", families)
    assert "below the history's median 0.400" in note
    assert {a.method for a in advice[:2]} == {"contcoop", "coop"}  # the prompt family first
    coop = {a.method: a for a in advice}["coop"]
    x = np.array([0.2, 0.4, 0.6])
    y = np.array([r["id_acc_after"] - r["id_acc_before"] for r in rows])
    b, a = np.polyfit(x, y, 1)
    assert coop.id_gain == pytest.approx(a + b * 0.1)
    advice, note = heuristic_ranking({"iimm": 0.9}, rows, methods, "gain", families)
    assert "at or above" in note and advice[0].method == "full"


def test_sentence_says_when_no_method_beats_zero_shot() -> None:
    from advisor.recommendation import MethodAdvice, winner_sentence

    ranked = [MethodAdvice("full", id_gain=-0.01, id_gain_lo=-0.05, id_gain_hi=0.03, ood_change=0.0, score=-0.01),
              MethodAdvice("lora", id_gain=-0.02, id_gain_lo=-0.06, id_gain_hi=0.02, ood_change=0.0, score=-0.02)]
    text = winner_sentence(ranked, "full", "balanced", "predictor")
    assert text.startswith("No method is predicted to improve on zero-shot")
    ranked[0].id_gain = ranked[0].score = 0.2  # balanced: the score (ID gain + OOD change) decides
    assert winner_sentence(ranked, "full", "balanced", "predictor").startswith("Use full:")


def test_public_recommend_stays_callable_after_the_module_is_imported(history_db):
    """``advisor.recommend`` is the documented function, not shadowed by a submodule of that name."""
    import importlib

    import advisor

    importlib.import_module("advisor.recommendation")
    assert callable(advisor.recommend)
    with pytest.raises(ImportError):
        importlib.import_module("advisor.recommend")
    rec = advisor.recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True)
    assert rec.winner in _registered()


# ------------------------------------------------------------------------------- issue 12: trust


def test_random_weights_are_refused_before_any_work_unless_allowed(history_db):
    from advisor.cli import cli
    from advisor.weights import RandomWeightsError

    # refused before any data loads (issue 27: only the cheaper dataset-name check comes first)
    with pytest.raises(RandomWeightsError) as exc:
        recommend("tiny-vit", "digits", db=history_db)
    assert "\n" not in str(exc.value) and "randomly initialised weights" in str(exc.value)
    runner = CliRunner()
    for args in (["recommend", "--model", "tiny-vit", "--dataset", "digits", "--db", history_db],
                 ["signals", "--model", "tiny-vit", "--dataset", "digits", "--db", history_db]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1 and r.output.startswith("Error: model 'tiny-vit' would run with randomly initialised")
        assert "--allow-random-weights" in r.output and len(r.output.strip().splitlines()) == 1
    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True)
    assert rec.random_weights and "randomly initialised weights" in rec.out_of_support
    assert any("randomly initialised weights" in w for w in rec.warnings)


def test_signals_of_a_random_model_are_stored_marked_random(home):
    from advisor.cli import cli
    from advisor.history import open_history

    db = str(home / "random.db")
    r = CliRunner().invoke(cli, ["signals", "--model", "tiny-vit", "--dataset", "digits", "--max-images", "60",
                                 "--allow-random-weights", "--quiet", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    models = [m for m in open_history(db).models() if m.get("name") == "tiny-vit"]
    assert models and all(m.get("random_weights") is True for m in models)


def test_tie_sentence_recommends_the_cheapest_of_methods_that_cannot_be_told_apart():
    from advisor.decision import cheapest, ties

    def adv(m, g, lo, hi, cost):
        return MethodAdvice(m, id_gain=g, id_gain_lo=lo, id_gain_hi=hi, ood_change=0.0, cost_s=cost)

    ranked, best = choose([adv("a", 0.20, 0.15, 0.25, 100), adv("b", 0.18, 0.12, 0.24, 10),
                           adv("c", 0.05, 0.01, 0.09, 1)], "gain")
    tied, why = ties(ranked)
    assert best == "a" and [t.method for t in tied] == ["a", "b"] and why == "their intervals overlap"
    assert cheapest(tied).method == "b"
    text = winner_sentence(ranked, "b", "gain", "predictor", tied, why)
    assert text.startswith("Use b, the cheapest of them, predicted 10 s: a and b cannot be told apart here")
    # disjoint intervals but a difference below the seed-to-seed spread: still a tie
    ranked, _ = choose([adv("a", 0.20, 0.19, 0.21, 100), adv("b", 0.17, 0.16, 0.18, 10)], "gain")
    tied, why = ties(ranked, noise=0.05)
    assert [t.method for t in tied] == ["a", "b"] and "seed-to-seed spread" in why
    tied, _ = ties(ranked, noise=0.01)
    assert [t.method for t in tied] == ["a"]
    assert winner_sentence(ranked, "a", "gain", "predictor", tied).startswith("Use a: largest predicted in-domain gain")


def test_contributions_add_up_from_their_base_value(history_db):
    from advisor.cli import cli

    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True, objective="gain")
    for a in rec.methods:
        total = a.contribution_base + sum(v for _, v in a.contributions) + a.contribution_other
        assert total == pytest.approx(a.id_gain, abs=1e-9)
    r = CliRunner().invoke(cli, ["recommend", "--model", "tiny-vit", "--dataset", "digits", "--allow-random-weights",
                                 "--db", history_db, "--json"])
    for m in json.loads(r.output)["methods"]:
        total = m["contribution_base"] + sum(c["value"] for c in m["contributions"]) + m["contribution_other"]
        assert total == pytest.approx(m["id_gain"], abs=1e-9)


def test_similar_runs_are_near_and_named(history_db):
    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True)
    for a in rec.methods:
        assert a.support_runs == len(a.similar_runs) < 4  # not every run of the method
        assert all(s.startswith("tiny-vit on synthetic-") and s.endswith("(16 shots)") for s in a.similar_runs)


def test_python_api_to_dataframe_and_from_embeddings(history_db, tmp_path, digits_desc):
    from advisor.cli import cli

    rec = recommend("tiny-vit", "digits", db=history_db, allow_random_weights=True)
    df = rec.to_dataframe()
    assert list(df.index) == [a.method for a in rec.methods]
    assert df.loc[rec.methods[0].method, "id_gain"] == pytest.approx(rec.methods[0].id_gain)

    rng = np.random.RandomState(0)  # SYNTHETIC embeddings: 4 classes, 40 images
    text = rng.normal(size=(4, 16))
    labels = np.repeat(np.arange(4), 10)
    image = text[labels] + rng.normal(0, 0.5, size=(40, 16))
    path = tmp_path / "mine.npz"
    meta = {"model_desc": dict(MODEL_DESC), "dataset_desc": {**digits_desc, "name": "my-photos"}}
    np.savez(path, image=image, text=text, labels=labels, meta_json=json.dumps(meta))
    rec = recommend("tiny-vit", None, db=history_db, embeddings=str(path))
    assert rec.signals_source == "embeddings" and rec.dataset == "my-photos" and rec.source == "predictor"
    assert {"iimm", "zero_shot_acc"} <= set(rec.signals) and (rec.winner is not None or rec.keep_zero_shot)
    r = CliRunner().invoke(cli, ["recommend", "--from-embeddings", str(path), "--db", history_db, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["signals_source"] == "embeddings"
