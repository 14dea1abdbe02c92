"""The predictor: scikit-learn conventions, serialisation, leave-one-dataset-out without leakage,
baselines against independent computations, and training against a real SQLite history.

Rows here are SYNTHETIC (generated in this file only, never written to registry.db): datasets
``synthetic-<i>`` with a planted relation, e.g. LoRA's in-domain gain = 0.5 * iimm + noise.
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest
from sklearn.base import clone

from advisor.errors import PredictorError
from advisor.predict import (
    CORE_FEATURES,
    AdvisorPredictor,
    FeatureSchema,
    FittedPredictor,
    TreeEnsemble,
    IIMMLinear,
    SignalKNN,
    evaluate_lodo,
    history_ready,
    lodo_folds,
    row_dataset,
    row_targets,
    targets_matrix,
    training_hash,
)

METHODS = ("full", "lora", "coop", "contcoop", "tpc_cma")
#: Planted relations: gain = SLOPE[m] * iimm + 0.01 * log2(shots) + noise; OOD change = FORGET[m] * iimm.
SLOPE = {"full": 0.6, "lora": 0.5, "coop": 0.2, "contcoop": 0.25, "tpc_cma": 0.4}
FORGET = {"full": -0.3, "lora": -0.15, "coop": -0.02, "contcoop": -0.01, "tpc_cma": -0.1}
MODEL_DESC = {"name": "tiny-vit", "pretrained": None, "image_size": 32, "family": "synthetic-vit",
              "architecture": "vit", "params": 500000, "embed_dim": 32}


def synthetic_rows(n_datasets=6, seeds=(0,), shots=(4, 16), seed=0, noise=0.02, methods=METHODS, iimms=None):
    """SYNTHETIC history rows (the shape ``History.training_rows`` returns), planted relation above."""
    rng = np.random.RandomState(seed)
    rows = []
    for d in range(n_datasets):
        iimm = float(iimms[d]) if iimms is not None else float(rng.uniform(0.1, 0.9))
        ddesc = {"name": f"synthetic-{d}", "fingerprint": f"fp{d}", "n_classes": 5 + d, "n_train": 1000 + 37 * d,
                 "n_test": 200, "domain": ["grayscale"] if d % 2 else ["texture"], "mean_side_px": 28.0 + d,
                 "is_grayscale": bool(d % 2)}
        signals = {"iimm": iimm, "gap": float(rng.uniform(0.2, 1.0)), "unrelated": float(rng.uniform())}
        for k, m in enumerate(methods):
            for s in shots:
                for sd in seeds:
                    gain = SLOPE.get(m, 0.1) * iimm + 0.01 * math.log2(s) + rng.normal(0, noise)
                    ood = FORGET.get(m, 0.0) * iimm + rng.normal(0, noise)
                    before = 0.3
                    rows.append({
                        "run_id": f"syn-{d}-{m}-{s}-{sd}", "model": MODEL_DESC["name"], "pretrained": None,
                        "dataset": ddesc["name"], "method": m, "shots": s, "seed": sd, "device": "cpu",
                        "id_acc_before": before, "id_acc_after": before + gain,
                        "ood_before": {"ref-a": 0.5, "ref-b": 0.4},
                        "ood_after": {"ref-a": 0.5 + ood, "ref-b": 0.4 + ood},
                        "wall_time_s": float(np.exp(1 + 0.7 * k + 0.1 * math.log2(s) + rng.normal(0, 0.05))),
                        "signals": dict(signals), "model_desc": dict(MODEL_DESC), "dataset_desc": dict(ddesc),
                    })
    return rows


SMALL = dict(n_estimators=30, n_bags=4)


# ------------------------------------------------------------------------------- targets


def test_row_targets_are_gain_mean_ood_change_and_log_seconds():
    row = {"id_acc_before": 0.25, "id_acc_after": 0.75, "ood_before": {"a": 0.5, "b": 0.2, "c": 0.9},
           "ood_after": {"a": 0.4, "b": 0.3}, "wall_time_s": 20.0}
    t = row_targets(row)
    assert t["id_gain"] == pytest.approx(0.5)
    assert t["ood_change"] == pytest.approx(((0.4 - 0.5) + (0.3 - 0.2)) / 2)  # only sets measured both times
    assert t["cost"] == pytest.approx(math.log(20.0))
    t2 = row_targets({"id_acc_before": 0.1, "id_acc_after": 0.2, "ood_before": {}, "ood_after": {}, "wall_time_s": 0})
    assert math.isnan(t2["ood_change"]) and math.isnan(t2["cost"])


def test_schema_takes_union_of_signals_and_missing_values_are_nan():
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    rows[0]["signals"]["third_party_score"] = 1.5  # a plugin metric measured for one pair only
    schema = FeatureSchema.from_rows(rows)
    assert "third_party_score" in schema.signals and "iimm" in schema.signals
    X = schema.matrix(rows)
    j = schema.names.index("sig:third_party_score")
    assert X[0, j] == 1.5 and np.isnan(X[1:, j]).all()
    # method is categorical; unknown categories become missing
    jm = schema.names.index("method")
    case = dict(rows[0], method="some-new-tuner")
    assert np.isnan(schema.matrix([case])[0, jm])
    assert schema.names[: len(CORE_FEATURES)] == list(CORE_FEATURES)
    assert schema.names.index("ds_domain:texture") > 0


# ------------------------------------------------------------------------------- sklearn conventions


def test_sklearn_params_clone_and_fit_returns_self():
    est = AdvisorPredictor(n_estimators=7, n_bags=3, random_state=5)
    params = est.get_params()
    assert params["n_estimators"] == 7 and params["random_state"] == 5
    c = clone(est)
    assert c is not est and c.get_params() == params
    assert est.set_params(num_leaves=3) is est and est.num_leaves == 3
    assert not any(k.endswith("_") for k in vars(AdvisorPredictor()))  # nothing learned before fit
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 3))
    y = 2 * X[:, 0] + rng.normal(0, 0.1, 40)
    assert est.fit(X, y) is est
    assert est.predict(X).shape == (40,)
    assert np.corrcoef(est.predict(X), y)[0, 1] > 0.9


def test_sklearn_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    # Every applicable scikit-learn check; raises on the first failure.
    check_estimator(AdvisorPredictor(n_estimators=10, n_bags=2))


def test_same_data_same_seed_gives_identical_predictor():
    rows = synthetic_rows(n_datasets=3, shots=(16,))
    a = AdvisorPredictor(**SMALL).fit_rows(rows)
    b = AdvisorPredictor(**SMALL).fit_rows(rows)
    X = a.rows_matrix(rows)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


# ------------------------------------------------------------------------------- serialisation


def test_json_round_trip_gives_identical_predictions_intervals_and_contributions():
    rows = synthetic_rows(n_datasets=4, shots=(16,))
    est = AdvisorPredictor(**SMALL).fit_rows(rows)
    text = est.to_json()
    doc = json.loads(text)  # plain JSON, LightGBM text models inside
    assert doc["boosters"][0][0].startswith("tree")
    back = AdvisorPredictor.from_json(text)
    X = est.rows_matrix(rows)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    for a, b in zip(back.predict_interval(X), est.predict_interval(X)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.predict_contrib(X), est.predict_contrib(X))
    assert back.model_.schema == est.model_.schema and back.model_.training_hash == est.model_.training_hash
    assert back.get_params() == est.get_params()
    # the light reader used by `advisor recommend` gives the same numbers
    light = FittedPredictor.from_json(text)
    np.testing.assert_array_equal(light.predict(X), est.predict(X))


def test_contributions_sum_to_the_prediction():
    rows = synthetic_rows(n_datasets=4, shots=(16,))
    est = AdvisorPredictor(**SMALL).fit_rows(rows)
    X = est.rows_matrix(rows[:7])
    contrib = est.predict_contrib(X)
    np.testing.assert_allclose(contrib.sum(axis=2), est.predict(X), atol=1e-9)


def test_numpy_trees_equal_lightgbm_predictions_and_pred_contrib():
    """The numpy reader of LightGBM's text format against LightGBM itself, on boosters with
    numerical splits (NaN routed both ways), categorical splits and unseen categories."""
    import lightgbm as lgb

    rng = np.random.RandomState(3)
    n = 300
    X = rng.normal(size=(n, 5))
    X[:, 3] = rng.randint(0, 6, n)  # categorical
    y = X[:, 0] + np.where(X[:, 3] % 2 == 0, 1.0, -1.0) + 0.5 * np.nan_to_num(X[:, 1]) ** 2 + rng.normal(0, 0.1, n)
    X[rng.rand(n) < 0.2, 1] = np.nan
    X[rng.rand(n) < 0.1, 2] = np.nan
    params = {"objective": "regression", "num_leaves": 15, "min_data_in_leaf": 3, "verbosity": -1,
              "min_data_per_group": 1, "max_cat_to_onehot": 2, "cat_smooth": 1.0, "num_threads": 1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(X, label=y, categorical_feature=[3]), num_boost_round=25)
    ens = TreeEnsemble(booster.model_to_string())
    paths = ens._leaf_paths()
    assert ens.node_categorical.any() and (paths["n_slots"] < paths["valid"].sum(axis=1)).any()  # repeated features
    Xq = rng.normal(size=(60, 5))
    Xq[:, 3] = rng.randint(-1, 9, 60)  # includes a negative and unseen categories
    Xq[::4, 1] = np.nan
    Xq[::5, 3] = np.nan
    Xq[::7, 0] = 0.0
    np.testing.assert_allclose(ens.predict(Xq), booster.predict(Xq, num_threads=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ens.contrib(Xq), booster.predict(Xq, pred_contrib=True, num_threads=1),
                               rtol=0, atol=1e-10)
    # a model that never splits (constant target): single-leaf trees only
    flat = lgb.train(params, lgb.Dataset(X[:20], label=np.full(20, 0.25)), num_boost_round=3)
    ens = TreeEnsemble(flat.model_to_string())
    np.testing.assert_allclose(ens.predict(Xq), flat.predict(Xq, num_threads=1), atol=1e-12)
    np.testing.assert_allclose(ens.contrib(Xq), flat.predict(Xq, pred_contrib=True, num_threads=1), atol=1e-12)


def test_interval_contains_mean_and_oob_residuals_widen_it():
    rows = synthetic_rows(n_datasets=5, shots=(4, 16), noise=0.05)
    est = AdvisorPredictor(**SMALL).fit_rows(rows)
    mean, lo, hi = est.predict_interval(est.rows_matrix(rows))
    assert (lo <= mean + 1e-12).all() and (mean <= hi + 1e-12).all()
    # with noise 0.05 in the gains, an 80 % band cannot be narrower than a few hundredths
    assert np.median(hi[:, 0] - lo[:, 0]) > 0.03


def test_damaged_or_foreign_blob_is_a_one_line_predictor_error():
    with pytest.raises(PredictorError, match="not valid JSON"):
        FittedPredictor.from_json("{nope")
    with pytest.raises(PredictorError, match="format"):
        FittedPredictor.from_json(json.dumps({"format": "something-else/9"}))
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    doc = json.loads(AdvisorPredictor(**SMALL).fit_rows(rows).to_json())
    doc["boosters"][0][0] = doc["boosters"][0][0].replace("max_feature_idx=", "max_feature_idx=9")
    with pytest.raises(PredictorError, match="do not match its feature list"):
        FittedPredictor.from_json(json.dumps(doc))


def test_predictor_trained_on_other_core_features_is_rejected():
    rows = synthetic_rows(n_datasets=3, shots=(16,))
    est = AdvisorPredictor(**SMALL).fit_rows(rows)
    doc = json.loads(est.to_json())
    # as if an older advisor had built the matrix without the device column
    doc["feature_names"] = [f for f in doc["feature_names"] if f != "device"] + ["legacy_feature"]
    stored = {"blob": json.dumps(doc), "features": doc["feature_names"]}
    with pytest.raises(PredictorError) as exc:
        FittedPredictor.from_stored(stored)
    msg = str(exc.value)
    assert "\n" not in msg and "other features" in msg and "device" in msg


def test_signal_differences_are_realigned_by_name():
    """Documented behaviour: a predictor trained with other *signals* still predicts; signals it
    knows but the case lacks are NaN, signals it does not know are ignored."""
    rows = synthetic_rows(n_datasets=4, shots=(16,))
    est = AdvisorPredictor(**SMALL).fit_rows(rows)
    back = FittedPredictor.from_stored({"blob": est.to_json(), "features": est.model_.feature_names})
    case = dict(rows[0], signals={"iimm": rows[0]["signals"]["iimm"], "brand_new_metric": 3.0})
    missing, unused = back.signal_drift(case["signals"])
    assert missing == ["gap", "unrelated"] and unused == ["brand_new_metric"]
    X = back.rows_matrix([case])
    names = back.feature_names
    assert np.isnan(X[0, names.index("sig:gap")]) and "sig:brand_new_metric" not in names
    expected = dict(rows[0], signals={"iimm": rows[0]["signals"]["iimm"]})  # the same case without extras
    np.testing.assert_array_equal(back.predict(X), est.predict(est.rows_matrix([expected])))


# ------------------------------------------------------------------------------- LODO


class SpyPredictor(AdvisorPredictor):
    """A real AdvisorPredictor that records, for every fit, the datasets of the rows it got and
    the n_train descriptor values in the matrix handed to LightGBM."""

    calls: list[dict] = []

    def fit_rows(self, rows):
        SpyPredictor.calls.append({"datasets": {row_dataset(r) for r in rows}})
        return super().fit_rows(rows)

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
    held_out = [f["dataset"] for f in ev["folds"]]
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
    assert set(by) == {"predictor", "iimm-linear", "knn", "always-lora", "always-full", "random"}
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
    # always-full: right on a (0 regret), wrong on b (0.3 - 0.1)
    assert by["always-full"]["top1_gain"] == pytest.approx(0.5)
    assert by["always-full"]["regret_gain"] == pytest.approx(0.1)
    assert by["always-lora"]["top1_gain"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------- history-size rules


def test_history_ready_needs_runs_and_datasets():
    ok, why = history_ready(synthetic_rows(n_datasets=2, shots=(4, 16)))  # 20 runs, 2 datasets
    assert not ok and "2 datasets" in why
    ok, why = history_ready(synthetic_rows(n_datasets=3, shots=(16,), methods=("lora", "coop", "full")))  # 9 runs
    assert not ok and "9 usable runs" in why
    assert history_ready(synthetic_rows(n_datasets=3, shots=(16,)))[0]


def test_training_hash_ignores_row_order_and_sees_measurement_changes():
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    h = training_hash(rows)
    assert training_hash(list(reversed(rows))) == h
    changed = [dict(r) for r in rows]
    changed[3] = dict(changed[3], id_acc_after=changed[3]["id_acc_after"] + 0.01)
    assert training_hash(changed) != h


def test_targets_matrix_shape():
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    assert targets_matrix(rows).shape == (len(rows), 3)


# ------------------------------------------------------------------------------- real SQLite history


def record_synthetic(db: str, rows) -> None:
    """Write SYNTHETIC rows into a temporary history through the public History API."""
    from advisor.history import open_history
    from advisor.specs import RunResult

    h = open_history(db)
    for r in rows:
        h.record_run(RunResult(
            model=r["model"], pretrained=None, dataset=r["dataset"], method=r["method"], shots=r["shots"],
            seed=r["seed"], hparams={"synthetic": True}, split_hash="synthetic", id_acc_before=r["id_acc_before"],
            id_acc_after=min(1.0, r["id_acc_after"]), ood_before=r["ood_before"],
            ood_after={k: max(0.0, v) for k, v in r["ood_after"].items()}, gap_before=None, gap_after=None,
            wall_time_s=r["wall_time_s"], train_images_per_s=None, peak_memory_mb=None, trainable_params=1,
            device=r["device"], provenance={"synthetic": True}, signals=r["signals"],
            model_desc=r["model_desc"], dataset_desc=r["dataset_desc"], run_id=r["run_id"],
        ))


@pytest.fixture
def synthetic_db(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "history.db")
    record_synthetic(db, synthetic_rows(n_datasets=4, shots=(16,)))
    return db


def test_train_predictor_on_real_history_round_trips(synthetic_db):
    from advisor.history import open_history
    from advisor.predict import train_predictor

    h = open_history(synthetic_db)
    info = train_predictor(h, estimator=AdvisorPredictor(**SMALL))
    stored = h.load_predictor("default")
    assert stored["training_hash"] == info["training_hash"] == training_hash(h.training_rows())
    assert stored["features"][: len(CORE_FEATURES)] == list(CORE_FEATURES)
    assert {"sig:iimm", "sig:gap", "sig:unrelated"} <= set(stored["features"])
    assert set(stored["scores"]["targets"]) == {"id_gain", "ood_change", "cost"}
    est = FittedPredictor.from_stored(stored)
    rows = h.training_rows()
    fresh = AdvisorPredictor(**SMALL).fit_rows(rows)
    np.testing.assert_array_equal(est.predict(est.rows_matrix(rows)), fresh.predict(fresh.rows_matrix(rows)))


def test_train_refuses_a_too_small_history(tmp_path, monkeypatch):
    from advisor.history import open_history
    from advisor.predict import train_predictor

    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    with pytest.raises(PredictorError, match="0 usable runs"):
        train_predictor(open_history(str(tmp_path / "empty.db")))


def test_cli_predictor_train_evaluate_show(synthetic_db):
    from click.testing import CliRunner

    from advisor.cli import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["predictor", "show", "--db", synthetic_db])
    assert r.exit_code == 1 and "no predictor stored" in r.output
    r = runner.invoke(cli, ["predictor", "train", "--db", synthetic_db, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["n_runs"] == 20 and len(info["datasets"]) == 4
    r = runner.invoke(cli, ["predictor", "evaluate", "--db", synthetic_db])
    assert r.exit_code == 0, r.output
    for word in ("spearman", "mae", "id_gain", "ood_change", "cost", "iimm-linear", "knn", "always-lora",
                 "always-full", "random", "regret_gain"):
        assert word in r.output
    r = runner.invoke(cli, ["predictor", "show", "--db", synthetic_db, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["up_to_date"] is True
