"""``AdvisorPredictor``: the scikit-learn estimator (bagged LightGBM regressors).

Importing this module imports scikit-learn (about a second); reading a stored predictor
(``advisor.predictor.stored``) does not need it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from ..errors import PredictorError
from .features import FEATURE_SETS, FeatureSchema, feature_ranges
from .rows import HOLDOUT_KEYS, TARGETS, cost_offset, row_dataset, training_hash
from .spaces import GAIN_SPACES, model_targets, shots_monotone
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
    LightGBM thread per booster and fixed seeds (the same history gives the same predictor, bit
    for bit). ``n_jobs`` threads fit independent boosters side by side (-1: one per CPU); it
    changes how long a fit takes, never what it learns.

    ``probe_epochs`` (None: off) adds the probe features of the rows' learning curves at that
    many epochs (``advisor.predictor.probes``); with None the predictor is the one it was
    before probes existed, bit for bit.
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
        gain_target: str = "anchor-offset",
        cost_target: str = "per-image-epoch",
        monotone_shots: str = "auto",
        feature_set: str = "all",
        linear_tree: bool = False,
        random_state: int = 0,
        n_jobs: int | None = -1,
        probe_epochs: int | None = None,
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
        self.feature_set = feature_set
        self.linear_tree = linear_tree
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.probe_epochs = probe_epochs

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
            **({"linear_tree": True, "linear_lambda": 1.0} if self.linear_tree else {}),
        }

    @staticmethod
    def _binned(X: np.ndarray, categorical: list[int]) -> Any:
        """One LightGBM Dataset over every row of ``X``, binned once; every booster of the fit
        (all targets, bags and calibration folds) trains on a ``subset`` of it, as ``lgb.cv``
        does with its folds. The bin boundaries see only the rows' features, never a target."""
        import lightgbm as lgb

        return lgb.Dataset(
            X, label=np.zeros(len(X)), categorical_feature=categorical or "auto", free_raw_data=True,
            # num_threads here too: binning, subsets and set_label/set_weight are OpenMP loops, and
            # on a busy machine their threads wait for each other (20 subsets: 1.2 s, not 0.09 s)
            params={"min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "verbosity": -1, "num_threads": 1},
        ).construct()

    def _draw(self, idx: np.ndarray, t: int, b: int, n_bags: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Bag ``b`` of ``n_bags`` over rows ``idx`` (sorted) for target ``t``: the rows of a
        bootstrap resample drawn at least once and how often each was drawn (the weights);
        with one bag every row once. Rows come back sorted (a LightGBM subset keeps index
        order, and the labels and weights must follow it)."""
        idx = np.sort(idx)
        if n_bags <= 1:
            return idx, None
        rng = np.random.RandomState(self.random_state * 1000 + t * 100 + b)
        counts = np.bincount(rng.randint(0, len(idx), len(idx)), minlength=len(idx))
        drawn = np.flatnonzero(counts)
        return idx[drawn], counts[drawn].astype(float)

    def _booster(self, ds: Any, y: np.ndarray, take: np.ndarray, weight: np.ndarray | None, b: int,
                 monotone: list[int] | None) -> Any:
        """One LightGBM booster on rows ``take`` of the binned Dataset ``ds`` (``_binned``),
        weighted by ``weight``: rows a bag never drew cost nothing."""
        import lightgbm as lgb

        sub = ds.subset(take).construct()  # ``take`` sorted (``_draw``): the subset's row order
        sub.set_label(y[take])
        sub.set_weight(weight)
        params = self._lgb_params(self.random_state + b)
        if monotone and any(monotone):
            params.update(monotone_constraints=list(monotone), monotone_constraints_method="basic")
        # keep_training_booster: no model-text round trip (the text is taken once, if needed)
        return lgb.train(params, sub, num_boost_round=self.n_estimators, keep_training_booster=True)

    def _workers(self, n_jobs: int) -> int:
        """Threads for ``n_jobs`` boosters: ``n_jobs`` (the hyper-parameter) of them, -1 one per
        CPU this process may use, -2 one fewer, ...; None or 0 one."""
        if self.n_jobs is None or self.n_jobs == 0:
            return 1
        if self.n_jobs < 0:
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                cpus = os.cpu_count() or 1
            return max(1, min(n_jobs, cpus + 1 + self.n_jobs))
        return max(1, min(n_jobs, int(self.n_jobs)))

    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None,
            categorical_features: Sequence[int] | None = None, monotone: Sequence[Sequence[int]] | None = None,
            groups: Sequence[Any] | None = None) -> "AdvisorPredictor":
        """Fit ``n_bags`` bootstrap LightGBM models per target column, and calibrate the
        conformal intervals on out-of-fold residuals (folds by ``groups``, else at random);
        returns self. ``monotone[t]`` is LightGBM's ``monotone_constraints`` for target t.

        Every booster (the stored bags and the calibration folds' bags of every target) is an
        independent job on one binned Dataset; ``n_jobs`` threads run them side by side
        (LightGBM releases the GIL), and the result does not depend on how many."""
        from sklearn.utils.validation import validate_data

        if y is None:
            raise ValueError("AdvisorPredictor requires y to be passed, but the target y is None")
        X = validate_data(self, X, dtype=float, ensure_all_finite="allow-nan")
        y = _checked_targets(y, X.shape[0])
        Y = y.reshape(len(y), -1)
        n, p = X.shape
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(p)]
        if len(names) != p:
            raise ValueError("feature_names does not match the number of columns of X")
        categorical = sorted(int(i) for i in (categorical_features or []))
        mono = [list(m) for m in monotone] if monotone is not None else [[0] * p for _ in range(Y.shape[1])]
        folds = group_folds(groups if groups is not None else [0] * n, self.conformal_folds, self.random_state)
        n_cal = max(2, self.n_bags // 2)
        # jobs: (target, rows, weights, bag, rows to predict, keep the model text)
        jobs: list[tuple[int, np.ndarray, np.ndarray | None, int, np.ndarray | None, bool]] = []
        plans = []
        for t in range(Y.shape[1]):
            ok = np.flatnonzero(np.isfinite(Y[:, t]))
            cal_folds, use_oob = self._calibration_folds(Y[:, t], ok, folds)
            final = []
            for b in range(self.n_bags if len(ok) >= 2 else 0):
                take, weight = self._draw(ok, t, b, self.n_bags)
                oob = np.setdiff1d(ok, take) if use_oob else None
                final.append((len(jobs), oob))
                jobs.append((t, take, weight, b, oob, True))
            fold_jobs = []
            for train, test in cal_folds:
                ids = []
                for b in range(n_cal):
                    take, weight = self._draw(train, t, b, n_cal)
                    ids.append(len(jobs))
                    jobs.append((t, take, weight, b, test, False))
                fold_jobs.append((test, ids))
            plans.append((ok, final, fold_jobs, use_oob))
        ds = self._binned(X, categorical)

        def run(job: tuple) -> tuple[str | None, np.ndarray | None]:
            t, take, weight, b, rows, keep = job
            booster = self._booster(ds, Y[:, t], take, weight, b, mono[t])
            preds = booster.predict(X[rows], num_threads=1) if rows is not None and len(rows) else None
            return (booster.model_to_string() if keep else None), preds

        with warnings.catch_warnings():  # process-wide filters: set here, not in the threads
            warnings.simplefilter("ignore")
            workers = self._workers(len(jobs))
            if workers <= 1:
                results = [run(j) for j in jobs]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(workers) as pool:
                    results = list(pool.map(run, jobs))
        ensembles = [[TreeEnsemble(results[j][0]) for j, _ in final] for _, final, _, _ in plans]
        calibration = [_calibrated(plan, results, Y[:, t]) for t, plan in enumerate(plans)]
        n_train = [int(len(ok)) for ok, _, _, _ in plans]
        self.model_ = FittedPredictor(params=self.get_params(), feature_names=names, categorical=categorical,
                                      y_ndim=y.ndim, ensembles=ensembles, calibration=calibration,
                                      n_train=n_train, monotone=mono)
        return self

    def _calibration_folds(self, y: np.ndarray, ok: np.ndarray,
                           folds: list[np.ndarray]) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """(train rows, held-out rows) of each calibration fold for one target, and whether the
        out-of-bag residuals of the stored bags stand in instead (fewer than two usable folds,
        or ``conformal_folds < 2``)."""
        usable = [f[np.isfinite(y[f])] for f in folds] if self.conformal_folds >= 2 else []
        usable = [f for f in usable if len(f)]
        if len(usable) < 2:
            return [], True
        pairs = [(np.setdiff1d(ok, test), test) for test in usable]
        return [(train, test) for train, test in pairs if len(train) >= 2], False

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
        if self.gain_target not in GAIN_SPACES:
            raise PredictorError(f"gain_target must be one of {', '.join(GAIN_SPACES)} (got {self.gain_target!r})")
        if self.feature_set not in FEATURE_SETS:
            raise PredictorError(f"feature_set must be one of {', '.join(FEATURE_SETS)} (got {self.feature_set!r})")
        if self.cost_target not in ("per-image-epoch", "seconds"):
            raise PredictorError(f"cost_target must be 'per-image-epoch' or 'seconds' (got {self.cost_target!r})")
        try:
            schema = FeatureSchema.from_rows(rows, self.feature_set, probe_epochs=self.probe_epochs)
        except ValueError as exc:
            raise PredictorError(str(exc)) from None
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


def _checked_targets(y: Any, n: int) -> np.ndarray:
    """``y`` as floats, checked by hand: NaN targets are allowed (that row is skipped for that
    target), infinities and an all-NaN ``y`` are not."""
    y = np.asarray(y, dtype=float)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"y has shape {y.shape}, expected ({n},) or ({n}, k)")
    if np.isinf(y).any():
        raise ValueError("Input y contains infinity")
    if not np.isfinite(y).any():
        raise ValueError("Input y contains NaN only: nothing to fit")
    return y


def _calibrated(plan: tuple, results: Sequence[tuple[str | None, np.ndarray | None]], y_t: np.ndarray) -> dict[str, Any]:
    """The conformal calibration of one target from its jobs' out-of-fold predictions: the
    calibration folds' bags, and the stored bags' out-of-bag rows when the plan uses them."""
    ok, final, fold_jobs, use_oob = plan
    n = len(y_t)
    residual = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    for test, ids in fold_jobs:
        preds = np.array([results[j][1] for j in ids])
        residual[test] = y_t[test] - preds.mean(axis=0)
        spread[test] = bag_spread(preds)
    if use_oob and final:
        preds = np.full((len(final), n), np.nan)
        for k, (j, oob) in enumerate(final):
            if len(oob):
                preds[k, oob] = results[j][1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            residual[ok] = y_t[ok] - np.nanmean(preds[:, ok], axis=0)
            spread[ok] = bag_spread(preds[:, ok])
    return calibrate(residual, spread)
