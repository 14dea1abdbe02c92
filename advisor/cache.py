"""On-disk cache of embeddings: one ``.npz`` per (model, dataset split, transform) key.

Files are embeddings files (``advisor.embeddings_file`` owns their layout: plain numpy archives
read with ``allow_pickle=False``). Each file carries its own metadata as a JSON string, so a file
is self-describing; ``index.json`` is a convenience list
for ``advisor cache list`` and is rebuilt from the files when it is missing or stale.

The key is a hash of everything that changes the arrays: model fingerprint (name, pretrained,
weights hash, working image size), dataset fingerprint, split hash, transform, precision,
prompt templates and class names, and whether per-layer states were kept. The key is also
stored inside the file (``meta_json``'s ``cache_key``) and compared on load: a file copied or
renamed over another key's file is a miss, not a wrong hit.

The cache is an optimisation: a cache folder that cannot be created, or a file that cannot be
written (a full disk), is one warning line naming the file, and the command goes on without
caching.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


from . import embeddings_file
from .atomic import atomic_write, os_reason, short_path
from .config import cache_dir
from .errors import ConfigError, InputFileError
from .specs import Embeddings, stable_hash

#: Bump when the layout of cached arrays or the embedding arithmetic changes.
CACHE_VERSION = "1"
SUBDIR = "embeddings"
INDEX = "index.json"


class CacheUnavailable(ConfigError):
    """The cache folder cannot be created or used (``ADVISOR_CACHE`` names a file, a read-only or
    full disk): an error for the ``cache`` commands, a warning for embedding."""


def embeddings_dir() -> Path:
    max_bytes()  # a bad ADVISOR_CACHE_MAX_GB is refused at the first cache lookup, before embedding
    path = None
    try:
        path = cache_dir() / SUBDIR
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = short_path(path if path is not None else os.environ.get("ADVISOR_CACHE") or "the cache folder")
        raise CacheUnavailable(f"cannot use the embedding cache folder {where}: {os_reason(exc)}") from None
    return path


_warned: set[str] = set()


def _warn(message: str) -> None:
    """One warning line per distinct problem and process."""
    if message not in _warned:
        _warned.add(message)
        print(f"Warning: {message}; going on without the embedding cache", file=sys.stderr)


def make_key(parts: dict[str, Any]) -> str:
    """A 24-hex-digit key for the parts that determine the arrays."""
    return stable_hash({"cache_version": CACHE_VERSION, "format": embeddings_file.FORMAT_VERSION, **parts}, n=24)


def path_for(key: str) -> Path:
    return embeddings_dir() / f"{key}.npz"


def save(key: str, emb: Embeddings) -> Path | None:
    """Write ``emb`` under ``key`` atomically (``advisor.embeddings_file`` owns the layout), with
    the key inside the file. A cache that cannot be written is a warning and None."""
    limit = max_bytes()
    stamped = dataclasses.replace(emb, meta={**(emb.meta or {}), "cache_key": key})
    try:
        target = embeddings_file.write(stamped, path_for(key), fsync=False)
        size = target.stat().st_size
    except (OSError, CacheUnavailable) as exc:
        _warn(str(exc))
        return None
    _index_add(key, stamped.meta, size)
    try:
        evict(limit, keep=key)
    except OSError:
        pass  # eviction is tidying: the next write tries again
    return target


def load(key: str) -> Embeddings | None:
    """The cached embeddings for ``key``, or None when absent, unreadable or made for another
    key (a broken or misplaced file is removed so it is recomputed)."""
    max_bytes()
    try:
        path = path_for(key)
        if not path.is_file():
            return None
    except CacheUnavailable as exc:
        _warn(str(exc))
        return None
    try:
        emb = embeddings_file.read(path)
    except (OSError, ValueError, KeyError, InputFileError):
        path.unlink(missing_ok=True)
        return None
    if (emb.meta or {}).get("cache_key") != key:  # another key's arrays under this name
        path.unlink(missing_ok=True)
        return None
    _mark_used(path)
    return emb


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
    atomic_write(_index_path(), lambda f: json.dump(index, f, indent=1, sort_keys=True), fsync=False)


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
                index[key] = _summary(embeddings_file.read(p).meta, p.stat().st_size)
            except (OSError, ValueError, KeyError, InputFileError):
                continue
            changed = True
    if changed:
        try:
            _write_index(index)
        except OSError:
            pass
    out = []
    for k, v in sorted(index.items(), key=lambda kv: str(kv[1].get("created"))):
        try:
            used = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(files[k].stat().st_mtime))
        except OSError:
            used = None
        out.append({"key": k, **v, "last_used": used})
    return out


def clear(older_than: float | None = None) -> tuple[int, int]:
    """Delete cached embeddings: all of them, or (``older_than`` seconds) those not used for that
    long (last use = the file's modification time, refreshed on every cache hit). Returns
    (files removed, bytes freed)."""
    folder = embeddings_dir()
    cutoff = None if older_than is None else time.time() - float(older_than)
    n = freed = 0
    for p in list(folder.glob("*.npz")) + list(folder.glob(".*.npz")) + list(folder.glob(".*.tmp")):  # + crash leftovers
        try:
            st = p.stat()
            if cutoff is not None and st.st_mtime >= cutoff:
                continue
            p.unlink()
        except FileNotFoundError:
            continue
        n += 1
        freed += st.st_size
    if older_than is None:
        _index_path().unlink(missing_ok=True)
    else:
        _forget_missing()
    return n, freed


# ------------------------------------------------------------------------------ size cap

#: Environment variable: the cache's size cap in gigabytes (10^9 bytes).
MAX_GB_ENV = "ADVISOR_CACHE_MAX_GB"
#: The cap when the variable is unset: a few hundred embeddings of a large dataset.
DEFAULT_MAX_GB = 20.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def max_bytes() -> int:
    """The size cap (``ADVISOR_CACHE_MAX_GB``, default 20); a bad value is a ConfigError."""
    env = os.environ.get(MAX_GB_ENV)
    if env is None or env.strip() == "":
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gb = float(env)
    except ValueError:
        gb = float("nan")
    if not (gb > 0 and gb < float("inf")):
        raise ConfigError(f"{MAX_GB_ENV}={env!r} is not a positive number of gigabytes")
    return int(gb * 1e9)


def parse_duration(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"1d12h"``, ``"90m"``, ``"30s"``, ``"2w"`` -> seconds."""
    import re

    raw = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", raw)
    if not raw or not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw])|\s+", "", raw):
        raise ConfigError(f"duration {text!r} is not like 7d, 12h, 90m, 30s or 1d12h")
    return float(sum(float(n) * _UNITS[u] for n, u in parts))


