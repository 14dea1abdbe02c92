"""What a tuner receives (``TrainContext``), declares (``HParam``, ``Tuner``) and returns
(``Adapted``, ``TrainResult``), and the ``RunResult`` a run records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable


@dataclass
class TrainContext:
    """Everything a tuner needs for one run. Plugins must not open the database.

    ``train_pixels`` is a float tensor (N,3,H,W) already preprocessed for ``model`` and
    ``train_labels`` a LongTensor (N,). ``image_features`` (N,d), when given, are the frozen
    image tower's outputs for the same images (tuners that freeze the image tower may use
    them instead of running it). ``progress(step, total, loss)`` reports to the CLI.
    """

    model: Any
    class_names: list[str]
    template: str
    train_pixels: Any
    train_labels: Any
    device: str
    seed: int
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    shots: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    image_features: Any = None
    progress: Callable[[int, int, float], None] | None = None
    on_epoch: Callable[["EpochEnd"], None] | None = None
    stop_after_epochs: int | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class EpochEnd:
    """What the shared loop reports after each epoch: the 1-based ``epoch`` of ``epochs`` in the
    schedule, the optimiser steps so far, the epoch's mean training loss, the seconds spent in
    training so far (measurements excluded), and ``adapted``, the model as trained so far (an
    ``Adapted``; None when the tuner did not hand one to ``fit``)."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    train_s: float
    adapted: Any = None


@runtime_checkable
class Adapted(Protocol):
    """A trained model as a user would deploy it.

    ``encode_image`` is the adapted image tower. ``class_text_features(class_names, template)``
    gives (C,d) text features for *any* class names: for prompt methods the learned prompts
    are applied to those names, which is how out-of-domain sets are evaluated.
    """

    def encode_image(self, pixels: Any) -> Any: ...

    def class_text_features(self, class_names: Sequence[str], template: str) -> Any: ...

    def adapter_state(self) -> dict[str, Any]:
        """Tensors to save as safetensors (only what was trained)."""


@dataclass
class TrainResult:
    """What a tuner's ``train`` returns."""

    adapted: Any  # Adapted
    trainable_params: int
    losses: list[float]
    hparams: dict[str, Any]
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter a tuner declares in its registration.

    ``advisor run --hparam NAME=VALUE`` is checked against it before any model loads, and
    ``advisor run --help`` lists it with its type, default and help, so a third-party tuner's
    knobs are as visible as the built-ins'. ``type`` is int, float, str, bool or list (of str);
    a ``default`` of None also accepts null ("use the tuner's own rule").
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    minimum: float | None = None  # numbers: inclusive lower bound
    maximum: float | None = None  # numbers: inclusive upper bound
    positive: bool = False  # numbers: strictly above zero
    choices: tuple[str, ...] = ()  # strings: the allowed values

    def parse(self, value: Any) -> Any:
        """A user's value (a CLI string, or any JSON value) as the declared type; raises
        ValueError with a one-line reason (non-finite numbers included)."""
        import math

        if isinstance(value, str) and self.type is not str:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if value is None:
            if self.default is None:
                return None
            raise ValueError(f"{self.name} cannot be null")
        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false (got {value!r})")
            return value
        if t in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number (got {value!r})")
            if t is int:
                if float(value) != int(value):
                    raise ValueError(f"{self.name} must be an integer (got {value!r})")
                value = int(value)
            else:
                value = float(value)
            if self.positive and not value > 0:
                raise ValueError(f"{self.name} must be positive (got {value!r})")
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{self.name} must be at least {self.minimum:g} (got {value!r})")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{self.name} must be at most {self.maximum:g} (got {value!r})")
            return value
        if t is list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
                raise ValueError(f"{self.name} must be a list of names (got {value!r})")
            return [v.strip() for v in items]
        if isinstance(value, (dict, list)):
            raise ValueError(f"{self.name} must be a string (got {value!r})")
        value = value if isinstance(value, str) else json.dumps(value)
        if self.choices and value.lower() not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)} (got {value!r})")
        return value.lower() if self.choices else value

    def describe(self) -> str:
        """``type, default X: help`` for help texts."""
        default = "none" if self.default is None else json.dumps(self.default)
        kind = "|".join(self.choices) if self.choices else self.type.__name__
        return f"{kind}, default {default}" + (f": {self.help}" if self.help else "")


