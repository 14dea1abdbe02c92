"""Model plugin: every open_clip architecture, ``hf-hub:ORG/REPO`` ids, local checkpoints,
and the tiny random configs ``tiny-vit`` / ``tiny-rn`` used by tests.

This module stays import-light (no torch, no open_clip) because every plugin is imported when
the CLI starts; the model lives in ``open_clip_model.py``, its loading in ``open_clip_loading.py``, both imported on load.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from advisor.hookspecs import hookimpl
from advisor.specs import ModelSource, ModelSpec

from .families import OPEN_CLIP as FAMILY

TINY_NAMES = ("tiny-vit", "tiny-rn")


@lru_cache(maxsize=1)
def _architectures() -> frozenset[str]:
    """open_clip's built-in architecture names, read from its config folder without importing it
    (``open_clip.list_models()`` is the same list, after an 8 s import)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    folder = Path(list(spec.submodule_search_locations)[0]) / "model_configs"
    return frozenset(p.stem for p in folder.glob("*.json"))


def matches(name: str) -> bool:
    """Any open_clip architecture, ``hf-hub:``/``local-dir:`` id, or an existing checkpoint path."""
    if name in TINY_NAMES or name in _architectures():
        return True
    if name.startswith(("hf-hub:", "local-dir:")):
        return True
    return os.path.exists(name)


def load(spec: ModelSpec, device: str) -> object:
    from .open_clip_loading import load_open_clip

    return load_open_clip(spec.name, spec.pretrained, spec.image_size, spec.cache_dir, device)


def fingerprint(spec: ModelSpec) -> str:
    """Identifies the weights without building the model (cache keys): weight-file hashes,
    or the init seed and library versions for random models."""
    from .open_clip_loading import weights_fingerprint

    return weights_fingerprint(spec.name, spec.pretrained, spec.image_size, spec.cache_dir)


load.fingerprint = fingerprint  # type: ignore[attr-defined]


@hookimpl
def register_models(register):  # type: ignore[no-untyped-def]
    register(
        ModelSource(
            name="open_clip",
            load=load,
            matches=matches,
            offline=False,
            family=FAMILY,
            description="Any open_clip architecture (--pretrained TAG or checkpoint), hf-hub:ORG/REPO, or a checkpoint path",
        )
    )
    for tiny in TINY_NAMES:
        register(
            ModelSource(
                name=tiny,
                load=load,
                family=FAMILY,
                description="Tiny random open_clip model for tests (seeded, 32 px, embed dim 32)",
            )
        )
