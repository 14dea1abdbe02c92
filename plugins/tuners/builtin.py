"""Registers the five built-in tuners without importing torch.

Each tuner's module (``full``, ``lora``, ``coop``, ``contcoop``, ``tpc_cma``) imports torch and
peft, which costs seconds. Registration only needs names and descriptions, so the modules are
imported on the first call to ``train`` or ``defaults``: ``advisor --help``, ``advisor plugins``
and ``advisor recommend`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import advisor
from advisor.specs import Tuner

#: name, module, reconstructed (not the paper's code), description
BUILTIN_TUNERS: tuple[tuple[str, str, bool, str], ...] = (
    ("full", "advisor_plugins.tuners.full", False,
     "Full fine-tuning of both towers and the temperature: CE against fixed class prompts, AdamW, warm-up + cosine."),
    ("lora", "advisor_plugins.tuners.lora", False,
     "LoRA (peft) on Q/V of both towers' attention, rank 4, scaling 0.2 (IIMM code defaults)."),
    ("coop", "advisor_plugins.tuners.coop", False,
     "CoOp: 16 learnable context vectors in the text tower's token-embedding space, both towers frozen (Zhou et al. 2022)."),
    ("contcoop", "advisor_plugins.tuners.contcoop", True,
     "ContCoOp (our reconstruction): CoOp context conditioned on class-name embeddings by an attention layer, "
     "CE + 8.0 x KgCoOp distillation."),
    ("tpc_cma", "advisor_plugins.tuners.tpc_cma", True,
     "TPC-CMA (our reconstruction): CE + alpha(t)*(centroid gap^2 + covariance gap), three-phase gradient-aware "
     "curriculum, alpha_target 0.05."),
)


def _deferred(module: str, attr: str) -> Callable[..., Any]:
    """A function that imports ``module`` on first call and forwards to ``module.attr``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__qualname__ = f"{module}.{attr}"
    return call


@advisor.hookimpl
def register_tuners(register: Callable[[Any], None]) -> None:
    for name, module, reconstructed, description in BUILTIN_TUNERS:
        register(Tuner(name=name, train=_deferred(module, "train"), defaults=_deferred(module, "defaults"),
                       description=description, reconstructed=reconstructed))
