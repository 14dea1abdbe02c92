"""What ``advisor run`` is asked to do: one ``RunRequest``, built once by the command line, the
sweep worker or a probe, validated once (``advisor.run_checks.check_request``) and read by every
phase of the run."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Mapping, Sequence

from .requests import DatasetSpec, ModelSpec

#: Test images per dataset used for accuracy before/after (a fixed sample, see ``advisor.runner``).
DEFAULT_MAX_TEST = 500
DEFAULT_MAX_OOD = 500


@dataclass(frozen=True)
class RunRequest:
    """One fine-tuning run: the pair, the method and its overrides, what to measure and where the
    run, its adapter and (when the history cannot be written) its spool file go.

    ``hparams`` are the user's overrides (the tuner fills in the rest); ``epochs``, ``lr`` and
    ``batch_size`` are the command line's own overrides of the same keys. ``ood=None`` means the
    default OOD reference sets. ``signals=False`` records the pair's descriptors only.
    ``stop_after_epochs`` stops the run's real schedule early (probe runs); ``probe_budget_s``
    bounds its training's wall seconds: the loop ends after the epoch during which that many
    seconds have passed since the tuner started (``TrainContext.deadline``)."""

    model: ModelSpec
    dataset: DatasetSpec
    method: str
    shots: int | None = 16
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    ood: tuple[str, ...] | None = None
    device: str | None = None
    max_test: int = DEFAULT_MAX_TEST
    max_ood: int = DEFAULT_MAX_OOD
    signals: bool = True
    record: bool = True
    db: str | None = None
    save_adapter: bool = True
    adapters_dir: str | None = None
    spool_dir: str | None = None
    stop_after_epochs: int | None = None
    probe_budget_s: float | None = None
    provenance_extra: Mapping[str, Any] | None = None
    quiet: bool = False

    #: The options a sweep may set for every run (``[run]`` in a sweep file), with their types,
    #: and the request field each one fills.
    SWEEP_OPTIONS: ClassVar[dict[str, tuple[type, str]]] = {
        "max_images": (int, "max_test"),
        "max_ood": (int, "max_ood"),
        "device": (str, "device"),
        "save_adapter": (bool, "save_adapter"),
        "signals": (bool, "signals"),
        "ood": (list, "ood"),  # OOD reference sets (default: one per other offline source)
    }

    def __post_init__(self) -> None:
        # Private copies: a caller mutating its dict or list later cannot change the request.
        object.__setattr__(self, "hparams", dict(self.hparams or {}))
        if self.ood is not None and not isinstance(self.ood, tuple):
            object.__setattr__(self, "ood", tuple(self.ood))
        if self.provenance_extra is not None:
            object.__setattr__(self, "provenance_extra", dict(self.provenance_extra))

    @property
    def given_hparams(self) -> dict[str, Any]:
        """Every hyper-parameter the request sets: the command line's epochs, lr and batch size
        (when given) under the ``hparams`` overrides."""
        given = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size}
        return {**{k: v for k, v in given.items() if v is not None}, **self.hparams}

    def with_sweep_options(self, options: Mapping[str, Any]) -> "RunRequest":
        """This request with a sweep's ``[run]`` options applied (already type-checked)."""
        changes = {self.SWEEP_OPTIONS[k][1]: v for k, v in options.items() if k in self.SWEEP_OPTIONS}
        if changes.get("ood") is not None:
            changes["ood"] = tuple(changes["ood"])
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> Sequence[str]:
        return [f.name for f in fields(cls)]
