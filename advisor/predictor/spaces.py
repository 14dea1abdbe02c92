"""The spaces the models learn in, and the way back to the targets a user reads.

- ``id_gain`` in space ``headroom``: the share of the possible change (``rows.headroom_share``),
  in [-1, 1]; back with the case's zero-shot accuracy, so every prediction and interval end is
  a feasible gain (between -zero-shot and 1 - zero-shot). Space ``gain``: the raw difference.
  Space ``anchor``: the share of the *anchor's* headroom (``anchors.anchor_share``: accuracy
  after against the frozen features' few-shot probe at the run's shots), back through the
  anchor and the zero-shot accuracy, feasible the same way. Space ``anchor-offset``: accuracy
  after minus the anchor, back clipped to an accuracy in [0, 1].
- ``cost`` in space ``per-image-epoch``: log wall seconds minus log(training images x epochs)
  (``rows.cost_offset``), so cost scales with the work asked for; space ``seconds``: log wall
  seconds as measured.
- ``ood_change``: as measured (space ``change``).

Shots get a monotone (non-decreasing) constraint for a target when the history supports it:
at least ``MONOTONE_SUPPORT`` of the configurations run at several shot counts improve (in the
model's space) from their fewest to their most shots.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .anchors import anchor_factor, anchor_share, anchors_of, share_to_after
from .rows import (
    TARGETS,
    cost_offset,
    gain_factor,
    headroom_share,
    row_dataset,
    row_method,
    row_model,
    row_shots,
    row_zero_shot,
    share_to_gain,
    targets_matrix,
)

#: Share of multi-shot configurations that must improve with shots before shots get a
#: monotone constraint for that target.
MONOTONE_SUPPORT = 2 / 3


def zero_shots(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([row_zero_shot(r) for r in rows], dtype=float)


#: The spaces ``id_gain`` can be learned in (``AdvisorPredictor(gain_target=...)``).
GAIN_SPACES: tuple[str, ...] = ("headroom", "gain", "anchor", "anchor-offset")


def model_targets(rows: Sequence[Mapping[str, Any]], spaces: Mapping[str, str]) -> np.ndarray:
    """(n, 3) measured targets in the models' spaces (NaN where a space cannot be computed)."""
    Y = targets_matrix(rows)
    g, c = TARGETS.index("id_gain"), TARGETS.index("cost")
    space = spaces.get("id_gain")
    if space == "headroom":
        Y[:, g] = headroom_share(Y[:, g], zero_shots(rows))
    elif space == "anchor":
        Y[:, g] = anchor_share(zero_shots(rows) + Y[:, g], anchors_of(rows))
    elif space == "anchor-offset":
        Y[:, g] = zero_shots(rows) + Y[:, g] - anchors_of(rows)
    if spaces.get("cost") == "per-image-epoch":
        Y[:, c] = Y[:, c] - cost_offset(rows)
    return Y


def to_targets(values: np.ndarray, rows: Sequence[Mapping[str, Any]], spaces: Mapping[str, str]) -> np.ndarray:
    """(n, 3) values in the models' spaces (a mean or an interval end) -> target units. Both maps
    are monotone, so interval ends stay interval ends."""
    out = np.array(values, dtype=float, copy=True)
    g, c = TARGETS.index("id_gain"), TARGETS.index("cost")
    space = spaces.get("id_gain")
    if space == "headroom":
        out[:, g] = share_to_gain(out[:, g], zero_shots(rows))
    elif space == "anchor":
        out[:, g] = share_to_after(out[:, g], anchors_of(rows)) - zero_shots(rows)
    elif space == "anchor-offset":
        out[:, g] = np.clip(anchors_of(rows) + out[:, g], 0.0, 1.0) - zero_shots(rows)
    if spaces.get("cost") == "per-image-epoch":
        out[:, c] = out[:, c] + cost_offset(rows)
    return out


def contributions_to_targets(contrib: np.ndarray, share_mean: np.ndarray, rows: Sequence[Mapping[str, Any]],
                             spaces: Mapping[str, str], target: str) -> np.ndarray:
    """(n, n_features + 1) contributions for one target (last column the base value) in target
    units, still adding up to the prediction: a headroom share is scaled by the piecewise-linear
    factor its predicted sign selects; a per-image-epoch cost adds its offset to the base."""
    out = np.array(contrib, dtype=float, copy=True)
    if target == "id_gain" and spaces.get("id_gain") == "headroom":
        factor = gain_factor(np.clip(share_mean, -1, 1), zero_shots(rows))
        out *= factor[:, None]
    if target == "id_gain" and spaces.get("id_gain") in ("anchor", "anchor-offset"):
        anchors = anchors_of(rows)
        if spaces.get("id_gain") == "anchor":
            out *= anchor_factor(np.clip(share_mean, -1, 1), anchors)[:, None]
        out[:, -1] += anchors - zero_shots(rows)  # the base starts from the anchor
    if target == "cost" and spaces.get("cost") == "per-image-epoch":
        out[:, -1] += cost_offset(rows)
    return out


def shots_monotone(rows: Sequence[Mapping[str, Any]], Y: np.ndarray) -> list[str]:
    """The targets whose model-space values rise with shots in at least ``MONOTONE_SUPPORT`` of
    the configurations (model, dataset, method, seed) measured at two or more shot counts."""
    configs: dict[tuple, dict[int, list[int]]] = {}
    for i, r in enumerate(rows):
        s = row_shots(r)
        if s is not None:
            key = (row_model(r), row_dataset(r), row_method(r), r.get("seed"))
            configs.setdefault(key, {}).setdefault(s, []).append(i)
    out = []
    for j, t in enumerate(TARGETS):
        ups = []
        for by in configs.values():
            if len(by) < 2:
                continue
            lo, hi = Y[by[min(by)], j].mean(), Y[by[max(by)], j].mean()
            if math.isfinite(lo) and math.isfinite(hi):
                ups.append(hi > lo)
        if ups and np.mean(ups) >= MONOTONE_SUPPORT:
            out.append(t)
    return out
