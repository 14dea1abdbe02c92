"""What ``advisor recommend`` is asked: ``RecommendRequest``, built once and validated once."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..decision import OBJECTIVES
from ..errors import RecommendError
from .requests import DatasetSpec, ModelSpec


def check_device_name(device: str, what: str = "--device") -> str:
    """A device named as ``advisor run`` takes it (``cpu``, ``cuda``, ``cuda:N``, ``mps``), or a
    one-line error; not checked against this machine, since recommend predicts the cost of a
    run on the named device, which may be another machine's."""
    from ..config import DEVICE_KINDS

    kind, _, index = device.strip().partition(":")
    if kind not in DEVICE_KINDS or (index and not (index.isascii() and index.isdigit())):
        raise RecommendError(f"{what} {device!r} is not a device (use auto, cpu, cuda, cuda:N or mps)")
    return device.strip()


def parse_pin(text: str) -> tuple[str | None, str, Any]:
    """``lr=0.001`` or ``lora:lr=0.001`` -> (method or None, name, value as JSON or text)."""
    import json

    head, eq, value = text.partition("=")
    method, colon, name = head.rpartition(":")
    name = name.strip()
    if not eq or not name or not value.strip():
        raise RecommendError(f"--hparam {text!r} is not NAME=VALUE or METHOD:NAME=VALUE")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value.strip()
    return (method.strip() or None) if colon else None, name, parsed


def parse_pins(pins: Any) -> tuple[tuple[str | None, str, Any], ...]:
    """Pins as given to ``RecommendRequest.hparams`` (``NAME=VALUE`` texts or parsed triples),
    their syntax checked; ``advisor.recommendation.check_pins`` checks them against the tuners'
    declared hyper-parameters (the plugin layer stands above this module)."""
    return tuple(parse_pin(p) if isinstance(p, str) else tuple(p) for p in pins or ())


@dataclass(frozen=True)
class RecommendRequest:
    """One ``advisor recommend`` call: the pair, where its signals come from, and the decision's
    terms. Checked when built, so every phase after it reads values it can trust.

    ``max_forgetting`` is in accuracy units (0.02 = 2 points of mean OOD accuracy) and ``budget``
    in seconds of training wall time. ``embeddings`` (a ``.npz`` with ``image``, ``text``,
    ``labels``) replaces loading the model and dataset: signals come from the file. ``device``
    ``None`` (or ``auto``) predicts the cost on the device most history runs used.

    ``other_models`` are further candidate models ranked with ``model`` on one scale.
    ``hparams`` pins hyper-parameters: ``(method or None, name, value)``; None applies the pin
    to every method that declares ``name``. A pinned configuration the history never ran is
    predicted anyway and flagged. ``probe`` runs each candidate's first ``probe`` epochs on the
    pair (``advisor.probe``) within ``probe_budget`` seconds in all.
    """

    model: ModelSpec
    dataset: DatasetSpec | None = None
    db: str | None = None
    objective: str = "balanced"
    max_forgetting: float | None = None
    budget: float | None = None
    shots: int | None = 16
    device: str | None = None
    max_images: int | None = None
    quiet: bool = False
    embeddings: str | None = None
    allow_random_weights: bool = False
    other_models: tuple[ModelSpec, ...] = ()
    hparams: tuple[tuple[str | None, str, Any], ...] = ()
    probe: int | None = None
    probe_budget: float | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise RecommendError(f"unknown objective {self.objective!r} (choose from {', '.join(OBJECTIVES)})")
        mf, budget = self.max_forgetting, self.budget
        if mf is not None and not (mf >= 0 and math.isfinite(mf)):
            raise RecommendError(f"--max-forgetting must be a finite number >= 0 (got {mf})")
        if budget is not None and not (budget > 0 and math.isfinite(budget)):
            raise RecommendError(f"--budget must be a positive number of seconds (got {budget})")
        if self.shots is not None and self.shots < 1:
            raise RecommendError(f"--shots must be at least 1 (got {self.shots})")
        if self.probe is not None and self.probe < 1:
            raise RecommendError(f"--probe must be at least 1 epoch (got {self.probe})")
        pb = self.probe_budget
        if pb is not None and not (pb > 0 and math.isfinite(pb)):
            raise RecommendError(f"--probe-budget must be a positive number of seconds (got {pb})")
        if self.other_models and self.embeddings is not None:
            raise RecommendError("several --model candidates need the models themselves, not --from-embeddings")
        keys = [m.key() for m in self.models]
        if len(set(keys)) < len(keys):
            raise RecommendError(f"a candidate model is named twice: {', '.join(sorted({k for k in keys if keys.count(k) > 1}))}")
        object.__setattr__(self, "hparams", parse_pins(self.hparams))
        device = self.device
        if device is not None:
            device = None if device.strip() in ("", "auto") else check_device_name(device)
        object.__setattr__(self, "device", device)

    @classmethod
    def build(cls, model: ModelSpec | str, dataset: DatasetSpec | str | None = None, **terms: Any) -> RecommendRequest:
        """A request from names or specs (``advisor.recommend``'s arguments)."""
        mspec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
        if "other_models" in terms:
            terms["other_models"] = tuple(m if isinstance(m, ModelSpec) else ModelSpec(str(m))
                                          for m in terms["other_models"] or ())
        if "hparams" in terms:
            hp = terms["hparams"] or ()
            terms["hparams"] = tuple(f"{k}={json.dumps(v)}" for k, v in hp.items()) if isinstance(hp, Mapping) else tuple(hp)
        dspec = dataset if isinstance(dataset, DatasetSpec) or dataset is None else DatasetSpec(str(dataset))
        return cls(mspec, dspec, **terms)

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Every candidate model, ``model`` first."""
        return (self.model, *self.other_models)

    @property
    def device_kind(self) -> str | None:
        """``cuda`` for ``cuda:1``: the kind the cost model knows; None when not asked for."""
        return self.device.split(":", 1)[0] if self.device else None
