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
from .rows import HOLDOUT_KEYS, TARGETS, cost_offset, row_dataset, training_hash
from .spaces import model_targets, shots_monotone
from .support import HistorySupport
from .stored import FittedPredictor
from .intervals import bag_spread, calibrate, group_folds
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
        conformal_folds: int = 5,
        gain_target: str = "headroom",
        cost_target: str = "per-image-epoch",
        monotone_shots: str = "auto",
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
        self.conformal_folds = conformal_folds
        self.gain_target = gain_target
        self.cost_target = cost_target
        self.monotone_shots = monotone_shots
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

    def _train_bags(self, X: np.ndarray, y: np.ndarray, idx: np.ndarray, t: int, categorical: list[int],
                    monotone: list[int] | None, n_bags: int | None = None) -> list[Any]:
        """``n_bags`` LightGBM boosters, each on a bootstrap resample of rows ``idx`` given as
        weights (how often each row was drawn) on one binned Dataset: the binning is done once,
        not once per bag. Returns (booster, rows drawn) pairs."""
        import lightgbm as lgb

        n_bags = self.n_bags if n_bags is None else n_bags
        ds = lgb.Dataset(
            X[idx], label=y[idx], categorical_feature=categorical or "auto", free_raw_data=False,
            params={"min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "verbosity": -1},
        ).construct()
        out = []
        for b in range(n_bags):
            rng = np.random.RandomState(self.random_state * 1000 + t * 100 + b)
            if n_bags > 1:
                draw = rng.randint(0, len(idx), len(idx))
                ds.set_weight(np.bincount(draw, minlength=len(idx)).astype(float))
                take = idx[np.unique(draw)]
            else:
                take = idx
            params = self._lgb_params(self.random_state + b)
            if monotone and any(monotone):
                params.update(monotone_constraints=list(monotone), monotone_constraints_method="basic")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((lgb.train(params, ds, num_boost_round=self.n_estimators, keep_training_booster=False), take))
        return out

    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None,
            categorical_features: Sequence[int] | None = None, monotone: Sequence[Sequence[int]] | None = None,
            groups: Sequence[Any] | None = None) -> "AdvisorPredictor":
        """Fit ``n_bags`` bootstrap LightGBM models per target column, and calibrate the
        conformal intervals on out-of-fold residuals (folds by ``groups``, else at random);
        returns self. ``monotone[t]`` is LightGBM's ``monotone_constraints`` for target t."""
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
        mono = [list(m) for m in monotone] if monotone is not None else [[0] * p for _ in range(Y.shape[1])]
        folds = group_folds(groups if groups is not None else [0] * n, self.conformal_folds, self.random_state)
        ensembles: list[list[TreeEnsemble]] = []
        calibration: list[dict[str, Any]] = []
        n_train: list[int] = []
        for t in range(Y.shape[1]):
            ok = np.flatnonzero(np.isfinite(Y[:, t]))
            n_train.append(int(len(ok)))
            bags = self._train_bags(X, Y[:, t], ok, t, categorical, mono[t]) if len(ok) >= 2 else []
            ensembles.append([TreeEnsemble(b.model_to_string()) for b, _ in bags])
            calibration.append(self._calibrate(X, Y[:, t], ok, t, categorical, mono[t], folds, bags))
        self.model_ = FittedPredictor(params=self.get_params(), feature_names=names, categorical=categorical,
                                      y_ndim=y.ndim, ensembles=ensembles, calibration=calibration,
                                      n_train=n_train, monotone=mono)
        return self

    def _calibrate(self, X: np.ndarray, y: np.ndarray, ok: np.ndarray, t: int, categorical: list[int],
                   monotone: list[int], folds: list[np.ndarray], bags: list[Any]) -> dict[str, Any]:
        """Out-of-fold residuals and bag spreads -> conformal scores. With fewer than two usable
        folds (or ``conformal_folds < 2``), the bags' out-of-bag residuals stand in."""
        residual = np.full(len(y), np.nan)
        spread = np.full(len(y), np.nan)
        usable = [f[np.isfinite(y[f])] for f in folds] if self.conformal_folds >= 2 else []
        usable = [f for f in usable if len(f)]
        if len(usable) >= 2:
            for test in usable:
                train = np.setdiff1d(ok, test)
                if len(train) < 2:
                    continue
                fold_bags = self._train_bags(X, y, train, t, categorical, monotone, max(2, self.n_bags // 2))
                preds = np.array([b.predict(X[test], num_threads=1) for b, _ in fold_bags])
                residual[test] = y[test] - preds.mean(axis=0)
                spread[test] = bag_spread(preds)
        elif bags:
            preds = np.full((len(bags), len(y)), np.nan)
            for k, (b, take) in enumerate(bags):
                oob = np.setdiff1d(ok, take)
                if len(oob):  # num_threads=1: OpenMP start-up costs ~20 ms per call
                    preds[k, oob] = b.predict(X[oob], num_threads=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                residual[ok] = y[ok] - np.nanmean(preds[:, ok], axis=0)
                spread[ok] = bag_spread(preds[:, ok])
        return calibrate(residual, spread)

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

    def fit_rows(self, rows: Sequence[Mapping[str, Any]], *, group_by: str = "dataset") -> "AdvisorPredictor":
        """Learn the schema and the history's support from ``rows`` and fit the TARGETS on them,
        in the spaces that keep predictions feasible and extrapolating (``model_targets``);
        conformal folds hold out whole ``group_by`` groups (``HOLDOUT_KEYS``). Returns self."""
        rows = list(rows)
        if not rows:
            raise PredictorError("no runs to train on")
        if self.gain_target not in ("headroom", "gain"):
            raise PredictorError(f"gain_target must be 'headroom' or 'gain' (got {self.gain_target!r})")
        if self.cost_target not in ("per-image-epoch", "seconds"):
            raise PredictorError(f"cost_target must be 'per-image-epoch' or 'seconds' (got {self.cost_target!r})")
        schema = FeatureSchema.from_rows(rows)
        X = schema.matrix(rows)
        spaces = {"id_gain": self.gain_target, "ood_change": "change", "cost": self.cost_target}
        if np.mean(np.isfinite(cost_offset(rows))) < 0.5:  # most runs lack epochs: seconds as measured
            spaces["cost"] = "seconds"
        Y = model_targets(rows, spaces)
        shots_j = schema.names.index("shots")
        mono_targets = shots_monotone(rows, Y) if self.monotone_shots == "auto" else (
            list(TARGETS) if self.monotone_shots == "on" else [])
        monotone = [[1 if (j == shots_j and t in mono_targets) else 0 for j in range(X.shape[1])] for t in TARGETS]
        groups = [HOLDOUT_KEYS.get(group_by, row_dataset)(r) for r in rows]
        if len(set(groups)) < 2:  # e.g. one tower left in training: hold out datasets instead
            groups = [row_dataset(r) for r in rows]
        self.fit(X, Y, feature_names=schema.names, categorical_features=schema.categorical_indices,
                 monotone=monotone, groups=groups)
        m = self.model_
        m.schema, m.target_names, m.training_hash = schema, list(TARGETS), training_hash(rows)
        m.n_runs, m.datasets = len(rows), sorted({row_dataset(r) for r in rows})
        m.feature_ranges = feature_ranges(schema, X)
        m.spaces = spaces
        m.support = HistorySupport.from_rows(rows)
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

