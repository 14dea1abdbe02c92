"""The numpy evaluator of LightGBM's text format against LightGBM itself (advisor.predictor.trees)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np

from advisor.predictor import TreeEnsemble


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

