"""The five built-in tuners' registrations: everything advisor knows about each method (order,
plot colour, family, whether it is our reconstruction, its own hyper-parameters with types,
defaults and help), declared without importing torch.

Each tuner's module (``full``, ``lora``, ``coop``, ``contcoop``, ``tpc_cma``) imports torch and
peft, which costs seconds, so it is imported on the first call to ``train`` or ``defaults``:
``advisor --help``, ``advisor plugins`` and ``advisor recommend`` stay fast. The modules take
their declared defaults from here (``declared_defaults``), so each value is written once.
``search`` is the learning-rate range ``advisor recommend`` searches (log-spaced), the range
the third-edition sweep ran each method over (sweeps/registry-v3.toml): from barely moving the
weights to over-fitting on 16 shots.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from advisor.hookspecs import hookimpl
from advisor.specs import HParam, Tuner


def _deferred(module: str, attr: str) -> Callable[..., Any]:
    """A function that imports ``module`` on first call and forwards to ``module.attr``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__qualname__ = f"{module}.{attr}"
    return call


def _builtin(name: str, **fields: Any) -> Tuner:
    module = f"advisor_plugins.tuners.{name}"
    return Tuner(name=name, train=_deferred(module, "train"),
                 defaults=_deferred("advisor_plugins.tuners.defaults", name), **fields)  # no torch


_INIT_STD = HParam("init_std", float, 0.02, "std of the normal initialisation of the trained vectors", minimum=0)
_N_CTX = HParam("n_ctx", int, 16, "number of learned context vectors (ctx_init's length wins when given)", minimum=1)

FULL = _builtin(
    "full", order=10, colour="#d62728", family="full", search={"lr": (2e-6, 1e-4)},
    description="Full fine-tuning of both towers and the temperature: CE against fixed class prompts, AdamW, "
                "warm-up + cosine.",
)

LORA = _builtin(
    "lora", order=20, colour="#1f77b4", family="low-rank", search={"lr": (1e-3, 2e-2)},
    description="LoRA (peft) on Q/V of both towers' attention, rank 4, scaling 0.2 (IIMM code defaults).",
    hparams=(
        HParam("rank", int, 4, "LoRA rank r", minimum=1),
        HParam("alpha", float, 0.8, "LoRA alpha (scaling alpha / rank; 0.8 / 4 = 0.2 as in the IIMM code)",
               positive=True),
        HParam("dropout", float, 0.0, "LoRA dropout", minimum=0, maximum=1),
        _INIT_STD,
        HParam("targets", list, None, "module-name suffixes to wrap (default: q/v of every attention)"),
    ),
)

COOP = _builtin(
    "coop", order=30, colour="#2ca02c", family="prompt", search={"lr": (5e-4, 1e-2)},
    description="CoOp: 16 learnable context vectors in the text tower's token-embedding space, both towers "
                "frozen (Zhou et al. 2022).",
    hparams=(
        _N_CTX,
        _INIT_STD,
        HParam("ctx_init", str, None, "initialise the context from these words' embeddings (e.g. 'a photo of a')"),
    ),
)

CONTCOOP = _builtin(
    "contcoop", order=40, colour="#17becf", family="prompt", reconstructed=True, search={"lr": (5e-4, 1e-2)},
    description="ContCoOp: CoOp context conditioned on class-name embeddings by an attention "
                "layer, CE + 8.0 x KgCoOp distillation.",
    hparams=(
        # 4: the length of the default ctx_init, which sets the context's length (16 random
        # vectors would be CoOp's, with an empty ctx_init), so the default is what a run trains.
        HParam("n_ctx", int, 4, "number of learned context vectors: ctx_init's length when given (its default "
                                "'a photo of a' is 4), else this many random ones", minimum=1),
        _INIT_STD,
        HParam("ctx_init", str, "a photo of a", "initialise the context from these words' embeddings (empty: "
                                                "n_ctx random vectors)"),
        HParam("kd_weight", float, 8.0, "weight of the distillation to the zero-shot text features (KgCoOp's 8.0)",
               minimum=0),
        HParam("heads", int, 1, "attention heads of the conditioning layer (must divide the token width)",
               minimum=1),
    ),
)

TPC_CMA = _builtin(
    "tpc_cma", order=50, colour="#9467bd", family="output-map", reconstructed=True, search={"lr": (2e-4, 5e-3)},
    description="TPC-CMA: CE + alpha(t)*(centroid gap^2 + covariance gap), three-phase "
                "gradient-aware curriculum, alpha_target 0.05.",
    hparams=(
        HParam("alpha_target", float, 0.05, "target weight of the alignment loss (the paper's alpha)", minimum=0),
        HParam("lambda_centroid", float, 1.0, "weight of the squared centroid gap", minimum=0),
        HParam("lambda_dist", float, 1.0, "weight of the covariance (distribution) gap", minimum=0),
        HParam("kappa", float, 1.0, "ramp cap: alpha <= kappa * |grad CE| / |grad align|", minimum=0),
        HParam("warmup_frac", float, 0.2, "fraction of steps with alpha = 0", minimum=0, maximum=1),
        HParam("ramp_frac", float, 0.5, "fraction of steps over which alpha rises to alpha_target",
               minimum=0, maximum=1),
    ),
)

BUILTIN_TUNERS: tuple[Tuner, ...] = (FULL, LORA, COOP, CONTCOOP, TPC_CMA)


@hookimpl
def register_tuners(register: Callable[[Any], None]) -> None:
    for tuner in BUILTIN_TUNERS:
        register(tuner)
