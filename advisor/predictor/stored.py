"""The fitted predictor: what is stored in the history, loaded and asked (numpy only)."""

from __future__ import annotations

import json
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PredictorError
from .anchors import is_anchor_signal
from .features import CORE_FEATURES, FeatureSchema
from .intervals import bag_spread, half_width
from .rows import TARGETS
from .spaces import contributions_to_targets, to_targets
from .support import HistorySupport
from .trees import TreeEnsemble

#: Version of the JSON document a predictor is saved as.
FORMAT = "advisor-predictor/2"


class FittedPredictor:
    """A trained predictor: per target, ``n_bags`` tree ensembles, their conformal calibration
    (``intervals``), the feature schema, the spaces the targets were learned in (``spaces``),
    the history's support, and where it came from. ``AdvisorPredictor.fit`` builds one;
    ``from_stored`` reads one from the history without importing LightGBM or scikit-learn."""

    def __init__(self, *, params: dict[str, Any], feature_names: list[str], categorical: list[int], y_ndim: int,
                 ensembles: list[list[TreeEnsemble]], calibration: list[dict[str, Any]], n_train: list[int],
                 monotone: list[list[int]] | None = None) -> None:
        self.params = dict(params)
        self.feature_names = list(feature_names)
        self.categorical = list(categorical)
        self.y_ndim = y_ndim
        self.ensembles = ensembles
        self.calibration = calibration
        self.n_train = n_train
        self.monotone = monotone or [[0] * len(self.feature_names) for _ in ensembles]
        self.spaces: dict[str, str] = {}
        self.support: HistorySupport | None = None
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

    def predict_interval(self, X: Any, level: float | None = None,
                         widen: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi), each (n, n_targets), in the models' spaces: the bagged mean plus or
        minus the conformal half-width at ``level`` (default ``interval``), which grows with the
        bags' disagreement at X and with ``widen`` (per row). A target without calibration
        scores falls back to the bags' own quantiles."""
        level = self.interval if level is None else float(level)
        bags = self.predict_bags(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(bags, axis=0)
            spread = bag_spread(bags)
            a = (1.0 - level) / 2.0
            blo, bhi = np.nanquantile(bags, a, axis=0), np.nanquantile(bags, 1.0 - a, axis=0)
        lo, hi = blo.copy(), bhi.copy()
        w = np.broadcast_to(np.asarray(widen, dtype=float), (len(mean),))
        for t, cal in enumerate(self.calibration):
            if len(cal.get("scores") or []) >= 5:
                hw = half_width(cal, spread[:, t], level, w)
                lo[:, t], hi[:, t] = mean[:, t] - hw, mean[:, t] + hw
        return mean, lo, hi

    # -- history rows and cases, in target units ------------------------------------------

    def flags(self, rows: Sequence[Mapping[str, Any]]) -> list[list[tuple[str, str]]]:
        """Per row, its inputs outside the training history's support (see ``support``)."""
        return [self.support.flags(r) if self.support else [] for r in rows]

    def predict_rows(self, rows: Sequence[Mapping[str, Any]], level: float | None = None,
                     widen_out_of_support: bool = True) -> dict[str, Any]:
        """Predictions for history rows or cases in target units (ID gain, OOD change, log
        seconds): ``mean``, ``lo``, ``hi`` (n, 3) and the out-of-support ``flags`` per row,
        whose kinds widen that row's interval. Feasible by construction (see ``spaces``)."""
        rows = list(rows)
        X = self.rows_matrix(rows)
        flags = self.flags(rows)
        widen = np.array([self.support.widening(r) if widen_out_of_support and self.support else 1.0 for r in rows])
        mean, lo, hi = self.predict_interval(X, level, widen)
        return {"mean": to_targets(mean, rows, self.spaces), "lo": to_targets(lo, rows, self.spaces),
                "hi": to_targets(hi, rows, self.spaces), "flags": flags, "model_mean": mean}

    def contributions_rows(self, rows: Sequence[Mapping[str, Any]], target: str = "id_gain") -> np.ndarray:
        """(n, n_features + 1) contributions to one target in its units; the last column is the
        base value, and base + contributions = the prediction (also for a headroom share,
        unless the share was clipped at +-1)."""
        rows = list(rows)
        t = TARGETS.index(target)
        X = self.rows_matrix(rows)
        contrib = self.predict_contrib(X, targets=[t])[:, t, :]
        return contributions_to_targets(contrib, contrib.sum(axis=1), rows, self.spaces, target)

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
        """(signals the predictor uses that are missing here, signals here it does not use).

        The anchor signals are read through the schema's anchor features (``anc:``, at the run's
        shots), not one by one, so they count as used whenever the schema has anchors."""
        have, used = set(signals), set(self.schema.signals if self.schema else [])
        if self.schema is not None and self.schema.anchors:
            have = {s for s in have if not is_anchor_signal(s)}
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
            "calibration": self.calibration,
            "monotone": self.monotone,
            "boosters": [[e.text for e in bags] for bags in self.ensembles],
        }
        if self.schema is not None:
            doc.update(schema=self.schema.to_dict(), target_names=self.target_names, training_hash=self.training_hash,
                       n_runs=self.n_runs, datasets=self.datasets, feature_ranges=self.feature_ranges,
                       spaces=self.spaces, support=self.support.to_dict() if self.support else None)
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
                     calibration=[{"scores": [float(v) for v in c["scores"]], "beta": float(c["beta"])}
                                  for c in doc["calibration"]],
                     n_train=[int(n) for n in doc["n_train"]],
                     monotone=[[int(v) for v in m] for m in doc.get("monotone") or []] or None)
            if "schema" in doc:
                fp.schema = FeatureSchema.from_dict(doc["schema"])
                fp.target_names = list(doc["target_names"])
                fp.training_hash = str(doc["training_hash"])
                fp.n_runs = int(doc["n_runs"])
                fp.datasets = list(doc["datasets"])
                fp.feature_ranges = {k: list(v) for k, v in (doc.get("feature_ranges") or {}).items()}
                fp.spaces = {str(k): str(v) for k, v in (doc.get("spaces") or {}).items()}
                fp.support = HistorySupport.from_dict(doc["support"]) if doc.get("support") else None
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
        core = [f for f in features if ":" not in f]  # prefixed families (sig:, hp:, anc: ...) may differ
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