#: The shared training loop's knobs (``advisor.tuning.fit``), understood by every tuner that
#: resolves its hyper-parameters with ``advisor.tuning.resolve_hparams``. Their defaults belong
#: to each tuner (``Tuner.defaults``), so None here means "the tuner's default".
LOOP_HPARAMS: tuple[HParam, ...] = (
    HParam("epochs", int, help="passes over the training images", minimum=1),
    HParam("lr", float, help="peak learning rate", positive=True),
    HParam("batch_size", int, help="training images per step", minimum=1),
    HParam("optimizer", str, help="the optimiser", choices=("adamw", "sgd")),
    HParam("weight_decay", float, help="decoupled (AdamW) or L2 (SGD) weight decay", minimum=0),
    HParam("momentum", float, help="SGD momentum", minimum=0, maximum=1),
    HParam("warmup_epochs", float, help="epochs of warm-up before the cosine schedule", minimum=0),
    HParam("warmup_type", str, help="warm-up ramp", choices=("linear", "constant")),
    HParam("warmup_lr", float, help="learning rate of a constant warm-up", positive=True),
    HParam("eval_batch_size", int, help="images per batch when encoding frozen features", minimum=1),
)

#: The tuner families the cold-start heuristic knows (any other family ranks after them):
#: what a family trains decides how much in-domain gain and forgetting to expect.
TUNER_FAMILIES: dict[str, str] = {
    "full": "every weight of both towers",
    "low-rank": "low-rank adapters inside the towers' layers",
    "output-map": "small maps on the towers' outputs; towers frozen",
    "prompt": "learned text-prompt context; both towers frozen",
}


@dataclass(frozen=True)
class Tuner:
    """A tuner plugin's registration: ``train(ctx) -> TrainResult``, and everything the rest of
    advisor needs to know about the method (so the core holds no list of method names).

    ``defaults(shots)`` gives every default hyper-parameter (with their source cited in the
    tuner's docstring); user overrides in ``TrainContext.hparams`` win. ``hparams`` declares the
    tuner's own knobs (types, defaults, help) for ``--hparam`` checking and ``advisor run
    --help``; with ``loop_hparams`` the shared loop's knobs (``LOOP_HPARAMS``) are accepted too.
    ``family`` (a ``TUNER_FAMILIES`` key) drives the cold-start heuristic; ``order`` sorts
    methods in tables and plots (smaller first); ``colour`` is the method's plot colour
    (``#rrggbb``; None: one picked from the name). ``reconstructed`` marks a method that is
    this project's reconstruction from a paper's text, not its official code. ``search``
    declares, per numeric hyper-parameter, the (low, high) range worth searching (positive
    ranges are searched log-spaced): ``advisor recommend`` picks the best predicted
    configuration in it, within the values the history ran the method with.
    """

    name: str
    train: Callable[[TrainContext], TrainResult]
    defaults: Callable[[int | None], dict[str, Any]] = lambda shots: {}
    description: str = ""
    reconstructed: bool = False
    family: str = "other"
    order: int = 100
    colour: str | None = None
    hparams: tuple[HParam, ...] = ()
    loop_hparams: bool = True
    search: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def hparam_specs(self) -> dict[str, HParam]:
        """Every hyper-parameter this tuner accepts, by name (its own override the loop's)."""
        specs = {h.name: h for h in LOOP_HPARAMS} if self.loop_hparams else {}
        specs.update({h.name: h for h in self.hparams})
        return specs

    def declared_defaults(self) -> dict[str, Any]:
        """The defaults of the tuner's own declared hyper-parameters."""
        return {h.name: h.default for h in self.hparams}

    def check_hparams(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """User overrides parsed to their declared types; an unknown name or a bad value raises
        ``TrainingError`` with one line naming the tuner, before any model is loaded."""
        from ..errors import TrainingError

        specs = self.hparam_specs()
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise TrainingError(f"unknown hyper-parameter(s) for {self.name}: {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(specs))})")
        out = {}
        for key, value in values.items():
            try:
                out[key] = specs[key].parse(value)
            except ValueError as exc:
                raise TrainingError(f"{self.name}: {exc}") from None
        return out


@dataclass
class RunResult:
    """The measured outcome of one ``advisor run``: exactly what lands in the ``runs`` table."""

    model: str
    pretrained: str | None
    dataset: str
    method: str
    shots: int | None
    seed: int
    hparams: dict[str, Any]
    split_hash: str
    id_acc_before: float
    id_acc_after: float
    ood_before: dict[str, float]
    ood_after: dict[str, float]
    gap_before: float | None
    gap_after: float | None
    wall_time_s: float
    train_images_per_s: float | None
    peak_memory_mb: float | None
    trainable_params: int
    device: str
    provenance: dict[str, Any]
    signals: dict[str, float] = field(default_factory=dict)
    signal_versions: dict[str, str] = field(default_factory=dict)
    model_desc: dict[str, Any] = field(default_factory=dict)  # architecture, family, params, embed_dim, image_size
    dataset_desc: dict[str, Any] = field(default_factory=dict)  # fingerprint, n_classes, n_train, domain
    losses: list[float] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)  # learning-curve points (advisor.curves)
    adapter_path: str | None = None
    run_id: str | None = None
