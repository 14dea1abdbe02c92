"""The embeddings file: the one ``.npz`` layout that the cache, ``advisor embed -o`` and
``advisor signals --from-embeddings`` write and read.

Plain numpy archives, read with ``allow_pickle=False`` (a file shared on a cluster must never
execute anything). Arrays:

- ``image`` (N,d), ``text`` (C,d), ``labels`` (N,) integers in [0,C): required;
- ``class_names`` (C,) strings, ``paired_text`` (N,d), ``meta_json`` (a JSON object): optional;
- per-layer states ``image_layer_000`` ... (N, w_l) and ``text_layer_000`` ... (M, w'_l), one
  array per layer because CNN towers change width between layers. Files from other tools may
  instead hold stacked ``image_layers`` (L,N,w) / ``text_layers`` (L,M,w); the reader takes both;
- ``text_layer_rows``: what the M text-layer rows are (``Embeddings.text_layer_rows``:
  prompts, classes, images or unpaired). A file with text layers that does not say is read as
  ``unpaired``, the way MIR's official code treats text it is given; the count of rows is never
  used to guess.

``read`` validates everything a metric relies on and raises ``InputFileError`` with a one-line
message naming the file and the array.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write, os_reason, short_path
from .errors import InputFileError
from .errors import one_line as _one_line
from .specs import Embeddings

#: Bump when the layout changes (the cache key includes it).
FORMAT_VERSION = "2"
TEXT_LAYER_ROWS = ("prompts", "classes", "images", "unpaired")
REQUIRED = ("image", "text", "labels")


# ---------------------------------------------------------------------------------- write


def to_arrays(emb: Embeddings) -> dict[str, np.ndarray]:
    """The arrays ``write`` stores for ``emb``."""
    arrays: dict[str, np.ndarray] = {
        "image": np.asarray(emb.image, dtype=np.float32),
        "text": np.asarray(emb.text, dtype=np.float32),
        "labels": np.asarray(emb.labels, dtype=np.int64),
        "class_names": np.asarray(list(emb.class_names), dtype=str),
        "meta_json": np.asarray(json.dumps(emb.meta, default=str)),
        "format_version": np.asarray(FORMAT_VERSION),
    }
    if emb.paired_text is not None:
        arrays["paired_text"] = np.asarray(emb.paired_text, dtype=np.float32)
    if emb.image_layers and emb.text_layers:
        for prefix, layers in (("image_layer_", emb.image_layers), ("text_layer_", emb.text_layers)):
            for i, a in enumerate(layers):
                arrays[f"{prefix}{i:03d}"] = np.asarray(a, dtype=np.float32)
        arrays["text_layer_rows"] = np.asarray(_rows_kind(emb.text_layer_rows, "Embeddings.text_layer_rows"))
    return arrays


def write(emb: Embeddings, path: str | os.PathLike, *, fsync: bool = True) -> Path:
    """Write ``emb`` to ``path`` atomically (``advisor.atomic``: a temporary file in the same
    folder, then rename; the mode a plain ``open`` gives). A failure is a one-line
    ``FileWriteError`` naming the file."""
    arrays = to_arrays(emb)
    return atomic_write(path, lambda f: np.savez(f, **arrays), binary=True, fsync=fsync)


# ---------------------------------------------------------------------------------- read


def _rows_kind(value: str, where: str) -> str:
    if value not in TEXT_LAYER_ROWS:
        raise InputFileError(f"{where} is {value!r}; expected one of {', '.join(TEXT_LAYER_ROWS)}")
    return value


def _finite_rows(name: str, arr: np.ndarray, path: str) -> None:
    flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 2 else arr
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputFileError(f"{path}: '{name}' has {int(bad.sum())} row(s) with NaN or inf (first: row {first})")


def _numeric(name: str, arr: np.ndarray, path: str, ndim: int, shape_hint: str) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise InputFileError(f"{path}: '{name}' must be numeric, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise InputFileError(f"{path}: '{name}' must have shape {shape_hint}, got {arr.shape}")
    return arr


#: The largest arrays a file may declare: rows (images, classes, prompts) and columns (the
#: embedding or layer width; the widest CLIP towers are a few thousand). Checked from the npy
#: headers, before anything is read, together with the machine's memory.
MAX_ROWS = 10_000_000
MAX_WIDTH = 16_384


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _read_header(f: Any) -> tuple[tuple[int, ...], np.dtype] | None:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        reader = getattr(fmt, "_read_array_header", None)
        if reader is None:
            return None
        shape, _, dtype = reader(f, version)
    return tuple(int(x) for x in shape), np.dtype(dtype)


def declared_shapes(p: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of each array of an ``.npz``, from the npy headers alone (nothing
    is decompressed beyond them); {} when the file is not a zip archive (``np.load`` says why)."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                try:
                    with zf.open(info) as f:
                        found = _read_header(f)
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError, SyntaxError) as exc:
                    raise InputFileError(f"{p}: cannot read the header of '{name}' ({_one_line(exc)})") from None
                if found is not None:
                    out[name] = found
    except (zipfile.BadZipFile, EOFError):
        return {}
    except OSError as exc:
        raise InputFileError(f"{short_path(p)}: cannot read ({os_reason(exc)})") from None
    return out


def check_sizes(p: str, shapes: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Refuse, in one line, arrays beyond ``MAX_ROWS`` / ``MAX_WIDTH`` or beyond this machine's
    memory, before they are allocated."""
    total = 0
    for name, (shape, dtype) in shapes.items():
        if dtype.kind in "fiub" and len(shape) >= 2 and shape[-1] > MAX_WIDTH:
            raise InputFileError(f"{p}: '{name}' has shape {shape}: {shape[-1]} columns, more than the "
                                 f"{MAX_WIDTH} an embedding may have")
        rows = shape[-2] if len(shape) >= 2 else shape[0] if shape else 1
        if rows > MAX_ROWS:
            raise InputFileError(f"{p}: '{name}' has shape {shape}: {rows} rows, more than the {MAX_ROWS} "
                                 "the signals can use")
        count = 1
        for x in shape:
            count *= x
        total += count * max(dtype.itemsize, 1)
    memory = _memory_bytes()
    if memory is not None and total > memory:
        raise InputFileError(f"{p}: its arrays would take {total / 2**30:.1f} GiB, more than this machine's "
                             f"{memory / 2**30:.1f} GiB of memory")


