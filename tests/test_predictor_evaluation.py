"""Leave-one-dataset-out without leakage, and the baselines against independent computations
(advisor.predictor.evaluation/baselines)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest

from advisor.errors import PredictorError
from advisor.predictor import (
    AdvisorPredictor,
    IIMMLinear,
    SignalKNN,
    evaluate_lodo,
    lodo_folds,
    row_dataset,
    row_targets,
)
from synthetic_history import SMALL, synthetic_rows


class SpyPredictor(AdvisorPredictor):
    """A real AdvisorPredictor that records, for every fit, the datasets of the rows it got and
    the n_train descriptor values in the matrix handed to LightGBM."""

    calls: list[dict] = []

    def fit_rows(self, rows, **kw):
        SpyPredictor.calls.append({"datasets": {row_dataset(r) for r in rows}})
        return super().fit_rows(rows, **kw)

    def fit(self, X, y, **kw):
        j = list(kw["feature_names"]).index("ds_n_train")
        SpyPredictor.calls[-1]["n_train_values"] = set(np.asarray(X)[:, j].tolist())
        SpyPredictor.calls[-1]["features"] = list(kw["feature_names"])
        return super().fit(X, y, **kw)


def test_lodo_never_fits_on_a_row_of_the_held_out_dataset():
    rows = synthetic_rows(n_datasets=4, seeds=(0, 1), shots=(4, 16))
    rows[-1]["signals"]["only_in_last_dataset"] = 1.0
    n_train_of = {row_dataset(r): r["dataset_desc"]["n_train"] for r in rows}
    SpyPredictor.calls = []
    # positive control: the spy does see a dataset when it is in the fit set
    SpyPredictor(**SMALL).fit_rows(rows)
    assert SpyPredictor.calls[0]["datasets"] == set(n_train_of)
    assert SpyPredictor.calls[0]["n_train_values"] == set(float(v) for v in n_train_of.values())

    SpyPredictor.calls = []
    ev = evaluate_lodo(rows, estimator=SpyPredictor(**SMALL))
    held_out = [f["held_out"] for f in ev["folds"]]
    assert len(SpyPredictor.calls) == len(held_out) == 4
    for call, d in zip(SpyPredictor.calls, held_out):
        assert d not in call["datasets"]
        assert float(n_train_of[d]) not in call["n_train_values"]  # not even at the matrix level
        assert call["datasets"] | {d} == set(n_train_of)
    # the signal measured only on the last dataset never becomes a feature while it is held out
    last = row_dataset(rows[-1])
    fold_last = SpyPredictor.calls[held_out.index(last)]
    assert "sig:only_in_last_dataset" not in fold_last["features"]


def test_lodo_folds_partition_rows_by_dataset_name():
    rows = synthetic_rows(n_datasets=3, seeds=(0, 1), shots=(4, 16))
    rows[0]["dataset_desc"] = dict(rows[0]["dataset_desc"], fingerprint="changed")  # same name, new data
    folds = lodo_folds(rows)
    assert [f[0] for f in folds] == ["synthetic-0", "synthetic-1", "synthetic-2"]
    for d, tr, te in folds:
        assert sorted(tr + te) == list(range(len(rows)))
        assert {row_dataset(rows[i]) for i in te} == {d} and d not in {row_dataset(rows[i]) for i in tr}


def test_predictor_recovers_planted_relation_better_than_random():
    rows = synthetic_rows(n_datasets=6, shots=(4, 16), iimms=[0.15, 0.3, 0.45, 0.6, 0.75, 0.9])
    ev = evaluate_lodo(rows, estimator=AdvisorPredictor(n_estimators=40, n_bags=4))
    assert ev["targets"]["id_gain"]["spearman"] > 0.6
    assert ev["targets"]["cost"]["spearman"] > 0.9
    by = {b["name"]: b for b in ev["baselines"]}
    assert by["predictor"]["top1_gain"] > by["random"]["top1_gain"] + 0.3
    assert by["predictor"]["regret_gain"] < by["random"]["regret_gain"] / 2
    # every baseline is evaluated on the same groups
    assert len({b["groups_gain"] for b in ev["baselines"]}) == 1
    assert set(by) == {"predictor", "anchor-only", "best-single-method", "zero-shot-only", "iimm-linear", "knn", "random"}
    # the configuration choice (each method run one way here) judges every recommender and rule on
    # the same groups, and the planted relation shows there too
    cc = {b["name"]: b for b in ev["config_choice"]["recommenders"]}
    assert set(cc) == set(by) | {"best-single-config", "default-lr-of-best-method",
                                 "always-full", "always-lora", "always-coop", "always-contcoop", "always-tpc_cma"}
    assert {b["groups_gain"] for b in cc.values()} == {ev["config_choice"]["n_groups"]["gain"]} == {12}
    assert cc["predictor"]["regret_gain"] < cc["random"]["regret_gain"] / 2
    assert cc["predictor"]["nregret_gain"] < cc["random"]["nregret_gain"] / 2
    assert ev["model_choice"]["n_groups"]["gain"] == 0  # one model
    # the bias is the mean of predicted - measured over the held-out runs, computed here by hand
    pairs = [(p["predicted_id_gain"], p["measured_id_gain"]) for p in ev["predictions"]
             if p["predicted_id_gain"] is not None and p["measured_id_gain"] is not None]
    assert ev["targets"]["id_gain"]["bias"] == pytest.approx(sum(a - b for a, b in pairs) / len(pairs), abs=1e-12)
    json.dumps(ev)  # plain JSON (NaN cleaned to null)


def test_lodo_needs_two_datasets():
    with pytest.raises(PredictorError, match="at least 2 datasets"):
        evaluate_lodo(synthetic_rows(n_datasets=1))


# ------------------------------------------------------------------------------- baselines


def test_iimm_linear_baseline_matches_least_squares_per_method():
    rows = synthetic_rows(n_datasets=5, shots=(16,), noise=0.03)
    lin = IIMMLinear().fit(rows)
    lora = [r for r in rows if r["method"] == "lora"]
    x = np.array([r["signals"]["iimm"] for r in lora])
    y = np.array([row_targets(r)["id_gain"] for r in lora])
    A = np.c_[np.ones_like(x), x]
    a, b = np.linalg.lstsq(A, y, rcond=None)[0]
    p = lin.predict_row({"signals": {"iimm": 0.42}}, "lora")
    assert p["id_gain"] == pytest.approx(a + b * 0.42)


def test_knn_baseline_averages_the_k_nearest_runs_of_the_method():
    rows = synthetic_rows(n_datasets=5, shots=(16,), iimms=[0.1, 0.2, 0.5, 0.8, 0.9])
    for r in rows:  # keep one signal so the distance is plain |iimm difference|
        r["signals"] = {"iimm": r["signals"]["iimm"]}
    knn = SignalKNN(k=2).fit(rows)
    p = knn.predict_row({"signals": {"iimm": 0.15}, "shots": 16}, "coop")
    near = [r for r in rows if r["method"] == "coop" and r["signals"]["iimm"] in (0.1, 0.2)]
    assert p["id_gain"] == pytest.approx(np.mean([row_targets(r)["id_gain"] for r in near]))


def test_random_and_constant_baselines_on_a_hand_computed_group():
    # one group, three methods with known gains; OOD unchanged
    rows = []
    for d, gains in (("synthetic-a", {"full": 0.3, "lora": 0.1, "coop": 0.2}),
                     ("synthetic-b", {"full": 0.1, "lora": 0.3, "coop": 0.2})):
        for m, g in gains.items():
            rows.append({"dataset": d, "model": "m", "method": m, "shots": 16, "seed": 0, "device": "cpu",
                         "id_acc_before": 0.5, "id_acc_after": 0.5 + g, "ood_before": {"x": 0.5},
                         "ood_after": {"x": 0.5}, "wall_time_s": 10.0, "signals": {"iimm": 0.3 if d.endswith("a") else 0.6},
                         "model_desc": {"name": "m"}, "dataset_desc": {"name": d}})
    ev = evaluate_lodo(rows, estimator=AdvisorPredictor(**SMALL))
    by = {b["name"]: b for b in ev["baselines"]}
    # random: expected top-1 = 1/3; expected regret = mean(best - g) = (0 + 0.2 + 0.1)/3 per group
    assert by["random"]["top1_gain"] == pytest.approx(1 / 3)
    assert by["random"]["regret_gain"] == pytest.approx(0.1)
    # best single method, chosen on the training fold: holding out a, b's best (lora) is chosen, and on a
    # it gives 0.1 against full's 0.3; holding out b, a's best (full) gives 0.1 against lora's 0.3
    assert by["best-single-method"]["top1_gain"] == pytest.approx(0.0)
    assert by["best-single-method"]["regret_gain"] == pytest.approx(0.2)

