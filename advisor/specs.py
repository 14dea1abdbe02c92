"""The plain data types that cross plugin boundaries.

Plugins receive and return only what is defined here (plus numpy arrays and torch tensors), so
a metric, tuner, dataset or model written by a third party never needs to import the CLI or the
history database. Data flows one way: ModelSpec + DatasetSpec -> Embeddings -> signals ->
predictor -> recommendation; ``advisor run``: DatasetBundle -> TrainContext -> Adapted -> RunResult.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

# --------------------------------------------------------------------------------------------
# What the user asks for
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load.

    ``name`` is a registered model name (``lit-offline``, ``tiny-vit``), an open_clip
    architecture (``ViT-B-32``), an ``hf-hub:org/repo`` id, or a path to a checkpoint.
    ``pretrained`` is an open_clip pretrained tag or a checkpoint path. ``image_size`` is the
    working resolution (None: the model's own default) and is part of the model's identity,
    because embeddings at 64 px and 224 px differ.
    """

    name: str
    pretrained: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None

    def key(self) -> str:
        return f"{self.name}|{self.pretrained or ''}|{self.image_size or ''}"


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset to load: a registered name (``fashion-mnist``) or ``prefix:argument``
    (``folder:./images``, ``csv:data.csv``), plus free-form options
    (``label_column``, ``classnames_file``, ``max_per_class`` ...)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def prefix(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else self.name

    @property
    def argument(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


#: PIL modes holding more than 8 bits per pixel; ``convert("RGB")`` clips them instead of scaling.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(im: Any) -> Any:
    """A PIL image as 8-bit RGB, with wide grey modes scaled rather than clipped.

    16-bit images (``I;16*``, and ``I`` whose values fit 16 bits, as 16-bit PNGs open) map
    0..65535 to 0..255; ``F`` images in [0, 1] map to 0..255; other ``I``/``F`` ranges are
    stretched from their minimum to their maximum. Every other mode is PIL's own conversion.
    """
    from PIL import Image

    if im.mode not in WIDE_MODES:
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        scaled = a * (255.0 / 65535.0)
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255.0
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    u8 = np.floor(np.clip(scaled, 0, 255) + 0.5).astype(np.uint8)
    return Image.fromarray(u8).convert("RGB")


@dataclass
class ImageSet:
    """A labelled set of images, in memory or on disk.

    ``images`` is either a uint8 array (N,H,W) / (N,H,W,3) or a list of file paths. ``labels``
    are integers in [0, len(class_names)). ``ids`` identify each item stably (index in the
    source, or relative path) so that splits can be hashed.
    """

    images: np.ndarray | list[str]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            imgs: np.ndarray | list[str] = self.images[idx]
        else:
            imgs = [self.images[i] for i in idx]
        return ImageSet(images=imgs, labels=self.labels[idx], ids=[self.ids[i] for i in idx])

    def pil(self, i: int) -> Any:
        """Item ``i`` as an RGB PIL image. A file that cannot be read raises DatasetError naming it."""
        from PIL import Image

        from .errors import DatasetError

        if isinstance(self.images, np.ndarray):
            arr = self.images[i]
            return Image.fromarray(arr).convert("RGB")
        path = self.images[i]
        try:
            with Image.open(path) as im:
                return to_rgb(im)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetError(f"cannot read image {path}: {exc}") from None

    def split_hash(self) -> str:
        """A short hash of the item ids and labels: identifies exactly which items were used."""
        h = hashlib.sha256()
        for i, y in zip(self.ids, self.labels.tolist()):
            h.update(f"{i}\t{y}\n".encode())
        return h.hexdigest()[:16]


@dataclass
class DatasetBundle:
    """What a dataset plugin returns: class names, prompt templates, and the source's splits.

    ``test`` is None when the source has no predefined test split (a seeded split is made).
    ``fingerprint`` changes whenever the underlying data changes (file list + sizes, or an
    array hash). ``domain`` tags ("grayscale", "digits", "texture" ...) become dataset
    descriptors for the predictor. ``source`` names the original data a derived task was made
    from ("" means the dataset is its own source), so evaluation can hold out a whole source.
    """

    name: str
    class_names: list[str]
    templates: list[str]
    train: ImageSet
    test: ImageSet | None
    fingerprint: str
    domain: tuple[str, ...] = ()
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class DatasetSource:
    """A dataset plugin's registration.

    ``load(spec)`` returns a DatasetBundle. ``prefix`` sources (``folder``, ``csv``) take an
    argument after the colon. ``offline`` says the data ships with an installed package (or is
    the user's own files): no network is needed. ``origin`` says where the data comes from (a
    package, a paper, "your files"), for ``advisor plugins`` and the docs. ``ood_reference``
    offers a named offline source as a default out-of-domain set of ``advisor run``.
    ``identity(spec)``, when given, is a cheap string that changes whenever ``load(spec)`` would
    return other data or descriptors (the source files' paths, sizes and modification times, a
    layout version, the files the options name), or None when it cannot tell: with it, advisor
    memoises the dataset's descriptors instead of loading the data (``advisor.data.describe_dataset``).
    """

    name: str
    load: Callable[[DatasetSpec], DatasetBundle]
    description: str = ""
    prefix: bool = False
    offline: bool = True
    needs: str = ""  # human hint: what must be installed ("apt-get install dataset-fashion-mnist")
    origin: str = ""
    ood_reference: bool = False
    identity: Callable[[DatasetSpec], str | None] | None = None


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@runtime_checkable
class VisionLanguageModel(Protocol):
    """The interface tuners and signals share, implemented by every model plugin.

    Implementations are ``torch.nn.Module`` subclasses. Encoders return *unnormalised*
    joint-space embeddings; callers normalise. ``logit_scale`` is a learnable scalar parameter
    holding log(temperature) as in open_clip.

    Prompt learning (CoOp, ContCoOp) needs to reach the text tower's input embeddings:
    ``tokenize`` -> ``token_embeddings(tokens)`` -> edit positions -> ``encode_text_embeddings``.
    Learned context vectors are inserted at positions ``[context_offset, context_offset + M)``
    of a prompt built as ``" ".join(["X"] * M) + " " + text``.
    """

    name: str
    image_size: int
    embed_dim: int
    token_dim: int  # width of the text tower's token-embedding space
    context_offset: int  # index of the first token after the start token
    logit_scale: Any  # torch.nn.Parameter

    def preprocess(self, image: Any) -> Any:
        """PIL image -> float tensor (3, image_size, image_size), normalised for the tower."""

    def encode_image(self, pixels: Any, return_layers: bool = False) -> Any:
        """(B,3,H,W) -> (B,d); with return_layers: (emb, [per-layer pooled (B, w_l)])."""

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Texts -> token ids (LongTensor (B,L)) plus whatever mask the tower needs (a dict)."""

    def encode_text(self, tokens: Any, return_layers: bool = False) -> Any:
        """Tokens from ``tokenize`` -> (B,d); with return_layers: (emb, [per-layer (B, w_l)])."""

    def token_embeddings(self, tokens: Any) -> Any:
        """Tokens -> (B,L,token_dim) input embeddings (before positions are added)."""

    def encode_text_embeddings(self, embeddings: Any, tokens: Any) -> Any:
        """Input embeddings (B,L,token_dim) with the tokens they came from -> (B,d)."""

    def describe(self) -> dict[str, Any]:
        """Descriptors: architecture, family, params, embed_dim, image_size, pretrained."""

    def identity(self) -> str:
        """A string that changes whenever the weights or working resolution change."""


@dataclass(frozen=True)
class ModelSource:
    """A model plugin's registration.

    ``load(spec, device)`` returns a VisionLanguageModel on ``device``. A ``matches`` function
    lets one source accept open-ended names (every open_clip architecture, ``hf-hub:`` ids,
    checkpoint paths); otherwise the source answers to ``name`` only. ``family`` groups models
    that share towers and training (the predictor's model-family feature; the loaded model's
    ``describe()["family"]`` is the same value). ``offline``: weights install with a package.
    """

    name: str
    load: Callable[[ModelSpec, str], Any]
    description: str = ""
    matches: Callable[[str], bool] | None = None
    offline: bool = True
    family: str = ""


# --------------------------------------------------------------------------------------------
# Embeddings and metrics
# --------------------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """One forward pass of a (model, dataset split) pair.

    ``image`` (N,d) and ``text`` (C,d) are post-projection joint-space embeddings, not
    necessarily normalised (each metric normalises as its method specifies). ``labels`` (N,)
    are ints in [0,C). ``paired_text`` (N,d) is the text embedding of each image's true-class
    prompt when the caller has it (else metrics use ``text[labels]``). ``image_layers`` is a
    list of L arrays (N, w_l) and ``text_layers`` a list of L' arrays (M, w'_l) of pooled
    per-layer states, when the model exposes them.

    ``text_layer_rows`` says what the M rows of ``text_layers`` are, so no metric guesses it from
    their count: ``"prompts"`` (one per (template, class) prompt, templates outer: M = T*C),
    ``"classes"`` (one per class), ``"images"`` (one per image, paired row by row) or
    ``"unpaired"`` (text not paired with the images; the default, as MIR's official code treats
    its text tokens).
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_layers: list[np.ndarray] | None = None
    text_layers: list[np.ndarray] | None = None
    paired_text: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    text_layer_rows: str = "unpaired"

    @property
    def available(self) -> frozenset[str]:
        have = {"image", "text", "labels"}
        if self.image_layers is not None and self.text_layers is not None:
            have.add("layers")
        return frozenset(have)


@dataclass(frozen=True)
class Metric:
    """A metric plugin's registration.

    ``compute(embeddings)`` returns one float, or a mapping of signal name -> float when the
    metric reports several related values (IIMM and its two terms). A single float is stored
    under ``name``. ``needs`` is a subset of {"image", "text", "labels", "layers"}; metrics
    whose needs are not met are skipped. Bump ``version`` when the definition changes: signal
    values are stored with it. ``reconstructed`` marks a metric (or some of its values) that is
    this project's reconstruction of a paper's unpublished formula (``advisor plugins`` says so).
    ``array_api=True`` declares that ``compute`` also accepts Embeddings whose arrays are torch
    tensors (on any device, e.g. CUDA) and computes on them there; a metric without it always
    receives numpy arrays (``advisor.signals`` converts).
    """

    name: str
    compute: Callable[[Embeddings], float | Mapping[str, float]]
    needs: frozenset[str] = frozenset({"image", "text", "labels"})
    version: str = "1"
    description: str = ""
    higher_is: str = ""  # free text: what a higher value means
    reconstructed: bool = False
    array_api: bool = False


# --------------------------------------------------------------------------------------------
# Tuners and runs
# --------------------------------------------------------------------------------------------


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
    this project's reconstruction from a paper's text, not its official code.
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
        from .errors import TrainingError

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
    adapter_path: str | None = None
    run_id: str | None = None


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    data = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:n]

