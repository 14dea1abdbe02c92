"""The learned predictor: LightGBM over the run history, and its honest evaluation.

One row of the history (one fine-tuning run) becomes one feature vector and three targets:

- ``id_gain``: in-domain accuracy after fine-tuning minus the zero-shot accuracy before;
- ``ood_change``: mean over the run's out-of-domain reference sets of (after - before); negative
  means forgetting;
- ``cost``: natural log of the training wall time in seconds (``exp`` gives seconds back). The
  log keeps a 2 s prompt-learning run and a 2000 s full fine-tune on one scale; wall seconds
  (not seconds per image) because that is what a ``--budget`` is spent in.

Features are every signal present in the history (``sig:<name>``, so a third-party metric
becomes a feature at the next ``advisor predictor train`` with no code change), model and
dataset descriptors, the method (categorical), shots and the device kind. Missing values are
NaN, which LightGBM routes natively.

``AdvisorPredictor`` follows scikit-learn conventions (constructor arguments are
hyper-parameters only, ``fit`` returns self, learned attributes end in ``_``). Uncertainty comes
from a bagged ensemble: ``n_bags`` LightGBM models on bootstrap resamples; the spread of their
predictions is the model uncertainty, and the out-of-bag residuals give an interval that also
covers run-to-run noise. Contributions are LightGBM's SHAP values (``pred_contrib=True``),
averaged over the bags. The whole predictor serialises to one JSON document holding each
booster's text format (``model_to_string``); never pickle.

Evaluation is leave-one-dataset-out (``evaluate_lodo``): for each dataset, the feature schema,
the predictor and every baseline are fitted on the runs of all *other* datasets only, then
scored on the held-out dataset's runs (all shots and seeds).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone

from .errors import PredictorError
from .specs import stable_hash

#: Version of the JSON document a predictor is saved as.
FORMAT = "advisor-predictor/1"
#: The three regression targets, in column order of ``targets_matrix``.
TARGETS: tuple[str, ...] = ("id_gain", "ood_change", "cost")
#: The signal the IIMM paper's heuristic (and the IIMM-only baseline) uses.
IIMM_SIGNAL = "iimm"
#: Below this much history the predictor is not trained; recommend falls back to the IIMM heuristic.
MIN_RUNS = 10
MIN_DATASETS = 3
#: Known method order used to break ties and for fallbacks (third-party tuners come after).
KNOWN_METHODS: tuple[str, ...] = ("full", "lora", "coop", "contcoop", "tpc_cma")
#: Non-signal features, in order. Categorical ones are listed in CATEGORICAL.
CORE_FEATURES: tuple[str, ...] = (
    "method",
    "shots",
    "device",
    "model_family",
    "model_params",
    "model_embed_dim",
    "model_image_size",
    "ds_n_classes",
    "ds_n_train",
    "ds_mean_side_px",
    "ds_is_grayscale",
)
CATEGORICAL: tuple[str, ...] = ("method", "device", "model_family")
SIGNAL_PREFIX = "sig:"
DOMAIN_PREFIX = "ds_domain:"


# ------------------------------------------------------------------------------------------
# History rows -> identities and targets
# ------------------------------------------------------------------------------------------


def _as_dict(v: Any) -> dict:
    """Rows may carry JSON columns already decoded or still as text."""
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return dict(v) if isinstance(v, Mapping) else {}


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def row_dataset(row: Mapping[str, Any]) -> str:
    """The dataset a run belongs to, for leave-one-dataset-out: its name (all fingerprints,
    shots and seeds of one name are one dataset, so nothing of it leaks into training)."""
    return str(_as_dict(row.get("dataset_desc")).get("name") or row.get("dataset") or "?")


def row_model(row: Mapping[str, Any]) -> str:
    """``name|pretrained|image_size`` of the run's model (the history's model key)."""
    d = _as_dict(row.get("model_desc"))
    name = d.get("name") or row.get("model") or "?"
    pretrained = d.get("pretrained", row.get("pretrained")) or ""
    size = d.get("image_size") or ""
    return f"{name}|{pretrained}|{size}"


def row_method(row: Mapping[str, Any]) -> str:
    return str(row.get("method") or "?")


def row_shots(row: Mapping[str, Any]) -> int | None:
    s = row.get("shots")
    return None if s is None or (isinstance(s, float) and math.isnan(s)) else int(s)


def row_targets(row: Mapping[str, Any]) -> dict[str, float]:
    """The three measured targets of one run (NaN when the run lacks what a target needs)."""
    before, after = _num(row.get("id_acc_before")), _num(row.get("id_acc_after"))
    ob, oa = _as_dict(row.get("ood_before")), _as_dict(row.get("ood_after"))
    diffs = [_num(oa[k]) - _num(ob[k]) for k in ob if k in oa]
    diffs = [d for d in diffs if math.isfinite(d)]
    wall = _num(row.get("wall_time_s"))
    return {
        "id_gain": after - before,
        "ood_change": float(np.mean(diffs)) if diffs else math.nan,
        "cost": math.log(wall) if wall > 0 else math.nan,
    }


def targets_matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(n_rows, len(TARGETS)) measured targets."""
    return np.array([[row_targets(r)[t] for t in TARGETS] for r in rows], dtype=float).reshape(len(rows), len(TARGETS))


