"""On-disk cache of embeddings: one ``.npz`` per (model, dataset split, transform) key.

Files are plain numpy archives written with ``np.savez`` and read with ``allow_pickle=False``
(a cache directory shared on a cluster must never execute anything). Each file carries its own
metadata as a JSON string, so a file is self-describing; ``index.json`` is a convenience list
for ``advisor cache list`` and is rebuilt from the files when it is missing or stale.

The key is a hash of everything that changes the arrays: model fingerprint (name, pretrained,
weights hash, working image size), dataset fingerprint, split hash, transform, precision,
prompt templates and class names, and whether per-layer states were kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import cache_dir
from .errors import InputFileError
from .specs import Embeddings, stable_hash

#: Bump when the layout of cached arrays or the embedding arithmetic changes.
CACHE_VERSION = "1"
SUBDIR = "embeddings"
INDEX = "index.json"


def embeddings_dir() -> Path:
    path = cache_dir() / SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_key(parts: dict[str, Any]) -> str:
    """A 24-hex-digit key for the parts that determine the arrays."""
    return stable_hash({"cache_version": CACHE_VERSION, **parts}, n=24)


def path_for(key: str) -> Path:
    return embeddings_dir() / f"{key}.npz"


def base_arrays(emb: Embeddings) -> dict[str, np.ndarray]:
    """The plain arrays of an Embeddings (no layers): shared by the cache and ``advisor embed -o``."""
    arrays: dict[str, np.ndarray] = {
        "image": np.asarray(emb.image, dtype=np.float32),
        "text": np.asarray(emb.text, dtype=np.float32),
        "labels": np.asarray(emb.labels, dtype=np.int64),
        "class_names": np.asarray(list(emb.class_names), dtype=str),
        "meta_json": np.asarray(json.dumps(emb.meta, default=str)),
    }
    if emb.paired_text is not None:
        arrays["paired_text"] = np.asarray(emb.paired_text, dtype=np.float32)
    return arrays


def save(key: str, emb: Embeddings) -> Path:
    """Write ``emb`` under ``key`` atomically (write to a temp file, then rename)."""
    arrays = base_arrays(emb)
    for prefix, layers in (("image_layer_", emb.image_layers), ("text_layer_", emb.text_layers)):
        for i, a in enumerate(layers or []):
            arrays[f"{prefix}{i:03d}"] = np.asarray(a, dtype=np.float32)
    target = path_for(key)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _index_add(key, emb.meta, target.stat().st_size)
    return target


def load(key: str) -> Embeddings | None:
    """The cached embeddings for ``key``, or None when absent or unreadable (a broken file is
    removed so it is recomputed)."""
    path = path_for(key)
    if not path.is_file():
        return None
    try:
        return read_npz(path)
    except (OSError, ValueError, KeyError, InputFileError):
        path.unlink(missing_ok=True)
        return None


def read_npz(path: str | os.PathLike) -> Embeddings:
    """Read a cache file (never unpickles)."""
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        meta = json.loads(str(z["meta_json"])) if "meta_json" in names else {}
        image_layers = [z[k] for k in sorted(n for n in names if n.startswith("image_layer_"))] or None
        text_layers = [z[k] for k in sorted(n for n in names if n.startswith("text_layer_"))] or None
        return Embeddings(
            image=z["image"],
            text=z["text"],
            labels=z["labels"],
            class_names=[str(c) for c in z["class_names"]],
            image_layers=image_layers,
            text_layers=text_layers,
            paired_text=z["paired_text"] if "paired_text" in names else None,
            meta=meta,
        )


# ------------------------------------------------------------------------------ index


def _index_path() -> Path:
    return embeddings_dir() / INDEX


def _read_index() -> dict[str, dict[str, Any]]:
    p = _index_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_index(index: dict[str, dict[str, Any]]) -> None:
    p = _index_path()
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".json", dir=p.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    os.replace(tmp, p)


def _summary(meta: dict[str, Any], size: int) -> dict[str, Any]:
    return {
        "model": meta.get("model"),
        "model_identity": meta.get("model_identity"),
        "dataset": meta.get("dataset"),
        "split": meta.get("split"),
        "shots": meta.get("shots"),
        "seed": meta.get("seed"),
        "n": meta.get("n"),
        "d": meta.get("d"),
        "with_layers": meta.get("with_layers"),
        "image_size": meta.get("image_size"),
        "bytes": size,
        "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _index_add(key: str, meta: dict[str, Any], size: int) -> None:
    index = _read_index()
    index[key] = _summary(meta, size)
    try:
        _write_index(index)
    except OSError:
        pass  # the index is a convenience; the npz files are the truth


def entries() -> list[dict[str, Any]]:
    """One row per cached file (the index, reconciled with the files actually present)."""
    index = _read_index()
    files = {p.stem: p for p in embeddings_dir().glob("*.npz")}
    changed = False
    for key in list(index):
        if key not in files:
            del index[key]
            changed = True
    for key, p in files.items():
        if key not in index:
            try:
                index[key] = _summary(read_npz(p).meta, p.stat().st_size)
            except (OSError, ValueError, KeyError):
                continue
            changed = True
    if changed:
        try:
            _write_index(index)
        except OSError:
            pass
    return [{"key": k, **v} for k, v in sorted(index.items(), key=lambda kv: str(kv[1].get("created")))]


def clear() -> tuple[int, int]:
    """Delete every cached embedding; returns (files removed, bytes freed)."""
    n = freed = 0
    folder = embeddings_dir()
    for p in list(folder.glob("*.npz")) + list(folder.glob(".*.npz")):
        try:
            freed += p.stat().st_size
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    _index_path().unlink(missing_ok=True)
    return n, freed
