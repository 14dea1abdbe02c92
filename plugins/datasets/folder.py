"""``folder:PATH``: an ImageFolder tree, one sub-folder per class.

    PATH/cat/001.jpg                 PATH/train/cat/001.jpg      (a source-defined split:
    PATH/dog/xyz.png         or      PATH/test/cat/104.jpg        train/ plus test/ or val/)
    PATH/classnames.json (optional)  PATH/templates.json (optional)

Class names are the folder names with ``_`` shown as a space, unless a classnames JSON file
(option ``classnames``, or ``PATH/classnames.json``) gives them: a list (matched to folder names,
or, when no folder name matches, taken in sorted folder order) or a ``{folder: name}`` object.
Prompt templates come from option ``templates`` (a JSON file or a literal ``"... {} ..."``),
``PATH/templates.json``, or default to ``"a photo of a {}."``. Other options: ``name`` (the
dataset name in the history; default ``folder:<basename>``) and ``domain`` (comma-separated tags).
Any other ``-O`` key is refused.

Symbolic links: a linked image file is read; a linked folder is followed once, never into a
folder already walked (a link back to a parent, a loop, would otherwise repeat the images until
the path grows too long); a link that points nowhere is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from advisor.atomic import os_reason, short_path
from advisor.hookspecs import hookimpl
from advisor.data import DEFAULT_TEMPLATE, IMAGE_EXTENSIONS, nfc, read_classnames, read_templates
from advisor.errors import DatasetError
from advisor.specs import DatasetBundle, DatasetSource, DatasetSpec, ImageSet, stable_hash

SPLIT_DIRS = ("test", "val", "valid", "validation")
OPTIONS = ("classnames", "templates", "name", "domain")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def _holds(folder: str, path: str) -> bool:
    """Whether the real path ``folder`` is the real path ``path`` or a folder above it: a link
    to it from inside ``path`` is a loop."""
    return folder == path or path.startswith(folder.rstrip(os.sep) + os.sep)


def _images_under(path: Path, walked: set[str], top: str = "") -> list[Path]:
    """Image files anywhere below ``path`` (ImageFolder searches recursively), sorted. Linked
    folders are followed unless they resolve to a folder in ``walked`` (the folders walked so
    far, updated here) or to ``top`` or a folder above it: a loop is walked once. Dangling links
    are skipped with a warning."""
    found = []
    walked.add(os.path.realpath(path))
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in walked or (top and _holds(real, top)):
                _warn(f"skipped {short_path(full)}: a link to a folder already part of the dataset (a loop)")
                continue
            walked.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not _is_image(f):
                continue
            p = Path(dirpath) / f
            if not os.path.isfile(p):  # a dangling link (os.walk lists it among the files)
                _warn(f"skipped {short_path(p)}: a link to a file that does not exist")
                continue
            found.append(p)
    return found


def _scan(path: Path) -> dict[str, list[Path]]:
    """folder name -> image files; errors for no class folders and class folders without images."""
    top = os.path.realpath(path)
    classes = []
    for d in _subdirs(path):
        real = os.path.realpath(d)
        if _holds(real, top):
            _warn(f"skipped {short_path(d)}: a link to the dataset folder or one above it (a loop)")
            continue
        classes.append(d)
    walked = {top} | {os.path.realpath(d) for d in classes}
    if not classes:
        if any(_is_image(p.name) for p in path.iterdir() if p.is_file()):
            raise DatasetError(f"folder {path} has images but no class sub-folders (expected {path}/<class>/<image>)")
        raise DatasetError(f"folder {path} is empty (no class sub-folders with images)")
    out: dict[str, list[Path]] = {}
    for d in classes:
        walked.discard(os.path.realpath(d))
        files = _images_under(d, walked, top)
        if not files:
            raise DatasetError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS[:4])} ...)")
        key = nfc(d.name)  # macOS file systems hand out NFD names; classnames files are usually NFC
        if key in out:
            raise DatasetError(
                f"folder {path} has duplicate class names (after Unicode NFC normalisation): two folders named {key!r}"
            )
        out[key] = files
    return out


def class_mapping(folders: list[str], given: list[str] | dict[str, str] | None, source: str) -> tuple[list[str], dict[str, int]]:
    """(class names, folder -> label) from sorted folder names and an optional classnames file."""
    if given is None:
        return [f.replace("_", " ") for f in folders], {f: i for i, f in enumerate(folders)}
    if isinstance(given, dict):
        given = {nfc(k): v for k, v in given.items()}
        keys = list(given)
        for f in folders:
            if f not in given:
                raise DatasetError(f"folder {f!r} is not in the class list {source}")
        for k in keys:
            if k not in folders:
                raise DatasetError(f"class {k!r} of {source} has no images (no folder named {k!r})")
        return [given[f] for f in folders], {f: i for i, f in enumerate(folders)}
    by_name = {nfc(n): i for i, n in enumerate(given)}
    matched = [f for f in folders if f in by_name or f.replace("_", " ") in by_name]
    if matched:
        mapping = {}
        for f in folders:
            i = by_name.get(f, by_name.get(f.replace("_", " ")))
            if i is None:
                raise DatasetError(f"folder {f!r} is not in the class list {source}")
            mapping[f] = i
        missing = sorted(set(range(len(given))) - set(mapping.values()))
        if missing:
            raise DatasetError(f"class {given[missing[0]]!r} of {source} has no images (no folder for it)")
        return list(given), mapping
    if len(given) != len(folders):
        raise DatasetError(
            f"class list {source} has {len(given)} names but there are {len(folders)} class folders, and no name matches a folder"
        )
    return list(given), {f: i for i, f in enumerate(folders)}


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(train dir, test dir or None): a train/ + test/ (or val/) layout is a source split."""
    subs = {p.name: p for p in _subdirs(root)}
    if "train" in subs and _subdirs(subs["train"]) and set(subs) - {"train"} <= set(SPLIT_DIRS):
        test = next((subs[n] for n in SPLIT_DIRS if n in subs), None)
        return subs["train"], test
    return root, None