def training_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """Identifies exactly which runs (and their measurements and signals) a predictor saw."""
    items = []
    for r in rows:
        t = row_targets(r)
        items.append(
            [
                str(r.get("run_id") or r.get("id") or ""),
                row_model(r),
                row_dataset(r),
                row_method(r),
                row_shots(r),
                r.get("seed"),
                [None if math.isnan(t[k]) else round(t[k], 9) for k in TARGETS],
                {k: round(v, 9) for k, v in sorted(_signals(r).items())},
            ]
        )
    items.sort(key=lambda x: json.dumps(x, default=str))
    return stable_hash(items)


def _signals(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in _as_dict(row.get("signals")).items():
        f = _num(v)
        if not math.isnan(f):
            out[str(k)] = f
    return out


def _device_kind(v: Any) -> str | None:
    return str(v).split(":", 1)[0] if v else None


# ------------------------------------------------------------------------------------------
# Feature schema: which columns, which categories
# ------------------------------------------------------------------------------------------


@dataclass
class FeatureSchema:
    """The columns of the feature matrix, learned from a set of training rows.

    Built from the *training* rows only (in LODO, the held-out dataset's signals, domain tags and
    categories never shape the schema). Unknown categories map to NaN (missing).
    """

    signals: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> "FeatureSchema":
        signals: set[str] = set()
        domains: set[str] = set()
        cats: dict[str, set[str]] = {c: set() for c in CATEGORICAL}
        for r in rows:
            signals.update(_signals(r))
            domains.update(str(t) for t in (_as_dict(r.get("dataset_desc")).get("domain") or []))
            for c, v in _core_values(r).items():
                if c in cats and v is not None:
                    cats[c].add(str(v))
        return cls(sorted(signals), sorted(domains), {c: sorted(v) for c, v in cats.items()})

    @property
    def names(self) -> list[str]:
        return (
            list(CORE_FEATURES)
            + [DOMAIN_PREFIX + d for d in self.domains]
            + [SIGNAL_PREFIX + s for s in self.signals]
        )

    @property
    def categorical_indices(self) -> list[int]:
        names = self.names
        return [names.index(c) for c in CATEGORICAL]

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (history rows or recommendation cases of the same shape) -> (n, n_features)."""
        X = np.full((len(rows), len(self.names)), np.nan, dtype=float)
        n_core = len(CORE_FEATURES)
        for i, r in enumerate(rows):
            core = _core_values(r)
            for j, c in enumerate(CORE_FEATURES):
                v = core.get(c)
                if c in CATEGORICAL:
                    cats = self.categories.get(c, [])
                    X[i, j] = cats.index(str(v)) if v is not None and str(v) in cats else np.nan
                else:
                    X[i, j] = _num(v)
            tags = {str(t) for t in (_as_dict(r.get("dataset_desc")).get("domain") or [])}
            for j, d in enumerate(self.domains):
                X[i, n_core + j] = 1.0 if d in tags else 0.0
            sig = _signals(r)
            off = n_core + len(self.domains)
            for j, s in enumerate(self.signals):
                X[i, off + j] = sig.get(s, np.nan)
        return X

    def to_dict(self) -> dict[str, Any]:
        return {"signals": self.signals, "domains": self.domains, "categories": self.categories}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSchema":
        return cls(list(d["signals"]), list(d["domains"]), {k: list(v) for k, v in d["categories"].items()})


def _core_values(r: Mapping[str, Any]) -> dict[str, Any]:
    m = _as_dict(r.get("model_desc"))
    d = _as_dict(r.get("dataset_desc"))
    family = m.get("family") or m.get("architecture") or m.get("name") or r.get("model")
    gray = d.get("is_grayscale")
    return {
        "method": r.get("method"),
        "shots": row_shots(r),
        "device": _device_kind(r.get("device")),
        "model_family": family,
        "model_params": m.get("params"),
        "model_embed_dim": m.get("embed_dim"),
        "model_image_size": m.get("image_size"),
        "ds_n_classes": d.get("n_classes"),
        "ds_n_train": d.get("n_train"),
        "ds_mean_side_px": d.get("mean_side_px"),
        "ds_is_grayscale": None if gray is None else float(bool(gray)),
    }


def pretty_feature(name: str) -> str:
    """``sig:iimm`` -> ``iimm``; ``ds_domain:digits`` -> ``domain=digits``."""
    if name.startswith(SIGNAL_PREFIX):
        return name[len(SIGNAL_PREFIX):]
    if name.startswith(DOMAIN_PREFIX):
        return "domain=" + name[len(DOMAIN_PREFIX):]
    return name


# ------------------------------------------------------------------------------------------
# The estimator
# ------------------------------------------------------------------------------------------


class AdvisorPredictor(RegressorMixin, BaseEstimator):
    """Bagged LightGBM regressors, one set per target column of ``y``.

    ``fit(X, y)`` takes a numeric matrix (NaN allowed) and ``y`` of shape (n,) or (n, k); rows
    whose target is NaN are left out for that target only. ``fit_rows(rows)`` is the history
    entry point: it learns the feature schema, builds X and the TARGETS matrix, and calls ``fit``.

    The defaults suit histories of tens to hundreds of runs: few leaves, small leaves, one
    thread and fixed seeds (so the same history gives the same predictor, bit for bit).
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

    # -- scikit-learn API ---------------------------------------------------------------

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

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        feature_names: Sequence[str] | None = None,
        categorical_features: Sequence[int] | None = None,
    ) -> "AdvisorPredictor":
        """Fit ``n_bags`` bootstrap LightGBM models per target column; returns self."""
        import lightgbm as lgb
        from sklearn.utils.validation import validate_data

        # y is checked by hand: NaN targets are allowed (that row is skipped for that target).
        if y is None:
            raise ValueError("AdvisorPredictor requires y to be passed, but the target y is None")
        X = validate_data(self, X, dtype=float, ensure_all_finite="allow-nan")
        y = np.asarray(y, dtype=float)
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},) or ({X.shape[0]}, k)")
        if np.isinf(y).any():
            raise ValueError("Input y contains infinity")
        if not np.isfinite(y).any():
            raise ValueError("Input y contains NaN only: nothing to fit")
        self.y_ndim_ = y.ndim
        Y = y.reshape(len(y), -1)
        n, p = X.shape
        self.feature_names_ = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(p)]
        if len(self.feature_names_) != p:
            raise ValueError("feature_names does not match the number of columns of X")
        self.categorical_features_ = sorted(int(i) for i in (categorical_features or []))
        self.n_targets_ = Y.shape[1]
        self.boosters_: list[list[Any]] = []
        self.oob_residuals_: list[list[float]] = []
        self.n_train_: list[int] = []
        for t in range(self.n_targets_):
            ok = np.flatnonzero(np.isfinite(Y[:, t]))
            self.n_train_.append(int(len(ok)))
            bags: list[Any] = []
            preds = np.full((self.n_bags, n), np.nan)
            if len(ok) >= 2:
                for b in range(self.n_bags):
                    rng = np.random.RandomState(self.random_state * 1000 + t * 100 + b)
                    idx = ok[rng.randint(0, len(ok), len(ok))] if self.n_bags > 1 else ok
                    ds = lgb.Dataset(
                        X[idx],
                        label=Y[idx, t],
                        categorical_feature=self.categorical_features_ or "auto",
                        params={"min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "verbosity": -1},
                        free_raw_data=True,
                    )
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        booster = lgb.train(
                            self._lgb_params(self.random_state + b), ds, num_boost_round=self.n_estimators
                        )
                    bags.append(booster)
                    oob = np.setdiff1d(ok, idx)
                    if len(oob):
                        preds[b, oob] = booster.predict(X[oob], num_threads=1)
            self.boosters_.append(bags)
            if bags:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    oob_mean = np.nanmean(preds, axis=0)
                res = Y[ok, t] - oob_mean[ok]
                self.oob_residuals_.append([float(r) for r in res if np.isfinite(r)])
            else:
                self.oob_residuals_.append([])
        return self

    def _check(self, X: Any) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self, "boosters_")
        return validate_data(self, X, dtype=float, ensure_all_finite="allow-nan", reset=False)

    def predict_bags(self, X: Any) -> np.ndarray:
        """(n_bags, n, n_targets) predictions of every bag (NaN for targets with no model)."""
        X = self._check(X)
        out = np.full((self.n_bags, X.shape[0], self.n_targets_), np.nan)
        for t, bags in enumerate(self.boosters_):
            for b, booster in enumerate(bags):
                out[b, :, t] = booster.predict(X, num_threads=1)  # OpenMP start-up costs 20 ms a call
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Mean over the bags: shape (n,) if fitted on 1-d ``y``, else (n, n_targets)."""
        bags = self.predict_bags(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(bags, axis=0)
        return mean[:, 0] if self.y_ndim_ == 1 else mean

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi), each (n, n_targets): a central ``interval`` band.

        lo/hi add the out-of-bag residual quantiles to the bagged mean (so the band includes
        run-to-run noise, not only model disagreement) and are widened to cover the bags' own
        quantiles. With too few out-of-bag residuals only the bags' spread is used.
        """
        bags = self.predict_bags(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(bags, axis=0)
            a = (1.0 - self.interval) / 2.0
            blo = np.nanquantile(bags, a, axis=0)
            bhi = np.nanquantile(bags, 1.0 - a, axis=0)
        lo, hi = blo.copy(), bhi.copy()
        for t, res in enumerate(self.oob_residuals_):
            if len(res) >= 5:
                rlo, rhi = np.quantile(res, [a, 1.0 - a])
                lo[:, t] = np.minimum(blo[:, t], mean[:, t] + rlo)
                hi[:, t] = np.maximum(bhi[:, t], mean[:, t] + rhi)
        return mean, lo, hi

    def predict_contrib(self, X: Any) -> np.ndarray:
        """(n, n_targets, n_features + 1) SHAP contributions averaged over bags; the last
        column is the expected value (bias)."""
        X = self._check(X)
        out = np.full((X.shape[0], self.n_targets_, self.n_features_in_ + 1), np.nan)
        for t, bags in enumerate(self.boosters_):
            if bags:
                out[:, t, :] = np.mean([np.asarray(bst.predict(X, pred_contrib=True, num_threads=1)) for bst in bags], axis=0)
        return out

    # -- history rows ----------------------------------------------------------------------

    def fit_rows(self, rows: Sequence[Mapping[str, Any]]) -> "AdvisorPredictor":
        """Learn the schema from ``rows`` and fit the TARGETS on them; returns self."""
        rows = list(rows)
        if not rows:
            raise PredictorError("no runs to train on")
        schema = FeatureSchema.from_rows(rows)
        X = schema.matrix(rows)
        self.fit(X, targets_matrix(rows), feature_names=schema.names, categorical_features=schema.categorical_indices)
        self.schema_ = schema
        self.target_names_ = list(TARGETS)
        self.training_hash_ = training_hash(rows)
        self.n_runs_ = len(rows)
        self.datasets_ = sorted({row_dataset(r) for r in rows})
        self.feature_ranges_ = _feature_ranges(schema, X)
        return self

    def rows_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix of ``rows`` under this predictor's own schema (re-aligned by name)."""
        return self.schema_.matrix(list(rows))

    # -- serialisation ---------------------------------------------------------------------

    def to_json(self) -> str:
        """One JSON document: hyper-parameters, schema, each booster's text format. No pickle."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "boosters_")
        doc = {
            "format": FORMAT,
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "feature_names": self.feature_names_,
            "categorical_features": self.categorical_features_,
            "y_ndim": self.y_ndim_,
            "n_targets": self.n_targets_,
            "n_train": self.n_train_,
            "oob_residuals": self.oob_residuals_,
            "boosters": [[b.model_to_string() for b in bags] for bags in self.boosters_],
        }
        if hasattr(self, "schema_"):
            doc.update(
                schema=self.schema_.to_dict(),
                target_names=self.target_names_,
                training_hash=self.training_hash_,
                n_runs=self.n_runs_,
                datasets=self.datasets_,
                feature_ranges=self.feature_ranges_,
            )
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> "AdvisorPredictor":
        """Rebuild a predictor from ``to_json`` output (boosters via ``lgb.Booster(model_str=...)``)."""
        import lightgbm as lgb

        try:
            doc = json.loads(text)
        except (TypeError, ValueError):
            raise PredictorError("stored predictor is not valid JSON; run `advisor predictor train`") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            fmt = doc.get("format") if isinstance(doc, dict) else None
            raise PredictorError(
                f"stored predictor has format {fmt!r}, this advisor reads {FORMAT!r}; run `advisor predictor train`"
            )
        try:
            est = cls(**doc["params"])
            est.n_features_in_ = int(doc["n_features_in"])
            est.feature_names_ = list(doc["feature_names"])
            est.categorical_features_ = list(doc["categorical_features"])
            est.y_ndim_ = int(doc["y_ndim"])
            est.n_targets_ = int(doc["n_targets"])
            est.n_train_ = list(doc["n_train"])
            est.oob_residuals_ = [list(r) for r in doc["oob_residuals"]]
            est.boosters_ = [[lgb.Booster(model_str=s) for s in bags] for bags in doc["boosters"]]
            if "schema" in doc:
                est.schema_ = FeatureSchema.from_dict(doc["schema"])
                est.target_names_ = list(doc["target_names"])
                est.training_hash_ = doc["training_hash"]
                est.n_runs_ = int(doc["n_runs"])
                est.datasets_ = list(doc["datasets"])
                est.feature_ranges_ = dict(doc.get("feature_ranges") or {})
        except (KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as exc:
            raise PredictorError(f"stored predictor is damaged ({type(exc).__name__}); run `advisor predictor train`") from None
        return est

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any], current_features: Sequence[str] | None = None) -> "AdvisorPredictor":
        """Load what ``History.load_predictor`` returned and check it fits this advisor.

        The stored feature list must match the predictor's own; a predictor whose non-signal
        features differ from what this version builds (another advisor version) is rejected
        with a one-line PredictorError. Differences in *signals* only are fine: cases are
        re-aligned by name (missing signals -> NaN, extra ones ignored; ``signal_drift`` says which).
        """
        est = cls.from_json(stored["blob"])
        features = list(stored.get("features") or est.feature_names_)
        if features != est.feature_names_ or not hasattr(est, "schema_"):
            raise PredictorError("stored predictor's feature list does not match its models; run `advisor predictor train`")
        core = [f for f in features if not f.startswith((SIGNAL_PREFIX, DOMAIN_PREFIX))]
        if core != list(CORE_FEATURES):
            missing = sorted(set(CORE_FEATURES) - set(core))
            extra = sorted(set(core) - set(CORE_FEATURES))
            raise PredictorError(
                "stored predictor was trained on other features"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(extra)})" if extra else "")
                + "; run `advisor predictor train`"
            )
        return est

    def signal_drift(self, signals: Iterable[str]) -> tuple[list[str], list[str]]:
        """(signals the predictor uses that are missing here, signals here it does not use)."""
        have = set(signals)
        used = set(self.schema_.signals)
        return sorted(used - have), sorted(have - used)


def _feature_ranges(schema: FeatureSchema, X: np.ndarray) -> dict[str, list[float]]:
    out = {}
    for j, name in enumerate(schema.names):
        if name.startswith(SIGNAL_PREFIX):
            col = X[:, j][np.isfinite(X[:, j])]
            if len(col):
                out[name] = [float(col.min()), float(col.max())]
    return out


# ------------------------------------------------------------------------------------------
# Training against a history
# ------------------------------------------------------------------------------------------


def history_ready(rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether the history is big enough to train on, and a one-line reason if not."""
    usable = [r for r in rows if math.isfinite(row_targets(r)["id_gain"])]
    n_ds = len({row_dataset(r) for r in usable})
    if len(usable) < MIN_RUNS or n_ds < MIN_DATASETS:
        return False, (
            f"the history has {len(usable)} usable runs over {n_ds} datasets; "
            f"a predictor needs at least {MIN_RUNS} runs over {MIN_DATASETS} datasets"
        )
    return True, ""


def train_predictor(
    history: Any,
    *,
    name: str = "default",
    evaluate: bool = True,
    estimator: AdvisorPredictor | None = None,
) -> dict[str, Any]:
    """Fit on every run in ``history``, optionally score it with LODO, save it. Returns a summary."""
    rows = history.training_rows()
    ok, why = history_ready(rows)
    if not ok:
        raise PredictorError(f"cannot train: {why}; record more runs with `advisor run`")
    est = clone(estimator) if estimator is not None else AdvisorPredictor()
    est.fit_rows(rows)
    scores: dict[str, Any] = {"n_runs": est.n_runs_, "datasets": est.datasets_}
    if evaluate:
        ev = evaluate_lodo(rows, estimator=est)
        scores.update({"targets": ev["targets"], "baselines": ev["baselines"]})
    scores = clean_json(scores)
    pid = history.save_predictor(name, est.to_json(), est.feature_names_, est.training_hash_, scores)
    return {
        "name": name,
        "id": pid,
        "n_runs": est.n_runs_,
        "datasets": est.datasets_,
        "n_features": len(est.feature_names_),
        "signals": est.schema_.signals,
        "training_hash": est.training_hash_,
        "scores": scores,
    }


# ------------------------------------------------------------------------------------------
# Baselines (fitted on training rows, queried per held-out row)
# ------------------------------------------------------------------------------------------


class IIMMLinear:
    """The IIMM paper's heuristic as a baseline: per method, gain ~= a_m + b_m * IIMM (and the
    same for OOD change), least squares on the training runs of that method. A method with
    fewer than two runs (or one distinct IIMM value) predicts its mean."""

    name = "iimm-linear"

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "IIMMLinear":
        self.coef_: dict[tuple[str, str], tuple[float, float]] = {}
        by_m: dict[str, list[tuple[float, dict]]] = {}
        for r in rows:
            x = _signals(r).get(IIMM_SIGNAL, math.nan)
            by_m.setdefault(row_method(r), []).append((x, row_targets(r)))
        for m, pts in by_m.items():
            for t in ("id_gain", "ood_change"):
                xy = np.array([(x, tg[t]) for x, tg in pts if math.isfinite(x) and math.isfinite(tg[t])])
                ys = np.array([tg[t] for _, tg in pts if math.isfinite(tg[t])])
                if len(xy) >= 2 and np.ptp(xy[:, 0]) > 0:
                    b, a = np.polyfit(xy[:, 0], xy[:, 1], 1)
                    self.coef_[(m, t)] = (float(a), float(b))
                elif len(ys):
                    self.coef_[(m, t)] = (float(ys.mean()), 0.0)
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        x = _signals(row).get(IIMM_SIGNAL, math.nan)
        out = {}
        for t in ("id_gain", "ood_change"):
            a, b = self.coef_.get((method, t), (math.nan, 0.0))
            out[t] = a + b * x if b != 0.0 else a
        return out


class SignalKNN:
    """k nearest training runs of the same method, by Euclidean distance between standardised
    signal vectors (plus log2 shots); predicts their mean gain and OOD change. Missing signals
    are imputed with the training mean (0 after standardising)."""

    name = "knn"

    def __init__(self, k: int = 3) -> None:
        self.k = k

    def _vec(self, row: Mapping[str, Any]) -> np.ndarray:
        s = _signals(row)
        shots = row_shots(row)
        v = [s.get(n, math.nan) for n in self.names_] + [math.log2(shots) if shots else math.nan]
        return np.array(v, dtype=float)

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "SignalKNN":
        self.names_ = sorted(set().union(*[_signals(r) for r in rows])) if rows else []
        V = np.array([self._vec(r) for r in rows], dtype=float).reshape(len(rows), len(self.names_) + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mu_ = np.nan_to_num(np.nanmean(V, axis=0)) if len(V) else np.zeros(V.shape[1])
            sd = np.nanstd(V, axis=0) if len(V) else np.ones(V.shape[1])
        self.sd_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.Z_ = np.nan_to_num((V - self.mu_) / self.sd_)
        self.methods_ = np.array([row_method(r) for r in rows])
        self.T_ = np.array([[row_targets(r)[t] for t in ("id_gain", "ood_change")] for r in rows]).reshape(len(rows), 2)
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        idx = np.flatnonzero(self.methods_ == method)
        if not len(idx):
            return {"id_gain": math.nan, "ood_change": math.nan}
        z = np.nan_to_num((self._vec(row) - self.mu_) / self.sd_)
        d = np.linalg.norm(self.Z_[idx] - z, axis=1)
        near = idx[np.argsort(d, kind="stable")[: self.k]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            g, o = np.nanmean(self.T_[near], axis=0)
        return {"id_gain": float(g), "ood_change": float(o)}


#: Constant baselines fall back along this order when their method was not run for a group.
_FALLBACK = ("lora", "full", "contcoop", "coop", "tpc_cma")


# ------------------------------------------------------------------------------------------
# Leave-one-dataset-out evaluation
# ------------------------------------------------------------------------------------------


def lodo_folds(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int], list[int]]]:
    """(held-out dataset, train indices, test indices): every row of the held-out dataset
    (any model, shots or seed) is in test, none in train."""
    names = [row_dataset(r) for r in rows]
    return [
        (d, [i for i, n in enumerate(names) if n != d], [i for i, n in enumerate(names) if n == d])
        for d in sorted(set(names))
    ]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else math.nan


def _objective_value(g: float, o: float, objective: str) -> float:
    if objective == "gain":
        return g
    if objective == "balanced":
        return g + o
    raise ValueError(objective)


def evaluate_lodo(
    rows: Sequence[Mapping[str, Any]],
    *,
    estimator: AdvisorPredictor | None = None,
    knn_k: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-dataset-out scores of the predictor and of every baseline, in one loop.

    Per target: Spearman and MAE of predicted vs measured over all held-out runs. Per held-out
    (model, dataset, shots) group with at least two methods measured (seeds averaged): top-1
    accuracy and regret of the recommended method, for the ``gain`` and ``balanced`` objectives.
    """
    rows = list(rows)
    folds = lodo_folds(rows)
    if len(folds) < 2:
        raise PredictorError(
            f"leave-one-dataset-out needs runs on at least 2 datasets (the history has {len(folds)})"
        )
    base = estimator if estimator is not None else AdvisorPredictor()
    Y = targets_matrix(rows)
    pred = {name: np.full((len(rows), len(TARGETS)), np.nan) for name in ("predictor", "iimm-linear", "knn")}
    folds_out = []
    for d, train_idx, test_idx in folds:
        if progress:
            progress(d)
        train = [rows[i] for i in train_idx]
        test = [rows[i] for i in test_idx]
        folds_out.append({"dataset": d, "n_train": len(train), "n_test": len(test)})
        if len({row_dataset(r) for r in train}) < 1 or len(train) < 2:
            continue
        est = clone(base).fit_rows(train)
        pred["predictor"][test_idx] = est.predict(est.rows_matrix(test))
        lin = IIMMLinear().fit(train)
        knn = SignalKNN(knn_k).fit(train)
        for i, r in zip(test_idx, test):
            for name, bl in (("iimm-linear", lin), ("knn", knn)):
                p = bl.predict_row(r, row_method(r))
                pred[name][i, 0], pred[name][i, 1] = p["id_gain"], p["ood_change"]

    targets = {
        t: {
            "spearman": _spearman(pred["predictor"][:, j], Y[:, j]),
            "mae": _mae(pred["predictor"][:, j], Y[:, j]),
            "n": int(np.sum(np.isfinite(Y[:, j]) & np.isfinite(pred["predictor"][:, j]))),
        }
        for j, t in enumerate(TARGETS)
    }
    groups = _groups(rows, Y, pred)
    baselines = []
    for name in ("predictor", "iimm-linear", "knn", "always-lora", "always-full", "random"):
        entry: dict[str, Any] = {"name": name}
        if name in pred:
            for j, t in enumerate(("id_gain", "ood_change")):
                entry[f"{t}_spearman"] = _spearman(pred[name][:, j], Y[:, j])
                entry[f"{t}_mae"] = _mae(pred[name][:, j], Y[:, j])
        for objective in ("gain", "balanced"):
            entry.update(_choice_scores(groups, name, objective))
        baselines.append(entry)
    predictions = [
        {
            "dataset": row_dataset(r),
            "model": row_model(r),
            "method": row_method(r),
            "shots": row_shots(r),
            "seed": r.get("seed"),
            **{f"measured_{t}": _none(Y[i, j]) for j, t in enumerate(TARGETS)},
            **{f"predicted_{t}": _none(pred["predictor"][i, j]) for j, t in enumerate(TARGETS)},
        }
        for i, r in enumerate(rows)
    ]
    return clean_json({
        "n_runs": len(rows),
        "n_datasets": len(folds),
        "folds": folds_out,
        "targets": targets,
        "baselines": baselines,
        "n_groups": {o: sum(1 for g in groups if g["valid"][o]) for o in ("gain", "balanced")},
        "predictions": predictions,
    })


def clean_json(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python numbers, recursively: valid JSON for storage."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _groups(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per (model, dataset, shots): measured and predicted (gain, ood) per method, seeds averaged."""
    keys: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        keys.setdefault((row_model(r), row_dataset(r), row_shots(r)), {}).setdefault(row_method(r), []).append(i)
    out = []
    for key, methods in keys.items():
        g: dict[str, Any] = {"key": key, "measured": {}, "pred": {n: {} for n in pred}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for m, idx in methods.items():
                g["measured"][m] = (float(np.nanmean(Y[idx, 0])), float(np.nanmean(Y[idx, 1])))
                for n, P in pred.items():
                    g["pred"][n][m] = (float(np.nanmean(P[idx, 0])), float(np.nanmean(P[idx, 1])))
        g["valid"] = {
            o: sum(1 for v in g["measured"].values() if math.isfinite(_objective_value(*v, o))) >= 2
            for o in ("gain", "balanced")
        }
        out.append(g)
    return out


def _order(methods: Iterable[str]) -> list[str]:
    known = [m for m in KNOWN_METHODS if m in methods]
    return known + sorted(m for m in methods if m not in KNOWN_METHODS)


def _choice_scores(groups: list[dict[str, Any]], name: str, objective: str) -> dict[str, Any]:
    """Top-1 accuracy and mean regret of one recommender over the valid groups."""
    hits, regrets = [], []
    for g in groups:
        if not g["valid"][objective]:
            continue
        measured = {m: _objective_value(*v, objective) for m, v in g["measured"].items()}
        measured = {m: v for m, v in measured.items() if math.isfinite(v)}
        best = max(measured.values())
        cands = _order(measured)
        if name == "random":  # exact expectation over a uniform choice: no seed needed
            hits.append(sum(1 for v in measured.values() if v == best) / len(measured))
            regrets.append(float(np.mean([best - v for v in measured.values()])))
            continue
        if name.startswith("always-"):
            want = name.split("-", 1)[1]
            order = [want] + [m for m in _FALLBACK if m != want] + cands
            choice = next(m for m in order if m in measured)
        else:
            scores = {m: _objective_value(*g["pred"][name].get(m, (math.nan, math.nan)), objective) for m in cands}
            finite = {m: s for m, s in scores.items() if math.isfinite(s)}
            if not finite:
                continue
            choice = max(cands, key=lambda m: finite.get(m, -math.inf))  # ties: known order
        hits.append(1.0 if measured[choice] == best else 0.0)
        regrets.append(best - measured[choice])
    return {
        f"top1_{objective}": float(np.mean(hits)) if hits else None,
        f"regret_{objective}": float(np.mean(regrets)) if regrets else None,
        f"groups_{objective}": len(hits),
    }
