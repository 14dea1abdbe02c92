"""Anchors in the predictor: what the frozen features reach at a run's shot count, read from the
pair's ``anchor_*.kK`` signals (the ``anchor`` metric plugin, docs/signals.md), and the target
space that learns what a method adds beyond that anchor.

Why: a gain learned as a share of ``1 - zero-shot`` from static signals is pulled towards the
history's average on image sets unlike it; accuracy after fine-tuning lies close to the frozen
features' few-shot probe, and that relation carries over. In space ``anchor`` the model learns
the share of the *anchor's* headroom a method closes (or loses): ``(after - a) / (1 - a)`` above
the anchor, ``(after - a) / a`` below it, in [-1, 1]. Back in target units the gain is
``after - zero-shot``, so every prediction and interval end stays within
[-zero-shot, 1 - zero-shot], and a prediction follows the anchor beyond anything the history
holds. A row without anchors falls back to the zero-shot accuracy as its anchor, which is
exactly the ``headroom`` space.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from .rows import row_shots, row_signals, row_zero_shot

#: The signal families of the anchor metric, each ``<family>.k<shots>``.
ANCHOR_FAMILIES: tuple[str, ...] = ("anchor_probe", "anchor_proto", "anchor_knn", "anchor_zs", "anchor_probe_sd")
#: The per-row anchor features the predictor sees (at the row's shots), in order.
ANCHOR_FEATURES: tuple[str, ...] = ("anchor_probe", "anchor_proto", "anchor_knn", "anchor_probe_sd",
                                    "anchor_lift")
#: Signals that belong to the anchor metric (kept out of the generic signal features).
ANCHOR_SIGNAL = re.compile(r"^anchor_[a-z_]+\.k\d+$")
_KEY = re.compile(r"^(anchor_[a-z_]+)\.k(\d+)$")


def is_anchor_signal(name: str) -> bool:
    return bool(ANCHOR_SIGNAL.match(name))


def anchor_at(signals: Mapping[str, float], family: str, shots: int | None) -> float:
    """``family`` (``anchor_probe``...) at ``shots``: the stored value at that k, else log-linear
    interpolation between the nearest stored k on either side, the nearest end beyond them;
    ``shots=None`` (every training image) reads the largest k. NaN when the pair has none."""
    grid = []
    for name, value in signals.items():
        m = _KEY.match(name)
        if m and m.group(1) == family and math.isfinite(float(value)):
            grid.append((int(m.group(2)), float(value)))
    if not grid:
        return math.nan
    grid.sort()
    if shots is None:
        return grid[-1][1]
    s = float(shots)
    if s <= grid[0][0]:
        return grid[0][1]
    for (k0, v0), (k1, v1) in zip(grid, grid[1:]):
        if k0 <= s <= k1:
            w = (math.log(s) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return v0 + w * (v1 - v0)
    return grid[-1][1]


def row_anchor_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's anchor features at its shots (NaN where the pair has no anchors)."""
    sig = row_signals(row)
    shots = row_shots(row)
    out = {f: anchor_at(sig, f, shots) for f in ("anchor_probe", "anchor_proto", "anchor_knn", "anchor_probe_sd")}
    out["anchor_lift"] = out["anchor_probe"] - anchor_at(sig, "anchor_zs", shots)
    return out


def row_anchor(row: Mapping[str, Any]) -> float:
    """The accuracy the anchor space measures a run against: the probe at the run's shots,
    else the zero-shot accuracy."""
    a = anchor_at(row_signals(row), "anchor_probe", row_shots(row))
    if not (0.0 <= a <= 1.0):
        a = row_zero_shot(row)
    return a


def anchors_of(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([row_anchor(r) for r in rows], dtype=float)


def anchor_share(after: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Accuracy after as the share of the anchor's headroom closed (above) or lost (below)."""
    after, a = np.asarray(after, dtype=float), np.asarray(anchor, dtype=float)
    diff = after - a
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(diff >= 0, diff / (1.0 - a), diff / a)
    return np.where(np.isfinite(s), np.clip(s, -1.0, 1.0), np.where(np.isnan(diff), np.nan, 0.0))


def anchor_factor(share: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``after = anchor + factor * share``: 1 - anchor above, anchor below."""
    share, a = np.asarray(share, dtype=float), np.asarray(anchor, dtype=float)
    return np.where(share >= 0, 1.0 - a, a)


def share_to_after(share: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Inverse of ``anchor_share``: always an accuracy in [0, 1]."""
    s = np.clip(np.asarray(share, dtype=float), -1.0, 1.0)
    return np.asarray(anchor, dtype=float) + anchor_factor(s, anchor) * s
