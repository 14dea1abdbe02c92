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
    if type(v) is dict:  # the common case, before the (slow) abstract Mapping check
        return dict(v)
    if v is None:
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return dict(v) if isinstance(v, Mapping) else {}


def as_float(v: Any) -> float:
    if type(v) is float:
        return v if v - v == 0.0 else math.nan  # inf - inf and nan - nan are nan
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
    ob, oa = row.get("ood_before"), row.get("ood_after")  # read only: decoded dicts are not copied
    ob = ob if type(ob) is dict else as_dict(ob)
    oa = oa if type(oa) is dict else as_dict(oa)
    diffs = [as_float(oa[k]) - as_float(ob[k]) for k in ob if k in oa]
    diffs = [d for d in diffs if math.isfinite(d)]
    wall = as_float(row.get("wall_time_s"))
    return {
        "id_gain": after - before,
        "ood_change": _mean(diffs),
        "cost": math.log(wall) if wall > 0 else math.nan,
    }


def _mean(v: list[float]) -> float:
    """``float(np.mean(v))`` (NaN when empty) without numpy's per-call overhead: below eight
    values numpy sums left to right, as ``sum`` does; longer lists go to numpy (pairwise)."""
    if not v:
        return math.nan
    return sum(v) / len(v) if len(v) < 8 else float(np.mean(v))


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
    # Sorted by each item's JSON text. Items open with the run id (a string), and one JSON
    # string is never a prefix of another, so with unique run ids the run id's JSON alone gives
    # the same order without encoding every item.
    first = [json.dumps(it[0]) for it in items]
    if len(set(first)) == len(first):
        order = sorted(range(len(items)), key=first.__getitem__)
        items = [items[i] for i in order]
    else:
        items.sort(key=lambda x: json.dumps(x, default=str))
    return stable_hash(items)


def row_signals(row: Mapping[str, Any]) -> dict[str, float]:
    """The run's finite signal values by name (strings and numbers are converted)."""
    sig = row.get("signals")
    if type(sig) is not dict:
        sig = as_dict(sig)
    # the common case, every value a float: one comprehension (v - v is 0.0 only when finite)
    out = {k: v for k, v in sig.items() if type(v) is float and type(k) is str and v - v == 0.0}
    if len(out) == len(sig) or all(type(v) is float and type(k) is str for k, v in sig.items()):
        return out
    out = {}
    for k, v in sig.items():
        f = as_float(v)
        if not math.isnan(f):
            out[str(k)] = f
    return out


def device_kind(v: Any) -> str | None:
    return str(v).split(":", 1)[0] if v else None



# ------------------------------------------------------------------------------------------
# Descriptors used for grouping and support
# ------------------------------------------------------------------------------------------


def row_family(row: Mapping[str, Any]) -> str:
    """The model family (falls back to the architecture, then the model name)."""
    m = as_dict(row.get("model_desc"))
    return str(m.get("family") or m.get("architecture") or m.get("name") or row.get("model") or "?")


def row_tower(row: Mapping[str, Any]) -> str:
    """The image tower; without an ``image_tower`` descriptor, the model family (issue 11 adds
    the descriptor to new histories)."""
    m = as_dict(row.get("model_desc"))
    return str(m.get("image_tower") or row_family(row))


def row_source(row: Mapping[str, Any]) -> str:
    """Where the dataset's images come from; without a ``source`` descriptor, the dataset name."""
    d = as_dict(row.get("dataset_desc"))
    return str(d.get("source") or row_dataset(row))


#: Holdout modes of the evaluation: the group every row of which leaves training together.
HOLDOUT_KEYS = {"dataset": row_dataset, "source": row_source, "tower": row_tower}


def row_zero_shot(row: Mapping[str, Any]) -> float:
    """Zero-shot in-domain accuracy: measured before the run, else the ``zero_shot_acc`` signal."""
    z = as_float(row.get("id_acc_before"))
    if math.isnan(z):
        z = row_signals(row).get("zero_shot_acc", math.nan)
    return z if 0.0 <= z <= 1.0 else math.nan


def row_train_images(row: Mapping[str, Any]) -> float:
    """Training images of the run: shots x classes (at most the training split), or the split."""
    d = as_dict(row.get("dataset_desc"))
    n_train, n_classes = as_float(d.get("n_train")), as_float(d.get("n_classes"))
    shots = row_shots(row)
    if shots is None:
        return n_train
    images = shots * n_classes
    return min(images, n_train) if math.isfinite(n_train) else images


def row_epochs(row: Mapping[str, Any]) -> float:
    return as_float(as_dict(row.get("hparams")).get("epochs"))


# ------------------------------------------------------------------------------------------
# What the models learn: feasible and extrapolating versions of the targets
# ------------------------------------------------------------------------------------------


def headroom_share(gain: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """ID gain as the share of the possible change it achieves: gain / (1 - zero-shot) when
    positive, gain / zero-shot when negative; in [-1, 1] for every feasible gain."""
    gain, z = np.asarray(gain, dtype=float), np.asarray(zero_shot, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(gain >= 0, gain / (1.0 - z), gain / z)
    return np.where(np.isfinite(s), np.clip(s, -1.0, 1.0), np.where(np.isnan(gain) | np.isnan(z), np.nan, 0.0))


def gain_factor(share: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """The factor that turns a share back into a gain (piecewise linear: 1 - zero-shot above 0,
    zero-shot below), so ``gain = factor * share`` and contributions scale by the same factor."""
    share, z = np.asarray(share, dtype=float), np.asarray(zero_shot, dtype=float)
    return np.where(share >= 0, 1.0 - z, z)


def share_to_gain(share: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """Inverse of ``headroom_share``: always between -zero-shot and 1 - zero-shot."""
    s = np.clip(np.asarray(share, dtype=float), -1.0, 1.0)
    return gain_factor(s, zero_shot) * s


def cost_offset(rows: Sequence[Mapping[str, Any]], epochs: Sequence[float] | None = None) -> np.ndarray:
    """log(training images x epochs): the part of log wall time that scales with the work, so
    the learned cost is log seconds per image-epoch and extrapolates in images and epochs.
    NaN where images or epochs are unknown."""
    ep = [row_epochs(r) for r in rows] if epochs is None else list(epochs)
    out = []
    for r, e in zip(rows, ep):
        work = row_train_images(r) * e
        out.append(math.log(work) if work > 0 else math.nan)
    return np.array(out, dtype=float)


def seed_noise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The history's seed-to-seed spread per target: over every (model, dataset, method, shots)
    configuration run with several seeds, the pooled standard deviation and the mean absolute
    deviation from the configuration mean (the MAE no predictor can beat). None without repeats."""
    Y = targets_matrix(rows)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((row_model(r), row_dataset(r), row_method(r), row_shots(r)), []).append(i)
    repeated = [idx for idx in groups.values() if len({rows[i].get("seed") for i in idx}) >= 2]
    out: dict[str, Any] = {"configurations": len(repeated)}
    for j, t in enumerate(TARGETS):
        dev, sq, dof = [], 0.0, 0
        for idx in repeated:
            y = Y[idx, j][np.isfinite(Y[idx, j])]
            if len(y) >= 2:
                dev.extend(np.abs(y - y.mean()).tolist())
                sq += float(((y - y.mean()) ** 2).sum())
                dof += len(y) - 1
        out[t] = {"sd": math.sqrt(sq / dof) if dof else None, "mad": float(np.mean(dev)) if dev else None}
    return out