def _load_arrays(p: str) -> dict[str, np.ndarray]:
    try:
        found = Path(p).is_file()
    except OSError as exc:
        raise InputFileError(f"{short_path(p)}: {os_reason(exc)}") from None
    if not found:
        raise InputFileError(f"{short_path(p)}: no such file")
    check_sizes(p, declared_shapes(p))
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputFileError(f"{p}: not a readable .npz file ({_one_line(exc)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputFileError(f"{p}: not an .npz archive (a single array; save with numpy.savez)")
    with data:
        try:
            return {k: data[k] for k in data.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputFileError(f"{p}: cannot read arrays ({_one_line(exc)})") from None


def _labels(arrays: dict[str, np.ndarray], n: int, c: int, p: str) -> np.ndarray:
    labels = arrays["labels"]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputFileError(f"{p}: 'labels' must have shape ({n},) to match 'image', got {labels.shape}")
    if labels.dtype.kind in "iu":
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    else:
        raise InputFileError(f"{p}: 'labels' must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputFileError(f"{p}: label {labels[i]} at row {i} is out of range [0, {c}) ({int(bad.sum())} bad)")
    if len(np.unique(labels)) < 2:
        raise InputFileError(f"{p}: all labels are {labels[0]}; need at least 2 classes")
    return labels


def _layer_list(arrays: dict[str, np.ndarray], tower: str, p: str) -> list[np.ndarray] | None:
    """Per-layer arrays ``<tower>_layer_NNN`` (this format; ``<tower>_layers_N`` from version 1),
    else a stacked ``<tower>_layers`` (L, rows, w)."""
    per_layer = sorted(
        (int(k.rsplit("_", 1)[1]), k) for k in arrays
        if k.rsplit("_", 1)[0] in (f"{tower}_layer", f"{tower}_layers") and k.rsplit("_", 1)[1].isdigit()
    )
    if per_layer:
        out = [_numeric(k, arrays[k], p, 2, "(rows,w)") for _, k in per_layer]
    elif f"{tower}_layers" in arrays:
        key = f"{tower}_layers"
        stacked = _numeric(key, arrays[key], p, 3, "(L,N,w)" if tower == "image" else "(L,M,w)")
        if stacked.shape[0] == 0:
            raise InputFileError(f"{p}: '{key}' is too small, shape {stacked.shape}")
        out = [np.asarray(a) for a in stacked]
    else:
        return None
    for i, a in enumerate(out):
        if a.shape[0] < 2 or a.shape[1] == 0:
            raise InputFileError(f"{p}: {tower} layer {i} is too small, shape {a.shape}")
        _finite_rows(f"{tower} layer {i}", a, p)
    return out


def read(path: str | os.PathLike) -> Embeddings:
    """The Embeddings stored in ``path``, validated; every problem is an InputFileError."""
    p = str(path)
    arrays = _load_arrays(p)
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise InputFileError(f"{p}: missing array(s) {', '.join(repr(m) for m in missing)} "
                             f"(need image (N,d), text (C,d), labels (N,))")
    image = _numeric("image", arrays["image"], p, 2, "(N,d)")
    text = _numeric("text", arrays["text"], p, 2, "(C,d)")
    n, d = image.shape
    c = text.shape[0]
    if n == 0 or d == 0:
        raise InputFileError(f"{p}: 'image' is empty, shape {image.shape}")
    if text.shape[1] != d:
        raise InputFileError(f"{p}: 'text' has width {text.shape[1]} but 'image' has width {d}")
    if c < 2:
        raise InputFileError(f"{p}: 'text' has {c} class row(s); need at least 2 classes")
    labels = _labels(arrays, n, c, p)
    _finite_rows("image", image, p)
    _finite_rows("text", text, p)
    for name, arr in (("image", image), ("text", text)):
        zero = np.flatnonzero(~np.any(arr != 0, axis=1))
        if len(zero):
            raise InputFileError(f"{p}: '{name}' row {int(zero[0])} is all zeros (cannot be normalised)")

    paired = None
    if "paired_text" in arrays:
        paired = _numeric("paired_text", arrays["paired_text"], p, 2, f"({n},{d})")
        if paired.shape != (n, d):
            raise InputFileError(f"{p}: 'paired_text' must have shape ({n},{d}), got {paired.shape}")
        _finite_rows("paired_text", paired, p)

    image_layers = _layer_list(arrays, "image", p)
    text_layers = _layer_list(arrays, "text", p)
    if (image_layers is None) != (text_layers is None):
        given, other = ("image_layers", "text_layers") if image_layers is not None else ("text_layers", "image_layers")
        raise InputFileError(f"{p}: '{given}' given without '{other}'")
    if image_layers is not None:
        bad = [i for i, a in enumerate(image_layers) if a.shape[0] != n]
        if bad:
            raise InputFileError(f"{p}: image layer {bad[0]} has {image_layers[bad[0]].shape[0]} rows but 'image' has {n}")
    rows = "unpaired"
    if "text_layer_rows" in arrays:
        rows = _rows_kind(str(arrays["text_layer_rows"]), f"{p}: 'text_layer_rows'")
    if text_layers is not None:
        _check_rows(rows, text_layers, n, c, p)

    if "class_names" in arrays:
        names = [str(s) for s in np.asarray(arrays["class_names"]).reshape(-1)]
        if len(names) != c:
            raise InputFileError(f"{p}: 'class_names' has {len(names)} entries but 'text' has {c} rows")
    else:
        names = [f"class_{i}" for i in range(c)]

    meta: dict[str, Any] = {}
    if "meta_json" in arrays:  # informative only, never required
        try:
            loaded = json.loads(str(arrays["meta_json"]))
            meta = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            meta = {}
    meta.update({"source": p, "n_images": n, "n_classes": c, "embed_dim": d})
    return Embeddings(image=image, text=text, labels=labels, class_names=names, image_layers=image_layers,
                      text_layers=text_layers, paired_text=paired, meta=meta, text_layer_rows=rows)


def _check_rows(rows: str, text_layers: list[np.ndarray], n: int, c: int, p: str) -> None:
    """The stated meaning of the text-layer rows must fit their count."""
    for i, a in enumerate(text_layers):
        m = a.shape[0]
        if rows == "classes" and m != c:
            raise InputFileError(f"{p}: text layer {i} has {m} rows, but 'text_layer_rows' says one per class ({c})")
        if rows == "images" and m != n:
            raise InputFileError(f"{p}: text layer {i} has {m} rows, but 'text_layer_rows' says one per image ({n})")
        if rows == "prompts" and m % c:
            raise InputFileError(f"{p}: text layer {i} has {m} rows, not a whole number of templates x {c} classes")
