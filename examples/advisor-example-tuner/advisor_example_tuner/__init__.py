"""An example advisor tuner plugin: ``clip_adapter``, a CLIP-Adapter-style residual adapter.

Everything advisor needs to know about the method is in this registration: its order and plot
colour, its family (for the cold-start heuristic), that it is not a reconstruction, and its own
hyper-parameters with types, defaults and help (``advisor run --hparam ratio=0.5``, listed by
``advisor run --help``). This module imports no torch, so installing the plugin keeps every
``advisor`` command fast; the training code (``adapter.py``) is imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from advisor.hookspecs import hookimpl
from advisor.specs import HParam, Tuner

__version__ = "0.1.0"


def _train(ctx: Any) -> Any:
    from .adapter import train

    return train(ctx)


def _defaults(shots: int | None) -> dict[str, Any]:
    from .adapter import defaults

    return defaults(shots)


CLIP_ADAPTER = Tuner(
    name="clip_adapter",
    train=_train,
    defaults=_defaults,
    description="CLIP-Adapter (Gao et al. 2021): a residual bottleneck MLP on the frozen image features, "
                "blended as ratio*adapter(f) + (1-ratio)*f; both towers frozen.",
    reconstructed=False,
    family="output-map",
    order=60,
    colour="#ff7f0e",
    hparams=(
        HParam("ratio", float, 0.2, "residual ratio: weight of the adapted features (CLIP-Adapter's 0.2)",
               minimum=0, maximum=1),
        HParam("reduction", int, 4, "bottleneck reduction: hidden width = embed dim / reduction", minimum=1),
    ),
)


@hookimpl
def register_tuners(register: Callable[[Any], None]) -> None:
    register(CLIP_ADAPTER)
