"""Derived offline tasks: class subsets and image corruptions of the offline sources.

Five sources make too few tasks for a history of runs; these add tasks that differ in label
space (class subsets) or in image domain (corruptions), all still offline and deterministic.

| name                 | source        | derivation                                           |
|----------------------|---------------|------------------------------------------------------|
| fashion-tops         | fashion-mnist | 4 upper-body classes: t-shirt/top, pullover, coat, shirt |
| fashion-footwear     | fashion-mnist | 3 footwear classes: sandal, sneaker, ankle boot      |
| mnist-0to4           | mnist-5k      | digits 0-4                                           |
| mnist-5to9           | mnist-5k      | digits 5-9 (labels re-indexed 0-4)                   |
| fashion-mnist-noise  | fashion-mnist | additive Gaussian noise, sigma 64 grey levels        |
| fashion-mnist-lowres | fashion-mnist | area-downsampled 28 -> 7 px (4x4 pixel means)        |
| mnist-5k-blur        | mnist-5k      | Gaussian blur, sigma 1.5 px                          |
| digits-lowcontrast   | digits        | contrast scaled by 0.3 around mid-grey               |
| font-vowels          | font-letters  | the 5 vowels A, E, I, O, U                           |
| font-letters-blur    | font-letters  | Gaussian blur, sigma 2 px                            |
| oxygen-icons-things  | oxygen-icons  | 3 classes: hardware device, file type, folder        |
| oxygen-icons-gray    | oxygen-icons  | colour removed (luma, ITU-R BT.601)                  |
| wesnoth-humans       | wesnoth-units | 4 human classes: soldier, mage, outlaw, peasant      |
| wesnoth-units-hue    | wesnoth-units | hue rotated by 180 degrees (YIQ rotation)            |
| tuxpaint-food-animals | tuxpaint-clipart | 2 classes: animal, food                           |
| tuxpaint-clipart-lowres | tuxpaint-clipart | area-downsampled 96 -> 24 px, colour kept       |

Rules: a derived task is computed from its source's train and test splits only (never from the
reserve the model heads are trained on), keeps the source's item ids (so disjointness from the
reserve is checkable), and is capped at ``MAX_TRAIN_PER_CLASS`` train images per class and
``MAX_TEST`` test images (fixed stratified samples): corrupting all 64k Fashion-MNIST images
would cost seconds per load for nothing the runs use. Every random choice uses fixed seeds
derived from the task name, independent of the run's ``--seed``. The fingerprint covers the
source's fingerprint and the whole derivation, so changing a derivation changes it. Each
bundle's ``source`` is the base source, so evaluation can hold out a source with everything
derived from it.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from advisor.data import sample
from advisor.errors import DatasetError, UnknownNameError
from advisor.hookspecs import hookimpl
from advisor.specs import DatasetBundle, DatasetSource, DatasetSpec, ImageSet, stable_hash

from . import assets, offline  # noqa: F401 - assets adds the asset sources its tasks derive from

#: Bump when the derivation code changes meaning: it is part of every fingerprint.
DERIVE_VERSION = "1"
DERIVE_SEED = 104729
MAX_TRAIN_PER_CLASS = 500
MAX_TEST = 1000


@dataclass(frozen=True)
class DerivedTask:
    name: str
    source: str
    description: str
    keep: tuple[str, ...] = ()  # class names of the source kept (in this order); () keeps all
    corruption: str = ""  # a key of CORRUPTIONS; "" for none
    params: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = ()  # domain tags added to the source's

    def recipe(self) -> dict:
        """Everything the derivation depends on (goes into the fingerprint)."""
        return {
            "version": DERIVE_VERSION, "seed": DERIVE_SEED, "source": self.source, "keep": list(self.keep),
            "corruption": self.corruption, "params": dict(self.params),
            "max_train_per_class": MAX_TRAIN_PER_CLASS, "max_test": MAX_TEST,
        }


# --------------------------------------------------------------------------------------------
# Corruptions: uint8 (N,H,W) grey or (N,H,W,3) colour in, the same shape out; ``rng`` is the
# task's fixed generator. Grey inputs take exactly the code paths they always took.
# --------------------------------------------------------------------------------------------


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noisy = images.astype(np.float32) + rng.normal(0.0, sigma, size=images.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of a Gaussian convolution (kernel truncated at 4 sigma, zeros outside the
    image): ``M @ img @ M.T`` blurs both axes. A matrix, not scipy, because importing
    scipy.ndimage costs a second per load."""
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    m = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for k, o in zip(kernel, offsets):
            if 0 <= i + o < n:
                m[i, i + o] = k
    return m


def _per_channel(fn: Callable[..., np.ndarray], images: np.ndarray, rng: np.random.Generator,
                 **params: float) -> np.ndarray:
    """A grey (N,H,W) corruption applied to each channel of (N,H,W,C) colour images."""
    return np.stack([fn(images[..., c], rng, **params) for c in range(images.shape[-1])], axis=-1)


