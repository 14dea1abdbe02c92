"""``AdvisorPredictor``: the scikit-learn estimator (bagged LightGBM regressors).

Importing this module imports scikit-learn (about a second); reading a stored predictor
(``advisor.predictor.stored``) does not need it.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from ..errors import PredictorError
from .features import FeatureSchema, feature_ranges
from .rows import TARGETS, row_dataset, targets_matrix, training_hash
from .stored import FittedPredictor
from .trees import TreeEnsemble


class AdvisorPredictor(RegressorMixin, BaseEstimator):
    """Bagged LightGBM regressors, one set per target column of ``y``.

    ``fit(X, y)`` takes a numeric matrix (NaN allowed) and ``y`` of shape (n,) or (n, k);
    rows whose target is NaN are left out for that target only. ``fit_rows(rows)`` is the
    history entry point: it learns the feature schema, builds X and the TARGETS matrix, and
    calls ``fit``. The fitted state is ``model_`` (a ``FittedPredictor``).

    The defaults suit histories of tens to hundreds of runs: few leaves, small leaves, one
    thread and fixed seeds (the same history gives the same predictor, bit for bit).
    """

    def __init__(
        self,
        n_estimators: int = 60,
        learning_rate: float = 0.1,
        num_leaves: int = 7,
        min_child_samples: int = 3,
        n_bags: int = 8,
        colsample: float = 0.8,
        reg_lambda: float = 1.0,
        interval: float = 0.8,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.n_bags = n_bags
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.interval = interval
        self.random_state = random_state

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.multi_output = True
        return tags

    def _lgb_params(self, seed: int) -> dict[str, Any]:
        return {
            "objective": "regression",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "min_sum_hessian_in_leaf": 1e-6,
            "min_data_per_group": 1,
            "max_cat_to_onehot": 32,  # one-vs-rest splits: many-vs-many needs far more data
            "cat_smooth": 1.0,
            "cat_l2": 1.0,
            "feature_fraction": self.colsample,
            "lambda_l2": self.reg_lambda,
            "num_threads": 1,
            "deterministic": True,
            "force_row_wise": True,
            "seed": seed,
            "verbosity": -1,
        }

    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None,
            categorical_features: Sequence[int] | None = None) -> "AdvisorPredictor":
        """Fit ``n_bags`` bootstrap LightGBM models per target column; returns self."""
        import lightgbm as lgb
        from sklearn.utils.validation import validate_data

        if y is None:
            raise ValueError("AdvisorPredictor requires y to be passed, but the target y is None")
        # y is checked by hand: NaN targets are allowed (that row is skipped for that target).
        X = validate_data(self, X, dtype=float, ensure_all_finite="allow-nan")
        y = np.asarray(y, dtype=float)
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},) or ({X.shape[0]}, k)")
        if np.isinf(y).any():
            raise ValueError("Input y contains infinity")
        if not np.isfinite(y).any():
            raise ValueError("Input y contains NaN only: nothing to fit")
        Y = y.reshape(len(y), -1)
        n, p = X.shape
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(p)]
        if len(names) != p:
            raise ValueError("feature_names does not match the number of columns of X")
        categorical = sorted(int(i) for i in (categorical_features or []))
        ensembles: list[list[TreeEnsemble]] = []
        residuals: list[list[float]] = []
        n_train: list[int] = []
        for t in range(Y.shape[1]):
            ok = np.flatnonzero(np.isfinite(Y[:, t]))
            n_train.append(int(len(ok)))
            bags: list[TreeEnsemble] = []
            preds = np.full((self.n_bags, n), np.nan)
            if len(ok) >= 2:
                for b in range(self.n_bags):
                    rng = np.random.RandomState(self.random_state * 1000 + t * 100 + b)
                    idx = ok[rng.randint(0, len(ok), len(ok))] if self.n_bags > 1 else ok
                    ds = lgb.Dataset(
                        X[idx], label=Y[idx, t], categorical_feature=categorical or "auto", free_raw_data=True,
                        params={"min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "verbosity": -1},
                    )
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        booster = lgb.train(self._lgb_params(self.random_state + b), ds,
                                            num_boost_round=self.n_estimators)
                    bags.append(TreeEnsemble(booster.model_to_string()))
                    oob = np.setdiff1d(ok, idx)
                    if len(oob):  # num_threads=1: OpenMP start-up costs ~20 ms per call
                        preds[b, oob] = booster.predict(X[oob], num_threads=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = Y[ok, t] - np.nanmean(preds[:, ok], axis=0) if bags else np.array([])
            ensembles.append(bags)
            residuals.append([float(r) for r in res if np.isfinite(r)])
        self.model_ = FittedPredictor(params=self.get_params(), feature_names=names, categorical=categorical,
                                      y_ndim=y.ndim, ensembles=ensembles, oob_residuals=residuals,
                                      n_train=n_train)
        return self

    def _model(self) -> FittedPredictor:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "model_")
        return self.model_

    def _X(self, X: Any) -> np.ndarray:
        from sklearn.utils.validation import validate_data

        self._model()
        return validate_data(self, X, dtype=float, ensure_all_finite="allow-nan", reset=False)

    def predict(self, X: Any) -> np.ndarray:
        """Mean over the bags: (n,) if fitted on 1-d ``y``, else (n, n_targets)."""
        X = self._X(X)
        return self.model_.predict(X)

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi) per target; see ``FittedPredictor.predict_interval``."""
        X = self._X(X)
        return self.model_.predict_interval(X)

    def predict_contrib(self, X: Any, targets: Sequence[int] | None = None) -> np.ndarray:
        """SHAP contributions per target; see ``FittedPredictor.predict_contrib``."""
        X = self._X(X)
        return self.model_.predict_contrib(X, targets)

    def boosters(self, target: int = 0) -> list[Any]:
        """The real ``lightgbm.Booster`` of every bag for one target."""
        return [e.as_booster() for e in self._model().ensembles[target]]

    # -- history rows ------------------------------------------------------------------

    def fit_rows(self, rows: Sequence[Mapping[str, Any]]) -> "AdvisorPredictor":
        """Learn the schema from ``rows`` and fit the TARGETS on them; returns self."""
        rows = list(rows)
        if not rows:
            raise PredictorError("no runs to train on")
        schema = FeatureSchema.from_rows(rows)
        X = schema.matrix(rows)
        self.fit(X, targets_matrix(rows), feature_names=schema.names,
                 categorical_features=schema.categorical_indices)
        m = self.model_
        m.schema, m.target_names, m.training_hash = schema, list(TARGETS), training_hash(rows)
        m.n_runs, m.datasets = len(rows), sorted({row_dataset(r) for r in rows})
        m.feature_ranges = feature_ranges(schema, X)
        return self

    def rows_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self._model().rows_matrix(rows)

    def to_json(self) -> str:
        return self._model().to_json()

    @classmethod
    def from_model(cls, model: FittedPredictor) -> "AdvisorPredictor":
        """An estimator around a stored FittedPredictor (its hyper-parameters restored)."""
        est = cls(**model.params)
        est.model_ = model
        est.n_features_in_ = model.n_features
        return est

    @classmethod
    def from_json(cls, text: str) -> "AdvisorPredictor":
        return cls.from_model(FittedPredictor.from_json(text))

AdvisorPredictor.__module__ = __name__
