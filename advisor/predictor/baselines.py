"""Baselines the predictor is compared with (fitted on training rows, queried per held-out row)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .rows import row_method, row_shots, row_signals, row_targets

#: The signal the IIMM paper's heuristic (and the IIMM-only baseline) uses.
IIMM_SIGNAL = "iimm"


class IIMMLinear:
    """The IIMM paper's heuristic as a baseline: per method, gain ~= a_m + b_m * IIMM (and the
    same for OOD change), least squares on the training runs of that method. A method with
    fewer than two runs (or one distinct IIMM value) predicts its mean."""

    name = "iimm-linear"

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> "IIMMLinear":
        self.coef_: dict[tuple[str, str], tuple[float, float]] = {}
        by_m: dict[str, list[tuple[float, dict]]] = {}
        for r in rows:
            x = row_signals(r).get(IIMM_SIGNAL, math.nan)
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
        x = row_signals(row).get(IIMM_SIGNAL, math.nan)
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

