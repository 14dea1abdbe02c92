"""Where things live and which device to use: user-data directory, cache directory, adapters
directory, and a validated torch device string."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

from .errors import ConfigError

APP_NAME = "advisor"


def _directory(variable: str, default: str) -> Path:
    """The directory ``variable`` names (else ``default``), created if missing; one that cannot
    be (a file is there, the name is too long, no permission) is a one-line ``ConfigError``
    naming the variable."""
    env = os.environ.get(variable)
    path = Path(env).expanduser() if env else Path(default)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():  # mkdir(exist_ok=True) passes a link to a file on some systems
            raise NotADirectoryError(20, "Not a directory")
    except OSError as exc:
        why = "a file is there" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror or str(exc)
        where = f"{variable}={env!r}" if env else f"{path} (set {variable} to use another directory)"
        raise ConfigError(f"{where} cannot be used as a directory: {why}") from None
    return path


def user_dir() -> Path:
    """User data directory (``ADVISOR_HOME`` overrides; tests point it at a tmp dir)."""
    return _directory("ADVISOR_HOME", platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """Cache directory: embeddings and decoded datasets, all of it safe to delete
    (``platformdirs.user_cache_dir``, e.g. ``~/.cache/advisor``; ``ADVISOR_CACHE`` overrides)."""
    return _directory("ADVISOR_CACHE", platformdirs.user_cache_dir(APP_NAME))


#: Suffix of the adapters directory kept beside a SQLite history (``runs.db`` -> ``runs.adapters/``).
ADAPTERS_SUFFIX = ".adapters"


def adapters_dir(history_file: Path | None, override: str | os.PathLike[str] | None = None) -> Path:
    """Where a run's trained adapter goes: ``override`` (``--adapters-dir``) when given, else a
    directory beside the SQLite history it belongs to (``<stem>.adapters/``), else (a server
    database) ``<user data dir>/adapters``. The history stores paths relative to this
    directory, so a history copied together with its adapters directory stays valid.
    Not created here: only a run that writes an adapter creates it."""
    if override is not None and str(override) != "":
        return Path(override).expanduser().absolute()
    if history_file is not None:
        p = Path(history_file).expanduser().absolute()
        return p.with_name(p.stem + ADAPTERS_SUFFIX)
    return user_dir() / "adapters"


def shipped_registry() -> Path | None:
    """The read-only history shipped with the project (``registry.db``).

    Looked up next to the source tree (development / editable installs), then under
    ``<prefix>/share/advisor`` (regular installs). ``ADVISOR_REGISTRY`` overrides; a file it
    names that is not there is a one-line ``ConfigError``.
    """
    env = os.environ.get("ADVISOR_REGISTRY")
    if env:  # named on purpose: a wrong name is an error, not a quiet fall-back to the installed one
        try:
            named = Path(env).expanduser()
            if named.is_file():
                return named
            why = "is a directory" if named.is_dir() else "does not exist"
        except OSError as exc:
            why = f"cannot be read ({exc.strerror or exc})"
        raise ConfigError(f"ADVISOR_REGISTRY={env!r} {why}; it must name a registry.db file (unset it for the "
                          "installed one)")
    candidates = [
        Path(__file__).resolve().parent.parent / "registry.db",
        Path(sys.prefix) / "share" / "advisor" / "registry.db",
    ]
    for c in candidates:
        if c.is_file():
            return c
    return None


def default_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu`` (``ADVISOR_DEVICE`` overrides)."""
    env = os.environ.get("ADVISOR_DEVICE")
    if env and env != "auto":
        return check_device(env, "ADVISOR_DEVICE")
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine (``auto``/None: ``default_device()``)."""
    if device in (None, "", "auto"):
        return default_device()
    return check_device(str(device), "--device")


DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_device(device: str, what: str = "--device") -> str:
    """``device`` unchanged when this machine has it; else a one-line ``ConfigError``
    (``banana``, ``cuda`` without a GPU, ``cuda:7`` on a one-GPU machine)."""
    import torch

    text = device.strip()
    kind, _, index = text.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isascii()) or (index and not index.isdigit()):
        raise ConfigError(f"{what} {device!r} is not a device (use auto, cpu, cuda, cuda:N or mps)")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{what} {device!r}: this machine has no CUDA GPU (use cpu)")
        if index and int(index) >= count:
            raise ConfigError(f"{what} {device!r}: this machine has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ConfigError(f"{what} {device!r}: MPS (Apple GPU) is not available on this machine (use cpu)")
        if index and int(index) != 0:
            raise ConfigError(f"{what} {device!r}: there is only mps:0")
    if kind == "cpu" and index and int(index) != 0:
        raise ConfigError(f"{what} {device!r}: there is only one cpu device (use cpu)")
    return text
