"""What ``advisor recommend`` is asked: ``RecommendRequest``, built once and validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class RecommendRequest:
    """One ``advisor recommend`` call: the pair, where its signals come from, and the decision's
    terms. Checked when built, so every phase after it reads values it can trust.

    ``max_forgetting`` is in accuracy units (0.02 = 2 points of mean OOD accuracy) and ``budget``
    in seconds of training wall time. ``embeddings`` (a ``.npz`` with ``image``, ``text``,
    ``labels``) replaces loading the model and dataset: signals come from the file. ``device``
    ``None`` (or ``auto``) predicts the cost on the device most history runs used.
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
        device = self.device
        if device is not None:
            device = None if device.strip() in ("", "auto") else check_device_name(device)
        object.__setattr__(self, "device", device)

    @classmethod
    def build(cls, model: ModelSpec | str, dataset: DatasetSpec | str | None = None, **terms: Any) -> RecommendRequest:
        """A request from names or specs (``advisor.recommend``'s arguments)."""
        mspec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
        dspec = dataset if isinstance(dataset, DatasetSpec) or dataset is None else DatasetSpec(str(dataset))
        return cls(mspec, dspec, **terms)

    @property
    def device_kind(self) -> str | None:
        """``cuda`` for ``cuda:1``: the kind the cost model knows; None when not asked for."""
        return self.device.split(":", 1)[0] if self.device else None