def gaussian_blur(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if images.ndim == 4:
        return _per_channel(gaussian_blur, images, rng, sigma=sigma)
    rows, cols = _blur_matrix(images.shape[1], sigma), _blur_matrix(images.shape[2], sigma)
    blurred = rows @ images.astype(np.float64) @ cols.T
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def low_contrast(images: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    scaled = 127.5 + (images.astype(np.float32) - 127.5) * factor
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix averaging each output pixel's exact footprint (area resampling)."""
    edges = np.linspace(0, n_in, n_out + 1)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        for i in range(n_in):
            w[o, i] = max(0.0, min(edges[o + 1], i + 1) - max(edges[o], i))
    return w / w.sum(axis=1, keepdims=True)


def low_resolution(images: np.ndarray, rng: np.random.Generator, side: float) -> np.ndarray:
    if images.ndim == 4:
        return _per_channel(low_resolution, images, rng, side=side)
    s = int(side)
    rows, cols = _area_weights(images.shape[1], s), _area_weights(images.shape[2], s)
    small = rows @ images.astype(np.float64) @ cols.T  # (s,H) @ (N,H,W) @ (W,s) -> (N,s,s)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def grayscale(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour removed: ITU-R BT.601 luma in all three channels (shape kept; grey input unchanged)."""
    if images.ndim != 4:
        return images.copy()
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], images.shape[-1], axis=-1)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_shift(images: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """Hue rotated by ``degrees`` in YIQ space (brightness kept; red -> cyan at 180); grey input unchanged."""
    if images.ndim != 4:
        return images.copy()
    t = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    m = (np.linalg.inv(_YIQ) @ rot @ _YIQ).astype(np.float32)
    out = images.astype(np.float32) @ m.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian-noise": gaussian_noise,
    "gaussian-blur": gaussian_blur,
    "low-contrast": low_contrast,
    "low-resolution": low_resolution,
    "grayscale": grayscale,
    "hue-shift": hue_shift,
}

TASKS: dict[str, DerivedTask] = {
    t.name: t
    for t in (
        DerivedTask("fashion-tops", "fashion-mnist", "Fashion-MNIST upper-body garments: t-shirt/top, pullover, coat, shirt",
                    keep=("t-shirt/top", "pullover", "coat", "shirt"), tags=("class-subset",)),
        DerivedTask("fashion-footwear", "fashion-mnist", "Fashion-MNIST footwear: sandal, sneaker, ankle boot",
                    keep=("sandal", "sneaker", "ankle boot"), tags=("class-subset",)),
        DerivedTask("mnist-0to4", "mnist-5k", "MNIST-5k digits 0-4", keep=("0", "1", "2", "3", "4"), tags=("class-subset",)),
        DerivedTask("mnist-5to9", "mnist-5k", "MNIST-5k digits 5-9", keep=("5", "6", "7", "8", "9"), tags=("class-subset",)),
        DerivedTask("fashion-mnist-noise", "fashion-mnist", "Fashion-MNIST with additive Gaussian noise (sigma 64 grey levels)",
                    corruption="gaussian-noise", params=(("sigma", 64.0),), tags=("corrupted", "noise")),
        DerivedTask("fashion-mnist-lowres", "fashion-mnist", "Fashion-MNIST area-downsampled to 7x7 px",
                    corruption="low-resolution", params=(("side", 7.0),), tags=("corrupted", "very-low-resolution")),
        DerivedTask("mnist-5k-blur", "mnist-5k", "MNIST-5k with Gaussian blur (sigma 1.5 px)",
                    corruption="gaussian-blur", params=(("sigma", 1.5),), tags=("corrupted", "blur")),
        DerivedTask("digits-lowcontrast", "digits", "scikit-learn digits with contrast scaled by 0.3 around mid-grey",
                    corruption="low-contrast", params=(("factor", 0.3),), tags=("corrupted", "low-contrast")),
        # tasks of the asset sources (plugins/datasets/assets.py)
        DerivedTask("font-vowels", "font-letters", "Font letters: the vowels A, E, I, O, U",
                    keep=("A", "E", "I", "O", "U"), tags=("class-subset",)),
        DerivedTask("font-letters-blur", "font-letters", "Font letters with Gaussian blur (sigma 2 px)",
                    corruption="gaussian-blur", params=(("sigma", 2.0),), tags=("corrupted", "blur")),
        DerivedTask("oxygen-icons-things", "oxygen-icons", "Oxygen icons of things: hardware device, file type, folder",
                    keep=("hardware device", "file type", "folder"), tags=("class-subset",)),
        DerivedTask("oxygen-icons-gray", "oxygen-icons", "Oxygen icons with colour removed (BT.601 luma)",
                    corruption="grayscale", tags=("corrupted", "grayscale")),
        DerivedTask("wesnoth-humans", "wesnoth-units", "Wesnoth human units: soldier, mage, outlaw, peasant",
                    keep=("human soldier", "mage", "outlaw", "peasant"), tags=("class-subset",)),
        DerivedTask("wesnoth-units-hue", "wesnoth-units", "Wesnoth unit sprites with hue rotated by 180 degrees",
                    corruption="hue-shift", params=(("degrees", 180.0),), tags=("corrupted", "hue-shift")),
        DerivedTask("tuxpaint-food-animals", "tuxpaint-clipart", "Tux Paint clip art: animal or food",
                    keep=("animal", "food"), tags=("class-subset",)),
        DerivedTask("tuxpaint-clipart-lowres", "tuxpaint-clipart", "Tux Paint clip art area-downsampled to 24x24 px",
                    corruption="low-resolution", params=(("side", 24.0),), tags=("corrupted", "low-resolution")),
    )
}


