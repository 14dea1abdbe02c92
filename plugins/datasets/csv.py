"""``csv:PATH``: a table with an image-path column and a label column.

    image,label,split
    img/001.jpg,cat,train
    /data/x/104.png,dog,test

Options: ``image_column`` (default: the first of image, path, filepath, file, filename,
image_path present), ``label_column`` (default: label, class, target, category, y),
``split_column`` (default ``split`` when present; values ``train``/``test``), ``classnames``
(JSON list or {label: name}; labels not in it are an error), ``templates``, ``name``, ``domain``.
Relative image paths are resolved against the csv file's directory. Labels are class names or
integer class indices (into the classnames list when one is given); integer labels make the
class list 0..max, which may hold at most ``MAX_CLASSES`` classes. Any other ``-O`` key (a
misspelt ``label_colum``) is refused.
"""

from __future__ import annotations

import csv as _csv
import hashlib
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.data import DEFAULT_TEMPLATE, nfc, read_classnames, templates_option
from advisor.errors import DatasetError
from advisor.specs import DatasetBundle, DatasetSource, DatasetSpec, ImageSet, stable_hash

from .folder import argument_path, domain_option, load_from_path

IMAGE_COLUMNS = ("image", "path", "filepath", "file", "filename", "image_path", "img")
LABEL_COLUMNS = ("label", "class", "target", "category", "y")
TEST_VALUES = {"test", "val", "valid", "validation"}
ASCII_INT = re.compile(r"-?[0-9]+")
OPTIONS = ("image_column", "label_column", "split_column", "classnames", "templates", "name", "domain")
#: The most classes integer labels may make (0..max label): ImageNet-21k has 21,841.
MAX_CLASSES = 100_000


def _pick_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], option: str, path: Path) -> str:
    cols = ", ".join(header)
    if wanted:
        if wanted not in header:
            raise DatasetError(f"csv {path} has no column {wanted!r} (columns: {cols})")
        return wanted
    lower = {h.lower(): h for h in header}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise DatasetError(f"csv {path} has no {option.split('_')[0]} column (columns: {cols}); set option {option}=NAME")


def _is_int(s: str) -> bool:
    """ASCII integers only: ``str.isdigit`` also accepts "²" (which ``int`` refuses) and "١"
    (which ``int`` reads as 1), and both are names here."""
    return ASCII_INT.fullmatch(s) is not None