def _mark_used(path: Path) -> None:
    """Record a cache hit as the file's modification time: the eviction order (LRU)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only shared cache still serves hits


def evict(limit: int, keep: str | None = None) -> tuple[int, int]:
    """Delete least-recently-used files until the cache holds at most ``limit`` bytes (never
    ``keep``, the file just written). Returns (files removed, bytes freed)."""
    found = []
    for p in embeddings_dir().glob("*.npz"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        found.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in found)
    n = freed = 0
    for _, size, p in sorted(found, key=lambda t: t[0]):
        if total <= limit:
            break
        if p.stem == keep:
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        total -= size
        n += 1
        freed += size
    if n:
        _forget_missing()
    return n, freed


def usage() -> tuple[int, int]:
    """(files, bytes) currently in the embedding cache."""
    sizes = []
    for p in embeddings_dir().glob("*.npz"):
        try:
            sizes.append(p.stat().st_size)
        except FileNotFoundError:
            pass
    return len(sizes), int(sum(sizes))


def _forget_missing() -> None:
    index = _read_index()
    present = {p.stem for p in embeddings_dir().glob("*.npz")}
    kept = {k: v for k, v in index.items() if k in present}
    if len(kept) != len(index):
        try:
            _write_index(kept)
        except OSError:
            pass
