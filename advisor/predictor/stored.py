"""The fitted predictor: what is stored in the history, loaded and asked (numpy only)."""

from __future__ import annotations

import json
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PredictorError
from .features import CORE_FEATURES, DOMAIN_PREFIX, SIGNAL_PREFIX, FeatureSchema
from .trees import TreeEnsemble

#: Version of the JSON document a predictor is saved as.
FORMAT = "advisor-predictor/1"


class FittedPredictor:
    """A trained predictor: per target, ``n_bags`` tree ensembles plus their out-of-bag residuals,
    the feature schema, and where it came from. ``AdvisorPredictor.fit`` builds one;
    ``from_stored`` reads one from the history without importing LightGBM or scikit-learn."""

    def __init__(self, *, params: dict[str, Any], feature_names: list[str], categorical: list[int], y_ndim: int,
                 ensembles: list[list[TreeEnsemble]], oob_residuals: list[list[float]], n_train: list[int]) -> None:
        self.params = dict(params)
        self.feature_names = list(feature_names)
        self.categorical = list(categorical)
        self.y_ndim = y_ndim
        self.ensembles = ensembles
        self.oob_residuals = oob_residuals
        self.n_train = n_train
        self.schema: FeatureSchema | None = None
        self.target_names: list[str] = []
        self.training_hash = ""
        self.n_runs = 0
        self.datasets: list[str] = []
        self.feature_ranges: dict[str, list[float]] = {}

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_targets(self) -> int:
        return len(self.ensembles)

    @property
    def n_bags(self) -> int:
        return int(self.params.get("n_bags", max((len(e) for e in self.ensembles), default=1)))

    @property
    def interval(self) -> float:
        return float(self.params.get("interval", 0.8))

    def _check(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X has shape {X.shape}, the predictor expects (n, {self.n_features})")
        return X

    def predict_bags(self, X: Any) -> np.ndarray:
        """(n_bags, n, n_targets) predictions of every bag (NaN for a target without models)."""
        X = self._check(X)
        out = np.full((self.n_bags, len(X), self.n_targets), np.nan)
        for t, bags in enumerate(self.ensembles):
            for b, ens in enumerate(bags):
                out[b, :, t] = ens.predict(X)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Mean over the bags: (n,) for a predictor fitted on 1-d ``y``, else (n, n_targets)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(self.predict_bags(X), axis=0)
        return mean[:, 0] if self.y_ndim == 1 else mean

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi), each (n, n_targets): a central ``interval`` band.

        lo/hi add the out-of-bag residual quantiles to the bagged mean (so the band includes
        run-to-run noise, not only model disagreement), widened to cover the bags' own
        quantiles. With fewer than 5 out-of-bag residuals only the bags' spread is used.
        """
        bags = self.predict_bags(X)
        a = (1.0 - self.interval) / 2.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(bags, axis=0)
            blo = np.nanquantile(bags, a, axis=0)
            bhi = np.nanquantile(bags, 1.0 - a, axis=0)
        lo, hi = blo.copy(), bhi.copy()
        for t, res in enumerate(self.oob_residuals):
            if len(res) >= 5:
                rlo, rhi = np.quantile(res, [a, 1.0 - a])
                lo[:, t] = np.minimum(blo[:, t], mean[:, t] + rlo)
                hi[:, t] = np.maximum(bhi[:, t], mean[:, t] + rhi)
        return mean, lo, hi

    def predict_contrib(self, X: Any, targets: Sequence[int] | None = None) -> np.ndarray:
        """(n, n_targets, n_features + 1) SHAP contributions averaged over the bags; the last
        column is the expected value. ``targets`` limits the work to some target columns
        (the others stay NaN)."""
        X = self._check(X)
        out = np.full((len(X), self.n_targets, self.n_features + 1), np.nan)
        for t, bags in enumerate(self.ensembles):
            if bags and (targets is None or t in targets):
                out[:, t, :] = np.mean([ens.contrib(X) for ens in bags], axis=0)
        return out

    def rows_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix of history rows (or cases of the same shape) under this predictor's
        own schema: re-aligned by name, signals it does not know are ignored."""
        if self.schema is None:
            raise PredictorError("this predictor was fitted on a bare matrix, not on history rows")
        return self.schema.matrix(list(rows))

    def signal_drift(self, signals: Iterable[str]) -> tuple[list[str], list[str]]:
        """(signals the predictor uses that are missing here, signals here it does not use)."""
        have, used = set(signals), set(self.schema.signals if self.schema else [])
        return sorted(used - have), sorted(have - used)

    # -- storage ---------------------------------------------------------------------------

    def to_json(self) -> str:
        """One JSON document: hyper-parameters, schema, and each model in LightGBM's text format."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "params": self.params,
            "feature_names": self.feature_names,
            "categorical_features": self.categorical,
            "y_ndim": self.y_ndim,
            "n_train": self.n_train,
            "oob_residuals": self.oob_residuals,
            "boosters": [[e.text for e in bags] for bags in self.ensembles],
        }
        if self.schema is not None:
            doc.update(schema=self.schema.to_dict(), target_names=self.target_names, training_hash=self.training_hash,
                       n_runs=self.n_runs, datasets=self.datasets, feature_ranges=self.feature_ranges)
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> "FittedPredictor":
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
            fp = cls(params=dict(doc["params"]), feature_names=list(doc["feature_names"]),
                     categorical=[int(i) for i in doc["categorical_features"]], y_ndim=int(doc["y_ndim"]),
                     ensembles=[[TreeEnsemble(s) for s in bags] for bags in doc["boosters"]],
                     oob_residuals=[[float(r) for r in res] for res in doc["oob_residuals"]],
                     n_train=[int(n) for n in doc["n_train"]])
            if "schema" in doc:
                fp.schema = FeatureSchema.from_dict(doc["schema"])
                fp.target_names = list(doc["target_names"])
                fp.training_hash = str(doc["training_hash"])
                fp.n_runs = int(doc["n_runs"])
                fp.datasets = list(doc["datasets"])
                fp.feature_ranges = {k: list(v) for k, v in (doc.get("feature_ranges") or {}).items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PredictorError(f"stored predictor is damaged ({type(exc).__name__}); run `advisor predictor train`") from None
        if any(e.n_features not in (0, fp.n_features) for bags in fp.ensembles for e in bags):
            raise PredictorError("stored predictor's models do not match its feature list; run `advisor predictor train`")
        return fp

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> "FittedPredictor":
        """Read what ``History.load_predictor`` returned and check it fits this advisor.

        Rejected with a one-line PredictorError: a damaged or foreign document, a stored feature
        list that differs from the document's, and a predictor whose non-signal features differ
        from what this version of advisor builds. Accepted: differences in *signals* only;
        cases are re-aligned by name (missing signals -> NaN, unknown ones ignored), and
        ``signal_drift`` says which, so callers can warn.
        """
        fp = cls.from_json(stored["blob"])
        features = list(stored.get("features") or fp.feature_names)
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
        if features != fp.feature_names or fp.schema is None or fp.schema.names != fp.feature_names:
            raise PredictorError("stored predictor's feature list does not match its models; run `advisor predictor train`")
        return fp

