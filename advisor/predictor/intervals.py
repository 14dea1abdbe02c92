"""Conformal prediction intervals from out-of-fold residuals, normalised by the bags' spread.

Fitting splits the training rows into folds by group (dataset by default: the residuals then
are those of a dataset the models never saw, which is what a new user's dataset is), fits the
bagged ensemble (half the bags) on the other folds and records, per held-out row, the residual ``r`` and the
spread ``s`` of the bags' predictions. The conformity score is ``|r| / (s + beta)`` with
``beta`` the median spread (normalised split/cross conformal, Papadopoulos et al. 2008; Lei et
al. 2018, section 5.2): where the bootstrap bags disagree, because the history is thin there,
the interval widens. At level ``L`` the half-width is the ``ceil((n + 1) L) / n`` empirical
quantile of the scores times ``s(x) + beta``.

MAPIE (installed here, 1.x) was looked at first: its cross-conformal regressors need the
fitted scikit-learn estimator (and so LightGBM and scikit-learn) at prediction time, one
target at a time and without NaN targets, while a stored predictor here is read with numpy
only (``advisor recommend`` imports neither). The computation above is a few lines and is
tested against its definition (``tests/test_predictor_intervals.py``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def group_folds(groups: Sequence[Any], n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each fold: whole groups per fold (round robin over the sorted groups).
    With a single group, rows are split at random instead."""
    groups = [str(g) for g in groups]
    names = sorted(set(groups))
    if len(names) >= 2:
        k = min(n_folds, len(names))
        fold_of = {g: i % k for i, g in enumerate(names)}
        assign = np.array([fold_of[g] for g in groups])
    else:
        k = min(n_folds, len(groups))
        assign = np.random.RandomState(seed).permutation(len(groups)) % max(k, 1)
    return [np.flatnonzero(assign == i) for i in range(k)]


def bag_spread(preds: np.ndarray) -> np.ndarray:
    """Standard deviation over the bags (axis 0), with Bessel's correction so that the spread of
    the 4 calibration bags and of the 8 stored bags estimate the same thing; 0 with one bag."""
    preds = np.asarray(preds, dtype=float)
    n = np.sum(np.isfinite(preds), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.nanvar(preds, axis=0) * n / np.maximum(n - 1, 1)
    return np.where(n >= 2, np.sqrt(var), 0.0)


def calibrate(residuals: np.ndarray, spreads: np.ndarray) -> dict[str, Any]:
    """Scores and ``beta`` from out-of-fold residuals and bag spreads (NaNs dropped)."""
    r, s = np.asarray(residuals, dtype=float), np.asarray(spreads, dtype=float)
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    if not len(r):
        return {"scores": [], "beta": 0.0}
    beta = float(np.median(s))
    if beta <= 0:  # every bag agrees everywhere: fall back to plain absolute residuals
        beta = 1.0
        s = np.zeros_like(s)
    return {"scores": sorted(float(v) for v in np.abs(r) / (s + beta)), "beta": beta}


def score_quantile(scores: Sequence[float], level: float) -> float:
    """The conformal quantile: the ceil((n + 1) * level)-th smallest score (inf beyond n)."""
    n = len(scores)
    if not n:
        return math.nan
    k = math.ceil((n + 1) * level)
    return math.inf if k > n else float(scores[max(k, 1) - 1])


def half_width(calibration: Mapping[str, Any], spread: np.ndarray, level: float,
               widen: np.ndarray | float = 1.0) -> np.ndarray:
    """Interval half-widths at ``level`` for points whose bags spread by ``spread``."""
    q = score_quantile(calibration["scores"], level)
    return q * (np.asarray(spread, dtype=float) + calibration["beta"]) * widen


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float | None, int]:
    """Share of finite ``y`` inside [lo, hi], and how many were checked."""
    y, lo, hi = (np.asarray(a, dtype=float) for a in (y, lo, hi))
    ok = np.isfinite(y) & ~np.isnan(lo) & ~np.isnan(hi)
    if not ok.any():
        return None, 0
    return float(np.mean((y[ok] >= lo[ok]) & (y[ok] <= hi[ok]))), int(ok.sum())
