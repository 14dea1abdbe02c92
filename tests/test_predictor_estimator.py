"""The scikit-learn estimator and the stored predictor: conventions, serialisation, contributions,
intervals, damaged or foreign blobs (advisor.predictor.estimator/stored)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest

from sklearn.base import clone

from advisor.errors import PredictorError
from advisor.predictor import AdvisorPredictor, FittedPredictor
from synthetic_history import SMALL, synthetic_rows


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
    assert missing == ["gap", "unrelated", "zero_shot_acc"] and unused == ["brand_new_metric"]
    X = back.rows_matrix([case])
    names = back.feature_names
    assert np.isnan(X[0, names.index("sig:gap")]) and "sig:brand_new_metric" not in names
    expected = dict(rows[0], signals={"iimm": rows[0]["signals"]["iimm"]})  # the same case without extras
    np.testing.assert_array_equal(back.predict(X), est.predict(est.rows_matrix([expected])))



# ------------------------------------------------------------------------------- training speed-ups


def test_n_jobs_does_not_change_the_fitted_predictor():
    rows = synthetic_rows(n_datasets=4, shots=(4, 16))
    docs = []
    for n_jobs in (1, 2, -1):
        doc = json.loads(AdvisorPredictor(**SMALL, n_jobs=n_jobs).fit_rows(rows).to_json())
        assert doc["params"].pop("n_jobs") == n_jobs
        docs.append(doc)
    assert docs[0] == docs[1] == docs[2]  # every tree, calibration score and support, bit for bit


def test_a_bag_is_lightgbm_on_the_drawn_rows_alone_weighted_by_their_draws():
    """Independent reference: LightGBM fitted on just the rows the bootstrap drew (its own
    Dataset, no rows of weight 0), each weighted by how often it was drawn."""
    import lightgbm as lgb

    rng = np.random.RandomState(1)
    X = rng.normal(size=(50, 3))  # < 63 distinct values per feature: one bin per value either way
    y = X[:, 0] - 0.5 * X[:, 1] + rng.normal(0, 0.1, 50)
    idx = np.arange(0, 50, 1)
    est = AdvisorPredictor(n_estimators=15, n_bags=4)
    take, weight = est._draw(idx, 0, 2, est.n_bags)
    assert weight.sum() == len(idx) and (weight >= 1).all() and len(take) < len(idx)
    assert np.array_equal(take, np.unique(take)) and np.isin(take, idx).all()
    bag = est._booster(est._binned(X, []), y, take, weight, 2, None)
    assert bag.dump_model()["tree_info"][0]["tree_structure"]["internal_count"] == len(take)  # undrawn rows absent
    alone = lgb.Dataset(X[take], label=y[take], weight=weight,
                        params={"min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "verbosity": -1})
    ref = lgb.train(est._lgb_params(est.random_state + 2), alone, num_boost_round=15)
    np.testing.assert_allclose(bag.predict(X[take]), ref.predict(X[take]), rtol=0, atol=1e-12)
