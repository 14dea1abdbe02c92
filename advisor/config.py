"""Where things live and which device to use: user-data directory, database URL, cache dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "advisor"


def user_dir() -> Path:
    """User data directory (``ADVISOR_HOME`` overrides; tests point it at a tmp dir)."""
    env = os.environ.get("ADVISOR_HOME")
    path = Path(env) if env else Path(platformdirs.user_data_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Embedding cache directory (``ADVISOR_CACHE`` overrides)."""
    env = os.environ.get("ADVISOR_CACHE")
    path = Path(env) if env else user_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Where trained adapters (safetensors) are written."""
    path = user_dir() / "adapters"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shipped_registry() -> Path | None:
    """The read-only history shipped with the project (``registry.db``).

    Looked up next to the source tree (development / editable installs), then under
    ``<prefix>/share/advisor`` (regular installs). ``ADVISOR_REGISTRY`` overrides.
    """
    env = os.environ.get("ADVISOR_REGISTRY")
    candidates = [Path(env)] if env else []
    candidates += [
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
    if env:
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return default_device()
    return device