def domain_option(spec: DatasetSpec) -> tuple[str, ...]:
    d = spec.option("domain")
    if not d:
        return ()
    items = d.split(",") if isinstance(d, str) else list(d)
    return tuple(x.strip() for x in items if x.strip())


def argument_path(spec: DatasetSpec, *, directory: bool) -> Path:
    """The path of ``folder:PATH`` (``directory``) or ``csv:PATH`` (a file), resolved through
    symbolic links, or a one-line DatasetError (cheap: nothing is listed or read): no path, a
    path that does not exist (a dangling link included) or is not of its kind, a path the file
    system refuses (longer than it allows, a permission)."""
    kind, noun = ("folder", "folder") if directory else ("csv", "csv file")
    if not spec.argument:
        raise DatasetError(f"{kind} dataset needs a path: {kind}:PATH")
    path = Path(spec.argument).expanduser()
    try:
        if not path.exists():
            raise DatasetError(f"{noun} {short_path(path)} does not exist")
        if not (path.is_dir() if directory else path.is_file()):
            raise DatasetError(f"{kind}:{short_path(path)} is not a {'directory' if directory else 'file'}")
        return path.resolve()
    except OSError as exc:
        raise DatasetError(f"{noun} {short_path(path)} cannot be read: {os_reason(exc)}") from None


def load_from_path(spec: DatasetSpec, load: Callable[[DatasetSpec, Path], DatasetBundle], *,
                   directory: bool) -> DatasetBundle:
    """``load(spec, path)`` on ``argument_path``'s path; an OSError while reading (a listed image
    that cannot be read, a file that vanished while listing, the csv table itself) becomes one
    line naming the file and the dataset."""
    path = argument_path(spec, directory=directory)
    try:
        return load(spec, path)
    except OSError as exc:
        where = short_path(getattr(exc, "filename", None) or path)
        within = f"in folder {short_path(path)}" if directory else f"(csv {short_path(path)})"
        raise DatasetError(f"cannot read {where} {within}: {os_reason(exc)}") from None


def check(spec: DatasetSpec) -> Path:
    """The dataset folder, or a one-line DatasetError (cheap: no file is listed)."""
    return argument_path(spec, directory=True)


def load(spec: DatasetSpec) -> DatasetBundle:
    return load_from_path(spec, _load, directory=True)


def _load(spec: DatasetSpec, root: Path) -> DatasetBundle:
    train_dir, test_dir = _layout(root)
    train_files = _scan(train_dir)
    test_files = _scan(test_dir) if test_dir is not None else None

    cn_path = spec.option("classnames") or (root / "classnames.json" if (root / "classnames.json").is_file() else None)
    given = read_classnames(cn_path) if cn_path else None
    class_names, mapping = class_mapping(list(train_files), given, str(cn_path))
    tp = spec.option("templates") or (root / "templates.json" if (root / "templates.json").is_file() else None)
    templates = read_templates(tp) if tp else [DEFAULT_TEMPLATE]

    h = hashlib.sha256()

    def imageset(files: dict[str, list[Path]], part: str) -> ImageSet:
        paths, labels, ids = [], [], []
        for folder, items in files.items():
            if folder not in mapping:
                raise DatasetError(f"{part} folder {folder!r} is not a class of the training folders")
            for p in items:
                rel = p.relative_to(root).as_posix()
                paths.append(str(p))
                labels.append(mapping[folder])
                ids.append(rel)
                h.update(f"{rel}\t{p.stat().st_size}\t{mapping[folder]}\n".encode())
        return ImageSet(images=paths, labels=np.asarray(labels, dtype=np.int64), ids=ids)

    train = imageset(train_files, "train")
    test = imageset(test_files, "test") if test_files is not None else None
    fingerprint = stable_hash({"files": h.hexdigest(), "classes": class_names, "templates": templates})
    return DatasetBundle(
        name=spec.option("name") or f"folder:{root.name}",
        class_names=class_names,
        templates=templates,
        train=train,
        test=test,
        fingerprint=fingerprint,
        domain=domain_option(spec),
        description=f"image folder {root}",
    )


@hookimpl
def register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSource(
            name="folder",
            load=load,
            description="folder:PATH - one sub-folder of images per class (ImageFolder layout)",
            prefix=True,
            offline=True,
            origin="your image files",
            options=OPTIONS,
            check=check,
        )
    )
