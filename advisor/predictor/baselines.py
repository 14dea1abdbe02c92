"""Baselines the predictor is compared with (fitted on training rows, queried per held-out row).

Each has ``fit(rows)`` and ``predict_row(row, method) -> {target: value}`` (NaN where it has no
answer); ``random`` needs no model (its top-1 and regret are exact expectations, see
``evaluation``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .rows import TARGETS, row_method, row_shots, row_signals, row_targets, row_zero_shot

#: The signal the IIMM paper's heuristic (and the IIMM-only baseline) uses.
IIMM_SIGNAL = "iimm"


class LinearInOne:
    """Per method, target ~= a_m + b_m * x for one input x, least squares on the training runs
    of that method (ID gain and OOD change). A method with fewer than two runs, or a single
    distinct x, predicts its mean."""

    name = "linear"
    targets = ("id_gain", "ood_change")

    def __init__(self, value: Callable[[Mapping[str, Any]], float], name: str) -> None:
        self.value = value
        self.name = name

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "LinearInOne":
        self.coef_: dict[tuple[str, str], tuple[float, float]] = {}
        by_m: dict[str, list[tuple[float, dict]]] = {}
        for r in rows:
            by_m.setdefault(row_method(r), []).append((self.value(r), row_targets(r)))
        for m, pts in by_m.items():
            for t in self.targets:
                xy = np.array([(x, tg[t]) for x, tg in pts if math.isfinite(x) and math.isfinite(tg[t])])
                ys = np.array([tg[t] for _, tg in pts if math.isfinite(tg[t])])
                if len(xy) >= 2 and np.ptp(xy[:, 0]) > 0:
                    b, a = np.polyfit(xy[:, 0], xy[:, 1], 1)
                    self.coef_[(m, t)] = (float(a), float(b))
                elif len(ys):
                    self.coef_[(m, t)] = (float(ys.mean()), 0.0)
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        x = self.value(row)
        out = {t: math.nan for t in TARGETS}
        for t in self.targets:
            a, b = self.coef_.get((method, t), (math.nan, 0.0))
            out[t] = a + b * x if b != 0.0 else a
        return out


class IIMMLinear(LinearInOne):
    """The IIMM paper's heuristic: per method, a linear fit on the IIMM signal."""

    def __init__(self) -> None:
        super().__init__(lambda r: row_signals(r).get(IIMM_SIGNAL, math.nan), "iimm-linear")


class ZeroShotLinear(LinearInOne):
    """What zero-shot accuracy alone says: per method, a linear fit on the zero-shot accuracy."""

    def __init__(self) -> None:
        super().__init__(row_zero_shot, "zero-shot-only")


class BestSingleMethod:
    """One method for every case: per method, the mean of each target over the training runs,
    so the method with the best training mean (for the objective) is always recommended."""

    name = "best-single-method"

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "BestSingleMethod":
        by_m: dict[str, list[dict[str, float]]] = {}
        for r in rows:
            by_m.setdefault(row_method(r), []).append(row_targets(r))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.means_ = {m: {t: float(np.nanmean([v[t] for v in vals])) for t in TARGETS} for m, vals in by_m.items()}
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        return dict(self.means_.get(method) or {t: math.nan for t in TARGETS})


class AnchorOffset:
    """The anchor alone: accuracy after = the frozen features' few-shot probe at the run's shots
    (zero-shot where the pair has no anchors) plus the method's median offset (after - anchor)
    on the training runs, clipped to an accuracy; OOD change and cost are the method's medians."""

    name = "anchor-only"

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "AnchorOffset":
        from .anchors import row_anchor

        by_m: dict[str, list[tuple[float, dict[str, float]]]] = {}
        for r in rows:
            t = row_targets(r)
            after = row_zero_shot(r) + t["id_gain"]
            by_m.setdefault(row_method(r), []).append((after - row_anchor(r), t))
        self.median_: dict[str, dict[str, float]] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for m, vals in by_m.items():
                self.median_[m] = {"offset": float(np.nanmedian([o for o, _ in vals])),
                                   **{t: float(np.nanmedian([v[t] for _, v in vals])) for t in ("ood_change", "cost")}}
        return self

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        from .anchors import row_anchor

        med = self.median_.get(method)
        if med is None:
            return {t: math.nan for t in TARGETS}
        zs = row_zero_shot(row)
        after = min(1.0, max(0.0, row_anchor(row) + med["offset"]))
        return {"id_gain": after - zs, "ood_change": med["ood_change"], "cost": med["cost"]}


class SignalKNN:
    """k nearest training runs of the same method, by Euclidean distance between standardised
    signal vectors (plus log2 shots); predicts their mean targets. Missing signals are imputed
    with the training mean (0 after standardising)."""

    name = "knn"

    def __init__(self, k: int = 3) -> None:
        self.k = k

    def _vec(self, row: Mapping[str, Any]) -> np.ndarray:
        s = row_signals(row)
        shots = row_shots(row)
        v = [s.get(n, math.nan) for n in self.names_] + [math.log2(shots) if shots else math.nan]
        return np.array(v, dtype=float)

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "SignalKNN":
        self.names_ = sorted(set().union(*[row_signals(r) for r in rows])) if rows else []
        V = np.array([self._vec(r) for r in rows], dtype=float).reshape(len(rows), len(self.names_) + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mu_ = np.nan_to_num(np.nanmean(V, axis=0)) if len(V) else np.zeros(V.shape[1])
            sd = np.nanstd(V, axis=0) if len(V) else np.ones(V.shape[1])
        self.sd_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.Z_ = np.nan_to_num((V - self.mu_) / self.sd_)
        self.methods_ = np.array([row_method(r) for r in rows])
        self.T_ = np.array([[row_targets(r)[t] for t in TARGETS] for r in rows]).reshape(len(rows), len(TARGETS))
        return self

    def distances(self, row: Mapping[str, Any]) -> np.ndarray:
        """Standardised signal-space distance from ``row`` to every training run."""
        z = np.nan_to_num((self._vec(row) - self.mu_) / self.sd_)
        return np.linalg.norm(self.Z_ - z, axis=1)

    def predict_row(self, row: Mapping[str, Any], method: str) -> dict[str, float]:
        idx = np.flatnonzero(self.methods_ == method)
        if not len(idx):
            return {t: math.nan for t in TARGETS}
        d = self.distances(row)[idx]
        near = idx[np.argsort(d, kind="stable")[: self.k]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(self.T_[near], axis=0)
        return {t: float(v) for t, v in zip(TARGETS, means)}
