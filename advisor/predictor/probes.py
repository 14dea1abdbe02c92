"""Probe features: what the first ``k`` epochs of a run's learning curve say about the whole run.

A probe (``advisor.probe.run_probes``) runs the first ``k`` epochs of a method's real schedule;
every run in the history records its curve at the same epochs (``advisor.curves``: 0, 1, 2, 5,
half, all). ``probe_features(curve, k)`` reads the same numbers from a probe and from the first
``k`` epochs of a history run, so the predictor learns from the history's curves what a probe's
start says (``FeatureSchema(probe_epochs=k)``, features ``prb:<name>``):

============== ==========================================================================
``val_acc``     validation accuracy at epoch k (``val_acc`` of the point at k)
``val_gain``    its gain over the untouched model: val_acc(k) - val_acc(0)
``train_loss``  the mean training loss of epoch k
``loss_ratio``  train_loss(k) / train_loss(1): how far the loss fell after the first epoch
                (NaN for k = 1, where it is 1 by definition)
``ood_change``  ood_proxy_acc(k) - ood_proxy_acc(0): the forgetting (or transfer) so far
``log_train_s`` ln(seconds of training to reach k) (``train_s`` of the point at k; at least 1 ms)
``val_extrap``  the validation accuracy extrapolated to the end of the schedule: for k = 1
                val_acc(1); for k > 1 a least-squares line of val_acc against ln(epoch) over
                the points 1..k, evaluated at the schedule's last epoch (``epochs``, from the
                row) and clipped to [0, 1]; val_acc(k) when the schedule ends at k or is
                unknown
============== ==========================================================================

A value whose point (or measurement) is missing is NaN, which LightGBM routes natively: runs
recorded before curves were, and probes stopped by their budget before epoch k.

The extrapolation is the cheapest well-defined one: a saturating or power-law fit
(``a - b * e**-c``) needs three free parameters, and the curve holds two or three points up to
k = 2 or 5 (one of them the untouched model, whose jump to epoch 1 is of another kind), so it
would be fitted exactly or not at all. Whether any of these features helps is for the held-out
evaluation to say.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

#: Probe feature names, in column order (``prb:<name>`` in the schema).
PROBE_FEATURES: tuple[str, ...] = (
    "val_acc",
    "val_gain",
    "train_loss",
    "loss_ratio",
    "ood_change",
    "log_train_s",
    "val_extrap",
)
#: ``log_train_s`` of a point recorded with ``train_s`` 0 (rounded away): ln of this.
MIN_TRAIN_S = 1e-3


def _value(point: Mapping[str, Any] | None, key: str) -> float:
    if point is None:
        return math.nan
    v = point.get(key)
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _points(curve: Sequence[Mapping[str, Any]] | None) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for p in curve or ():
        if isinstance(p, Mapping) and isinstance(p.get("epoch"), int) and not isinstance(p.get("epoch"), bool):
            out[int(p["epoch"])] = p
    return out


def extrapolate_val(curve: Sequence[Mapping[str, Any]] | None, k: int, epochs: Any = None) -> float:
    """``val_extrap`` (module doc): the validation accuracy at the schedule's end, from the
    points 1..k."""
    pts = _points(curve)
    at_k = _value(pts.get(k), "val_acc")
    if k <= 1 or not math.isfinite(at_k):
        return at_k
    try:
        end = int(epochs) if epochs is not None and math.isfinite(float(epochs)) else None
    except (TypeError, ValueError):
        end = None
    if end is None or end <= k:
        return at_k
    xs, ys = [], []
    for e in sorted(pts):
        if 1 <= e <= k:
            v = _value(pts[e], "val_acc")
            if math.isfinite(v):
                xs.append(math.log(e))
                ys.append(v)
    if len(xs) < 2:
        return at_k
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return min(1.0, max(0.0, at_k + slope * (math.log(end) - math.log(k))))


def probe_features(curve: Sequence[Mapping[str, Any]] | None, k: int, epochs: Any = None) -> dict[str, float]:
    """The ``PROBE_FEATURES`` of a curve's first ``k`` epochs (see the module doc); ``epochs``
    is the run's whole schedule (only ``val_extrap`` reads it). NaN where a point is missing."""
    k = int(k)
    if k < 1:
        raise ValueError(f"a probe runs at least one epoch (got k={k})")
    pts = _points(curve)
    p0, p1, pk = pts.get(0), pts.get(1), pts.get(k)
    loss_k, loss_1 = _value(pk, "train_loss"), _value(p1, "train_loss")
    train_s = _value(pk, "train_s")
    return {
        "val_acc": _value(pk, "val_acc"),
        "val_gain": _value(pk, "val_acc") - _value(p0, "val_acc"),
        "train_loss": loss_k,
        "loss_ratio": loss_k / loss_1 if k > 1 and loss_1 > 0 else math.nan,
        "ood_change": _value(pk, "ood_proxy_acc") - _value(p0, "ood_proxy_acc"),
        "log_train_s": math.log(max(train_s, MIN_TRAIN_S)) if math.isfinite(train_s) else math.nan,
        "val_extrap": extrapolate_val(curve, k, epochs),
    }
