"""Write a file so no reader ever sees half of it: a temporary file in the same folder, flushed
and fsynced, then renamed over the target (``os.replace`` is atomic on POSIX and Windows).

The file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it
replaces, or ``0o666`` less the umask for a new one (``mkstemp`` alone would make it 0600). A
symbolic link is written through (the link stays, its target is replaced). A target that exists
but is not a regular file (``/dev/stdout``, a FIFO, ``/dev/full``) is written directly, as
``open`` would, never renamed over: a device node is never replaced by a file. A directory is
refused. Every failure of the file system (a missing folder, a full disk, a name too long) is a
``FileWriteError``: one line naming the file, and still an ``OSError`` for callers that catch
those.

``npz_cached`` reads an ``.npz`` cache file, or builds its arrays and writes it this way.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Sequence, TypeVar

from .errors import AdvisorError

T = TypeVar("T")


class FileWriteError(AdvisorError, OSError):
    """A file could not be written: one line naming the file and the reason."""


def short_path(path: str | os.PathLike[str], limit: int = 120) -> str:
    """``path`` for a one-line message: a path longer than ``limit`` characters is elided in the
    middle (a 5,000-character path would otherwise be the whole message)."""
    text = os.fspath(path)
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return f"{text[:keep]}...{text[-keep:]} ({len(text)} characters)"


def os_reason(exc: OSError) -> str:
    """The reason of an OS error in words, without the errno prefix and the file name."""
    if exc.errno == errno.ENAMETOOLONG:
        return "the path is longer than the file system allows"
    return exc.strerror or str(exc) or type(exc).__name__


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask both sets and gets; not thread-safe)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(existing: os.stat_result | None = None) -> int:
    """The permission bits ``open()`` would leave: the replaced file's, else 0o666 less the umask."""
    if existing is not None:
        return stat.S_IMODE(existing.st_mode)
    return 0o666 & ~_umask()


def _target(path: str | os.PathLike[str]) -> tuple[Path, os.stat_result | None]:
    """The file to write (through symbolic links) and its current status (None: absent)."""
    target = Path(path)
    shown = short_path(target)
    try:
        if target.is_symlink():
            target = Path(os.path.realpath(target))
        st: os.stat_result | None = target.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise FileWriteError(f"cannot write {shown}: {os_reason(exc)}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FileWriteError(f"cannot write {shown}: it is a directory")
    if st is None:
        parent = target.parent
        try:
            parent_ok = parent.is_dir()
        except OSError as exc:
            raise FileWriteError(f"cannot write {shown}: {os_reason(exc)}") from None
        if not parent_ok:
            raise FileWriteError(f"cannot write {shown}: directory {short_path(parent)} does not exist")
    return target, st


def check_target(path: str | os.PathLike[str]) -> Path:
    """Refuse, as ``atomic_write`` would, a target that is a directory, lies in a folder that
    does not exist, or has a name too long; for commands that check their output before the
    expensive work. Returns the file that would be written."""
    return _target(path)[0]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], *, binary: bool = False,
                 fsync: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path`` (see the
    module docstring for permissions, links and special files). Returns the path written."""
    target, st = _target(path)
    shown = short_path(path)
    mode = "wb" if binary else "w"
    encoding = {} if binary else {"encoding": "utf-8"}
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:  # a device, FIFO or socket: write it as open() would; renaming over it would replace it
            with open(target, mode, **encoding) as f:
                write(f)
        except OSError as exc:
            raise FileWriteError(f"cannot write {shown}: {os_reason(exc)}") from None
        return target
    try:
        replace_file(target, st, write, binary=binary, fsync=fsync)
    except FileWriteError:
        raise
    except OSError as exc:
        raise FileWriteError(f"cannot write {shown}: {os_reason(exc)}") from None
    return target


def replace_file(target: Path, existing: os.stat_result | None, write: Callable[[IO[Any]], T], *,
                 binary: bool = False, newline: str | None = None, fsync: bool = True, prefix: int = 200) -> T:
    """The rename step alone: ``write(f)`` on a temporary file beside the regular file ``target``
    (``existing``: its status, None when absent), given ``target``'s permissions (``new_file_mode``),
    flushed, fsynced, then renamed over it. Returns what ``write`` returns. An OSError propagates
    (the caller names the file) and the temporary file is removed; ``target`` is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:prefix]}.", suffix=".tmp", dir=target.parent)
    try:
        text = {} if binary else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(fd, "wb" if binary else "w", **text) as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), new_file_mode(existing))
            result = write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def npz_cached(path: str | os.PathLike[str], keys: Sequence[str], build: Callable[[], Sequence[Any]]) -> tuple[Any, ...]:
    """The arrays ``keys`` of the ``.npz`` cache file ``path``; when it is absent or damaged,
    ``build()``'s arrays (one per key, in order), then written to ``path`` through
    ``atomic_write`` (folder made, no fsync: concurrent processes never read half a file, and a
    file a crash truncated is rebuilt). The write is best effort: a cache that cannot be written
    only costs the next call the build again. No pickles are ever loaded."""
    import zipfile

    import numpy as np

    target = Path(path)
    if target.is_file():
        try:
            with np.load(target, allow_pickle=False) as z:
                return tuple(z[k] for k in keys)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache file (a truncated zip included) is rebuilt below
    arrays = tuple(build())
    if len(arrays) != len(keys):
        raise ValueError(f"npz_cached: build() gave {len(arrays)} arrays for {len(keys)} keys")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: np.savez(f, **dict(zip(keys, arrays))), binary=True, fsync=False)
    except OSError:
        pass  # FileWriteError included
    return arrays
