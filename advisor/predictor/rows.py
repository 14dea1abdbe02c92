"""History rows -> identities (dataset, model, method, shots) and the measured targets.

One row of the history (one fine-tuning run) gives three targets:

- ``id_gain``: in-domain accuracy after fine-tuning minus the zero-shot accuracy before;
- ``ood_change``: mean over the run's out-of-domain reference sets of (after - before); negative
  means forgetting;
- ``cost``: natural log of the training wall time in seconds (``exp`` gives seconds back).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..specs import stable_hash

#: The three regression targets, in column order of ``targets_matrix``.
TARGETS: tuple[str, ...] = ("id_gain", "ood_change", "cost")


def as_dict(v: Any) -> dict:
    """Rows may carry JSON columns already decoded or still as text."""
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return dict(v) if isinstance(v, Mapping) else {}


def as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def row_dataset(row: Mapping[str, Any]) -> str:
    """The dataset a run belongs to, for leave-one-dataset-out: its name (all fingerprints,
    shots and seeds of one name are one dataset, so nothing of it leaks into training)."""
    return str(as_dict(row.get("dataset_desc")).get("name") or row.get("dataset") or "?")


def row_model(row: Mapping[str, Any]) -> str:
    """``name|pretrained|image_size`` of the run's model (the history's model key)."""
    d = as_dict(row.get("model_desc"))
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
    before, after = as_float(row.get("id_acc_before")), as_float(row.get("id_acc_after"))
    ob, oa = as_dict(row.get("ood_before")), as_dict(row.get("ood_after"))
    diffs = [as_float(oa[k]) - as_float(ob[k]) for k in ob if k in oa]
    diffs = [d for d in diffs if math.isfinite(d)]
    wall = as_float(row.get("wall_time_s"))
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
                {k: round(v, 9) for k, v in sorted(row_signals(r).items())},
            ]
        )
    items.sort(key=lambda x: json.dumps(x, default=str))
    return stable_hash(items)


def row_signals(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in as_dict(row.get("signals")).items():
        f = as_float(v)
        if not math.isnan(f):
            out[str(k)] = f
    return out


def device_kind(v: Any) -> str | None:
    return str(v).split(":", 1)[0] if v else None

