"""The feature schema: which columns the feature matrix has, learned from training rows.

Features are every signal present in the history (``sig:<name>``, so a third-party metric
becomes a feature at the next ``advisor predictor train`` with no code change), model and
dataset descriptors, the method (categorical), shots and the device kind, every numeric
hyper-parameter whose value varies among the training runs of one method (``hp:<name>``: the
learning rate first; epochs is a core feature; a value that is constant per method, such as a
prompt method's context length, would only name the method again), and the anchors at the run's shots (``anc:<name>``, ``advisor.predictor.anchors``; the anchor metric's per-shot
signals themselves are not features). With ``probe_epochs=k`` the schema also has the probe
features of the first k epochs of each run's learning curve (``prb:<name>``,
``advisor.predictor.probes``), read from the rows' ``curve``; runs without a curve have NaN there.
Missing values are NaN, which LightGBM routes natively.

``FEATURE_SETS`` name the ablations ``advisor predictor evaluate --ablate`` compares: every
feature, without the seed papers' signals (IIMM, the gap decomposition, MIR, MDS), without the
anchors, and the anchors with the descriptors alone (no signal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

import math

from .anchors import ANCHOR_FEATURES, is_anchor_signal, row_anchor_values
from .probes import PROBE_FEATURES, probe_features
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
ANCHOR_PREFIX = "anc:"
HPARAM_PREFIX = "hp:"
PROBE_PREFIX = "prb:"
#: Hyper-parameters that are core features or describe no training choice.
NOT_HPARAM_FEATURES: frozenset[str] = frozenset({"epochs", "eval_batch_size"})
#: The seed papers' signals (by name prefix): IIMM, the modality-gap decomposition, MIR, MDS.
PAPER_SIGNALS: tuple[str, ...] = ("iimm", "correct_cos", "gap_", "mir", "mds_")
FEATURE_SETS: tuple[str, ...] = ("all", "no-papers", "no-anchors", "anchors-only")


def _paper_signal(name: str) -> bool:
    return any(name == p or name.startswith(p) for p in PAPER_SIGNALS)


@dataclass
class FeatureSchema:
    """The columns of the feature matrix, learned from a set of training rows.

    Built from the *training* rows only (in LODO, the held-out dataset's signals, domain tags and
    categories never shape the schema). Unknown categories map to NaN (missing). ``probe_epochs``
    (None: no probe features) adds the ``PROBE_FEATURES`` of the curves' first that many epochs
    as the last columns, so a schema without them has exactly the columns it had before.
    """

    signals: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    anchors: list[str] = field(default_factory=list)
    hparams: list[str] = field(default_factory=list)
    probe_epochs: int | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], feature_set: str = "all",
                  probe_epochs: int | None = None) -> "FeatureSchema":
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {feature_set!r} (choose from {', '.join(FEATURE_SETS)})")
        probe_epochs = check_probe_epochs(probe_epochs)
        signals: set[str] = set()
        domains: set[str] = set()
        anchored = False
        hp_values: dict[tuple[str, str], set[float]] = {}  # (method, name) -> values
        cats: dict[str, set[str]] = {c: set() for c in CATEGORICAL}
        for r in rows:
            sig = row_signals(r)
            signals.update(sig)
            anchored = anchored or any(is_anchor_signal(k) for k in sig)
            domains.update(str(t) for t in (as_dict(r.get("dataset_desc")).get("domain") or []))
            for k, v in row_hparam_values(r).items():
                hp_values.setdefault((str(r.get("method")), k), set()).add(v)
            for c, v in core_values(r).items():
                if c in cats and v is not None:
                    cats[c].add(str(v))
        signals = {s for s in signals if not is_anchor_signal(s)}
        if feature_set == "no-papers":
            signals = {s for s in signals if not _paper_signal(s)}
        elif feature_set == "anchors-only":
            signals = set()
        anchors = list(ANCHOR_FEATURES) if anchored and feature_set != "no-anchors" else []
        # a choice within a method (its learning rate), not a constant that only tells methods apart
        hparams = sorted({k for (_, k), v in hp_values.items() if len(v) > 1})
        return cls(sorted(signals), sorted(domains), {c: sorted(v) for c, v in cats.items()}, anchors,
                   sorted(hparams, key=lambda k: (k != "lr", k)), probe_epochs)

    @property
    def names(self) -> list[str]:
        return (
            list(CORE_FEATURES)
            + [HPARAM_PREFIX + h for h in self.hparams]
            + [DOMAIN_PREFIX + d for d in self.domains]
            + [ANCHOR_PREFIX + a for a in self.anchors]
            + [SIGNAL_PREFIX + s for s in self.signals]
            + ([PROBE_PREFIX + f for f in PROBE_FEATURES] if self.probe_epochs is not None else [])
        )

    @property
    def categorical_indices(self) -> list[int]:
        names = self.names
        return [names.index(c) for c in CATEGORICAL]

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (history rows or recommendation cases of the same shape) -> (n, n_features)."""
        X = np.full((len(rows), len(self.names)), np.nan, dtype=float)
        n_hp = len(CORE_FEATURES)
        n_core = n_hp + len(self.hparams)
        n_anc = n_core + len(self.domains)
        off = n_anc + len(self.anchors)
        n_sig = off + len(self.signals)
        code = {c: {v: float(i) for i, v in enumerate(self.categories.get(c, []))} for c in CATEGORICAL}
        nan = np.nan
        for i, r in enumerate(rows):
            core = core_values(r)
            values = []
            for c in CORE_FEATURES:
                v = core.get(c)
                values.append((nan if v is None else code[c].get(str(v), nan)) if c in code else as_float(v))
            X[i, :n_hp] = values
            if self.hparams:
                hp = row_hparam_values(r)
                X[i, n_hp:n_core] = [hp.get(h, nan) for h in self.hparams]
            if self.domains:
                tags = {str(t) for t in (as_dict(r.get("dataset_desc")).get("domain") or [])}
                X[i, n_core:n_anc] = [1.0 if d in tags else 0.0 for d in self.domains]
            if self.anchors:
                anc = row_anchor_values(r)
                X[i, n_anc:off] = [anc.get(a, nan) for a in self.anchors]
            if self.signals:
                sig = row_signals(r)
                X[i, off:n_sig] = [sig.get(s, nan) for s in self.signals]
            if self.probe_epochs is not None:
                prb = probe_features(r.get("curve"), self.probe_epochs, core["epochs"])
                X[i, n_sig:] = [prb[f] for f in PROBE_FEATURES]
        return X

    def to_dict(self) -> dict[str, Any]:
        return {"signals": self.signals, "domains": self.domains, "categories": self.categories,
                "anchors": self.anchors, "hparams": self.hparams, "probe_epochs": self.probe_epochs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSchema":
        return cls(list(d["signals"]), list(d["domains"]), {k: list(v) for k, v in d["categories"].items()},
                   list(d.get("anchors") or []), list(d.get("hparams") or []),
                   check_probe_epochs(d.get("probe_epochs")))


def check_probe_epochs(k: Any) -> int | None:
    """``probe_epochs`` as an int >= 1, or None; ValueError otherwise."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"probe_epochs must be a whole number of epochs, at least 1, or None (got {k!r})")
    return int(k)


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


def row_hparam_values(r: Mapping[str, Any]) -> dict[str, float]:
    """The numeric hyper-parameters of a run (or of a configuration a recommendation asks
    about) as floats, booleans as 0/1; strings, lists and the core ones left out."""
    out = {}
    for k, v in as_dict(r.get("hparams")).items():
        if k in NOT_HPARAM_FEATURES or isinstance(v, (str, list, dict)) or v is None:
            continue
        f = as_float(float(v) if isinstance(v, bool) else v)
        if math.isfinite(f):
            out[k] = f
    return out


def pretty_feature(name: str) -> str:
    """``sig:iimm`` -> ``iimm``; ``ds_domain:digits`` -> ``domain=digits``."""
    if name.startswith(SIGNAL_PREFIX):
        return name[len(SIGNAL_PREFIX):]
    if name.startswith(DOMAIN_PREFIX):
        return "domain=" + name[len(DOMAIN_PREFIX):]
    if name.startswith(ANCHOR_PREFIX):
        return name[len(ANCHOR_PREFIX):]
    if name.startswith(HPARAM_PREFIX):
        return name[len(HPARAM_PREFIX):]
    if name.startswith(PROBE_PREFIX):
        return "probe " + name[len(PROBE_PREFIX):]
    return name


def feature_ranges(schema: FeatureSchema, X: np.ndarray) -> dict[str, list[float]]:
    out = {}
    for j, name in enumerate(schema.names):
        if name.startswith((SIGNAL_PREFIX, ANCHOR_PREFIX)):
            col = X[:, j][np.isfinite(X[:, j])]
            if len(col):
                out[name] = [float(col.min()), float(col.max())]
    return out

