"""The feature schema: which columns the feature matrix has, learned from training rows.

Features are every signal present in the history (``sig:<name>``, so a third-party metric
becomes a feature at the next ``advisor predictor train`` with no code change), model and
dataset descriptors, the method (categorical), shots and the device kind. Missing values are
NaN, which LightGBM routes natively.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

import math

from .rows import (
    as_dict,
    as_float,
    device_kind,
    row_epochs,
    row_family,
    row_shots,
    row_signals,
    row_train_images,
    row_zero_shot,
)

#: Non-signal features, in order. Categorical ones are listed in CATEGORICAL.
CORE_FEATURES: tuple[str, ...] = (
    "method",
    "shots",
    "device",
    "model_family",
    "model_params",
    "model_embed_dim",
    "model_image_size",
    "log_trainable_params",
    "epochs",
    "log_train_images",
    "zero_shot",
    "ds_n_classes",
    "ds_n_train",
    "ds_mean_side_px",
    "ds_is_grayscale",
)
CATEGORICAL: tuple[str, ...] = ("method", "device", "model_family")
SIGNAL_PREFIX = "sig:"
DOMAIN_PREFIX = "ds_domain:"


@dataclass
class FeatureSchema:
    """The columns of the feature matrix, learned from a set of training rows.

    Built from the *training* rows only (in LODO, the held-out dataset's signals, domain tags and
    categories never shape the schema). Unknown categories map to NaN (missing).
    """

    signals: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> "FeatureSchema":
        signals: set[str] = set()
        domains: set[str] = set()
        cats: dict[str, set[str]] = {c: set() for c in CATEGORICAL}
        for r in rows:
            signals.update(row_signals(r))
            domains.update(str(t) for t in (as_dict(r.get("dataset_desc")).get("domain") or []))
            for c, v in core_values(r).items():
                if c in cats and v is not None:
                    cats[c].add(str(v))
        return cls(sorted(signals), sorted(domains), {c: sorted(v) for c, v in cats.items()})

    @property
    def names(self) -> list[str]:
        return (
            list(CORE_FEATURES)
            + [DOMAIN_PREFIX + d for d in self.domains]
            + [SIGNAL_PREFIX + s for s in self.signals]
        )

    @property
    def categorical_indices(self) -> list[int]:
        names = self.names
        return [names.index(c) for c in CATEGORICAL]

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (history rows or recommendation cases of the same shape) -> (n, n_features)."""
        X = np.full((len(rows), len(self.names)), np.nan, dtype=float)
        n_core = len(CORE_FEATURES)
        off = n_core + len(self.domains)
        code = {c: {v: float(i) for i, v in enumerate(self.categories.get(c, []))} for c in CATEGORICAL}
        nan = np.nan
        for i, r in enumerate(rows):
            core = core_values(r)
            values = []
            for c in CORE_FEATURES:
                v = core.get(c)
                values.append((nan if v is None else code[c].get(str(v), nan)) if c in code else as_float(v))
            X[i, :n_core] = values
            if self.domains:
                tags = {str(t) for t in (as_dict(r.get("dataset_desc")).get("domain") or [])}
                X[i, n_core:off] = [1.0 if d in tags else 0.0 for d in self.domains]
            if self.signals:
                sig = row_signals(r)
                X[i, off:] = [sig.get(s, nan) for s in self.signals]
        return X

    def to_dict(self) -> dict[str, Any]:
        return {"signals": self.signals, "domains": self.domains, "categories": self.categories}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSchema":
        return cls(list(d["signals"]), list(d["domains"]), {k: list(v) for k, v in d["categories"].items()})


def core_values(r: Mapping[str, Any]) -> dict[str, Any]:
    m = as_dict(r.get("model_desc"))
    d = as_dict(r.get("dataset_desc"))
    gray = d.get("is_grayscale")
    trainable = as_float(r.get("trainable_params"))
    images = row_train_images(r)
    return {
        "method": r.get("method"),
        "shots": row_shots(r),
        "device": device_kind(r.get("device")),
        "model_family": row_family(r),
        "model_params": m.get("params"),
        "model_embed_dim": m.get("embed_dim"),
        "model_image_size": m.get("image_size"),
        "log_trainable_params": math.log(trainable) if trainable > 0 else None,
        "epochs": row_epochs(r),
        "log_train_images": math.log(images) if images > 0 else None,
        "zero_shot": row_zero_shot(r),
        "ds_n_classes": d.get("n_classes"),
        "ds_n_train": d.get("n_train"),
        "ds_mean_side_px": d.get("mean_side_px"),
        "ds_is_grayscale": None if gray is None else float(bool(gray)),
    }


def pretty_feature(name: str) -> str:
    """``sig:iimm`` -> ``iimm``; ``ds_domain:digits`` -> ``domain=digits``."""
    if name.startswith(SIGNAL_PREFIX):
        return name[len(SIGNAL_PREFIX):]
    if name.startswith(DOMAIN_PREFIX):
        return "domain=" + name[len(DOMAIN_PREFIX):]
    return name


def feature_ranges(schema: FeatureSchema, X: np.ndarray) -> dict[str, list[float]]:
    out = {}
    for j, name in enumerate(schema.names):
        if name.startswith(SIGNAL_PREFIX):
            col = X[:, j][np.isfinite(X[:, j])]
            if len(col):
                out[name] = [float(col.min()), float(col.max())]
    return out