# --------------------------------------------------------------------------------------------
# Derivation
# --------------------------------------------------------------------------------------------


def _task(name: str) -> DerivedTask:
    if name not in TASKS:
        raise UnknownNameError(f"unknown derived dataset {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def _rng(task: DerivedTask, part: str) -> np.random.Generator:
    return np.random.default_rng([DERIVE_SEED, zlib.crc32(task.name.encode()), zlib.crc32(part.encode())])


def _keep_classes(images: ImageSet, keep: list[int]) -> ImageSet:
    """Only the items of the kept source labels, relabelled 0..len(keep)-1 in ``keep`` order."""
    labels = np.asarray(images.labels)
    idx = np.flatnonzero(np.isin(labels, keep))
    out = images.subset(idx)
    remap = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, dtype=np.int64)
    remap[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    return ImageSet(out.images, remap[np.asarray(out.labels)], out.ids)


def _cap_per_class(images: ImageSet, per_class: int, task: DerivedTask) -> ImageSet:
    labels = np.asarray(images.labels)
    rng = _rng(task, "cap-train")
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(idx if len(idx) <= per_class else np.sort(rng.choice(idx, per_class, replace=False)))
    return images.subset(np.sort(np.concatenate(chosen))) if chosen else images


def _corrupt(images: ImageSet, task: DerivedTask, part: str) -> ImageSet:
    if not task.corruption:
        return images
    if not isinstance(images.images, np.ndarray) or images.images.ndim not in (3, 4):
        raise DatasetError(f"{task.name}: corruptions need in-memory images, {task.source} has none")
    out = CORRUPTIONS[task.corruption](images.images, _rng(task, f"corrupt-{part}"), **dict(task.params))
    return ImageSet(out, np.asarray(images.labels), list(images.ids))


@functools.lru_cache(maxsize=16)
def derive(name: str) -> tuple[DatasetBundle, ImageSet, ImageSet]:
    """The source's bundle and the task's (train, test), built from the source's splits only."""
    task = _task(name)
    base = offline.load(task.source, DatasetSpec(name=task.source))
    train, test = base.train, base.test
    if test is None:  # every offline source defines its test split; guard the invariant
        raise DatasetError(f"{name}: source {task.source} has no test split")
    if task.keep:
        missing = [c for c in task.keep if c not in base.class_names]
        if missing:
            raise DatasetError(f"{name}: source {task.source} has no class {missing[0]!r}")
        keep = [base.class_names.index(c) for c in task.keep]
        train, test = _keep_classes(train, keep), _keep_classes(test, keep)
    train = _cap_per_class(train, MAX_TRAIN_PER_CLASS, task)
    test = sample(test, MAX_TEST, DERIVE_SEED)
    return base, _corrupt(train, task, "train"), _corrupt(test, task, "test")


def load(name: str, spec: DatasetSpec) -> DatasetBundle:
    """Load a derived task. Option: ``templates`` (a JSON file or a literal template)."""
    from advisor.data import templates_option

    task = _task(name)
    unknown = sorted(k for k, _ in spec.options if k != "templates")
    if unknown:
        raise DatasetError(f"derived dataset {name} takes no option {unknown[0]!r} (only templates)")
    base, train, test = derive(name)
    class_names = list(task.keep) if task.keep else list(base.class_names)
    templates = templates_option(spec, base.templates)
    fingerprint = stable_hash({"base": base.fingerprint, "recipe": task.recipe(), "templates": templates})
    return DatasetBundle(
        name=name,
        class_names=class_names,
        templates=templates,
        train=ImageSet(train.images, train.labels, list(train.ids)),
        test=ImageSet(test.images, test.labels, list(test.ids)),
        fingerprint=fingerprint,
        domain=tuple(base.domain) + task.tags,
        description=task.description,
        source=task.source,
    )


def identity(name: str, spec: DatasetSpec) -> str | None:
    """What ``load(name, spec)`` depends on: the base source's identity, the derivation (its
    recipe, tags and description) and the option files (None when the base source cannot tell)."""
    task = _task(name)
    base = offline.identity(task.source, DatasetSpec(name=task.source))
    if base is None:
        return None
    return stable_hash({"base": base, "recipe": task.recipe(), "tags": list(task.tags), "description": task.description,
                        "options": offline.option_files(spec)}, n=32)


@hookimpl
def register_datasets(register: Callable[[DatasetSource], None]) -> None:
    for name, task in TASKS.items():
        register(
            DatasetSource(
                name=name,
                load=functools.partial(load, name),
                description=f"{task.description} (derived from {task.source})",
                offline=True,
                needs=offline.source(task.source).needs,
                identity=functools.partial(identity, name),
                options=("templates",),
            )
        )
