"""``torchvision:NAME``: torchvision's dataset classes (CIFAR10, CIFAR100, MNIST, FashionMNIST,
SVHN, EuroSAT, DTD, Flowers102, OxfordIIITPet, Food101, GTSRB, STL10 ...), for users with a network.

Nothing is downloaded unless option ``download=True`` (``--download``) is given; data already
under ``root`` (option; default ``<advisor user dir>/torchvision``) loads offline. Train/test come
from the class's ``train=`` flag or ``split=`` argument; classes with neither (EuroSAT) get a
seeded split. Class names from the dataset's ``classes`` or option ``classnames``; templates
from option ``templates`` or ``"a photo of a {}."``.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Callable

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.data import DEFAULT_TEMPLATE, classnames_option, templates_option
from advisor.errors import DatasetError, UnknownNameError
from advisor.specs import DatasetBundle, DatasetSource, DatasetSpec, ImageSet, stable_hash

from .folder import domain_option

TRAIN_SPLITS = ("train", "trainval")
TEST_SPLITS = ("test",)


def _dataset_class(name: str) -> Any:
    import torchvision.datasets as tvd

    names = {n.lower(): n for n in getattr(tvd, "__all__", dir(tvd)) if n[:1].isupper()}
    key = name.lower().replace("-", "").replace("_", "")
    match = names.get(name.lower()) or next((v for k, v in names.items() if k.replace("_", "") == key), None)
    if match is None or match in ("VisionDataset", "DatasetFolder", "ImageFolder"):
        raise UnknownNameError(f"torchvision has no dataset {name!r} (e.g. CIFAR10, CIFAR100, MNIST, FashionMNIST, EuroSAT)")
    return getattr(tvd, match)


def _open(cls: Any, root: Path, download: bool, part: str | None, label: str) -> Any:
    params = inspect.signature(cls.__init__).parameters
    attempts: list[dict[str, Any]] = []
    if part is None:
        attempts = [{}]
    elif "train" in params:
        attempts = [{"train": part == "train"}]
    elif "split" in params:
        attempts = [{"split": s} for s in (TRAIN_SPLITS if part == "train" else TEST_SPLITS)]
    else:
        return None
    last: Exception | None = None
    for kw in attempts:
        try:
            return cls(root=str(root), download=download, **kw)
        except ValueError as exc:  # an unknown split value: try the next spelling
            last = exc
            continue
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            if not download:
                raise DatasetError(
                    f"{label} is not in {root}; it needs network: pass --download (option download=True)"
                ) from None
            raise DatasetError(f"{label}: download failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if part == "test":
        return None
    raise DatasetError(f"{label}: cannot open the {part} split ({last})")


def _has_split(cls: Any) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return "train" in params or "split" in params


def _to_imageset(ds: Any, root: Path, part: str) -> ImageSet:
    """Arrays when the dataset keeps them in memory (CIFAR, MNIST, SVHN), else file paths."""
    data = getattr(ds, "data", None)
    if data is not None and not isinstance(data, (list, tuple)):
        arr = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(0, 2, 3, 1)  # SVHN, STL10 are (N,C,H,W)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = getattr(ds, "labels", None)
        labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels, dtype=np.int64)
        arr = np.ascontiguousarray(arr.astype(np.uint8))
        return ImageSet(images=arr, labels=labels, ids=[f"{part}/{i:06d}" for i in range(len(labels))])
    pairs: list[tuple[str, int]] | None = None
    for attr in ("samples", "imgs", "_samples"):
        v = getattr(ds, attr, None)
        if isinstance(v, list) and v and isinstance(v[0], tuple):
            pairs = [(str(p), int(y)) for p, y in v]
            break
    if pairs is None:
        files = next((getattr(ds, a) for a in ("_image_files", "_images") if isinstance(getattr(ds, a, None), list)), None)
        labs = next((getattr(ds, a) for a in ("_labels", "targets", "labels") if getattr(ds, a, None) is not None), None)
        if files is not None and labs is not None:
            pairs = [(str(p), int(y)) for p, y in zip(files, labs)]
    if pairs is None:
        raise DatasetError(f"torchvision dataset {type(ds).__name__} keeps neither arrays nor a file list; use folder: or csv:")

    def rel(p: str) -> str:
        try:
            return Path(p).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p

    return ImageSet(images=[p for p, _ in pairs], labels=np.asarray([y for _, y in pairs], dtype=np.int64),
                    ids=[rel(p) for p, _ in pairs])


def _digest(s: ImageSet) -> str:
    h = hashlib.sha256()
    if isinstance(s.images, np.ndarray):
        h.update(np.ascontiguousarray(s.images).tobytes())
    else:
        for i in s.ids:
            h.update(i.encode())
    h.update(np.asarray(s.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def load(spec: DatasetSpec) -> DatasetBundle:
    if not spec.argument:
        raise DatasetError("torchvision dataset needs a name: torchvision:NAME (e.g. torchvision:CIFAR10)")
    try:
        cls = _dataset_class(spec.argument)
    except ImportError:
        raise DatasetError("torchvision:NAME needs `pip install torchvision`") from None
    from advisor.config import user_dir

    root = Path(spec.option("root") or (user_dir() / "torchvision")).expanduser()
    download = spec.option("download") in (True, "true", "True", "1", 1)
    label = f"torchvision:{cls.__name__}"
    if _has_split(cls):
        train_ds = _open(cls, root, download, "train", label)
        test_ds = _open(cls, root, download, "test", label)
    else:
        train_ds, test_ds = _open(cls, root, download, None, label), None
    train = _to_imageset(train_ds, root, "train")
    test = _to_imageset(test_ds, root, "test") if test_ds is not None else None

    n_classes = int(max(train.labels.max(), test.labels.max() if test is not None and len(test) else 0)) + 1
    classes = getattr(train_ds, "classes", None)
    class_names = [str(c) for c in classes] if classes else [str(i) for i in range(n_classes)]
    class_names = classnames_option(spec, class_names, label)
    templates = templates_option(spec, [DEFAULT_TEMPLATE])
    fingerprint = stable_hash({
        "torchvision": cls.__name__,
        "train": _digest(train),
        "test": _digest(test) if test is not None else None,
        "classes": class_names,
        "templates": templates,
    })
    return DatasetBundle(
        name=spec.option("name") or label,
        class_names=class_names,
        templates=templates,
        train=train,
        test=test,
        fingerprint=fingerprint,
        domain=domain_option(spec),
        description=f"torchvision {cls.__name__} in {root}",
    )


@hookimpl
def register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSource(
            name="torchvision",
            load=load,
            description="torchvision:NAME - CIFAR10, CIFAR100, MNIST, EuroSAT ... (downloads only with --download)",
            prefix=True,
            offline=False,
            needs="network for the first download (--download)",
            origin="torchvision.datasets (downloaded from each dataset's own site)",
            options=("root", "download", "classnames", "templates", "name", "domain"),
        )
    )