def _shown(value: int) -> str:
    """An integer for a one-line message (a 5,000-digit label is shown by its length)."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _labels_to_classes(raw: list[str], given: list[str] | dict[str, str] | None, source: str) -> tuple[list[str], list[int]]:
    """Class names and integer labels from the label column (row numbers are 2-based, as in a spreadsheet)."""
    all_int = all(_is_int(v) for v in raw)
    if given is None:
        if all_int:
            values = [int(v) for v in raw]
            if min(values) < 0:
                raise DatasetError(f"label {min(values)} is negative")
            if max(values) >= MAX_CLASSES:
                row = values.index(max(values)) + 2
                raise DatasetError(f"label {_shown(max(values))} (row {row}) would make {_shown(max(values) + 1)} classes "
                                   f"(0..label), more than {MAX_CLASSES}; use class names or a classnames file")
            return [str(i) for i in range(max(values) + 1)], values
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        return names, [index[v] for v in raw]
    if isinstance(given, dict):
        given = {nfc(k): v for k, v in given.items()}
        keys = list(given)
        index = {k: i for i, k in enumerate(keys)}
        out = []
        for row, v in enumerate(raw, start=2):
            if v not in index:
                raise DatasetError(f"label {v!r} (row {row}) is not in the class list {source}")
            out.append(index[v])
        return [given[k] for k in keys], out
    index = {nfc(n): i for i, n in enumerate(given)}
    use_index = all_int and not all(v in index for v in raw)
    out = []
    for row, v in enumerate(raw, start=2):
        if use_index:
            i = int(v)
            if not 0 <= i < len(given):
                raise DatasetError(f"label {_shown(i)} (row {row}) is not in the class list {source} ({len(given)} classes)")
            out.append(i)
        elif v in index:
            out.append(index[v])
        else:
            raise DatasetError(f"label {v!r} (row {row}) is not in the class list {source}")
    return list(given), out


def check(spec: DatasetSpec) -> Path:
    """The csv file, or a one-line DatasetError (cheap: the file is not read)."""
    return argument_path(spec, directory=False)


def load(spec: DatasetSpec) -> DatasetBundle:
    return load_from_path(spec, _load, directory=False)


def _load(spec: DatasetSpec, path: Path) -> DatasetBundle:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"csv {path} is not UTF-8 text: {exc}") from None
    reader = _csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise DatasetError(f"csv {path} is empty")
    header = [h.strip() for h in header]
    img_col = _pick_column(header, spec.option("image_column"), IMAGE_COLUMNS, "image_column", path)
    lab_col = _pick_column(header, spec.option("label_column"), LABEL_COLUMNS, "label_column", path)
    split_col = spec.option("split_column") or ("split" if "split" in header else None)
    if split_col and split_col not in header:
        raise DatasetError(f"csv {path} has no column {split_col!r} (columns: {', '.join(header)})")
    ci, cl = header.index(img_col), header.index(lab_col)
    cs = header.index(split_col) if split_col else None

    base = path.parent
    paths: list[str] = []
    ids: list[str] = []
    raw_labels: list[str] = []
    is_test: list[bool] = []
    seen: dict[str, int] = {}
    for row, rec in enumerate(reader, start=2):
        if not any(x.strip() for x in rec):
            continue
        if len(rec) < len(header):
            raise DatasetError(f"csv {path} row {row} has {len(rec)} fields, expected {len(header)}")
        value, label = rec[ci].strip(), rec[cl].strip()
        if not value:
            raise DatasetError(f"csv {path} row {row} has no image path")
        if not label:
            raise DatasetError(f"csv {path} row {row} has no label")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise DatasetError(f"image file {p} (csv row {row}) does not exist")
        if value in seen:
            raise DatasetError(f"image {value} is listed twice in {path} (rows {seen[value]} and {row})")
        seen[value] = row
        paths.append(str(p))
        ids.append(value)
        raw_labels.append(nfc(label))
        if cs is not None:
            s = rec[cs].strip().lower()
            if s not in TEST_VALUES | {"train"}:
                raise DatasetError(f"csv {path} row {row}: split {rec[cs]!r} is not train or test")
            is_test.append(s in TEST_VALUES)
    if not paths:
        raise DatasetError(f"csv {path} has no rows")

    cn = spec.option("classnames")
    class_names, labels = _labels_to_classes(raw_labels, read_classnames(cn) if cn else None, str(cn))
    templates = templates_option(spec, [DEFAULT_TEMPLATE])
    lab = np.asarray(labels, dtype=np.int64)
    everything = ImageSet(images=paths, labels=lab, ids=ids)
    if cs is not None and any(is_test):
        mask = np.asarray(is_test)
        train, test = everything.subset(np.flatnonzero(~mask)), everything.subset(np.flatnonzero(mask))
    else:
        train, test = everything, None
    h = hashlib.sha256(text.encode())
    for p in paths:
        h.update(f"{Path(p).stat().st_size}\n".encode())
    return DatasetBundle(
        name=spec.option("name") or f"csv:{path.stem}",
        class_names=class_names,
        templates=templates,
        train=train,
        test=test,
        fingerprint=stable_hash({"csv": h.hexdigest(), "classes": class_names, "templates": templates}),
        domain=domain_option(spec),
        description=f"csv table {path}",
    )


@hookimpl
def register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSource(
            name="csv",
            load=load,
            description="csv:PATH - image path + label columns (options image_column, label_column)",
            prefix=True,
            offline=True,
            origin="your image files, listed in a CSV file",
            options=OPTIONS,
            check=check,
        )
    )
