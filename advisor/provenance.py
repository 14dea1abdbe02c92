"""Where a number came from: code version, package versions, hardware.

Stored with every run so that any value in the history can be traced to the code and machine
that produced it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ._version import __version__

PACKAGES = ("torch", "torchvision", "open_clip_torch", "peft", "lightgbm", "numpy", "scikit-learn", "transformers", "POT")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of the source tree, with ``-dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        # Other work on the machine slows a run: the load average makes wall times interpretable.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:  # pragma: no cover
        pass
    return info


def provenance(device: str, seed: int | None = None) -> dict[str, Any]:
    """Everything needed to trace a measurement back to code, packages, seed and hardware."""
    return {
        "advisor_version": __version__,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "seed": seed,
        "hardware": hardware(device),
    }
