"""The five built-in tuners' default hyper-parameters, without torch: what ``Tuner.defaults``
answers (``advisor recommend`` calls it for the command it prints, on every call), so asking
for them does not import the training modules (torch, peft: about 480 MB and 1.5 s CPU).
The training modules take their defaults from here; each value is written once."""

from __future__ import annotations

from typing import Any

from .builtin import CONTCOOP, COOP, LORA, TPC_CMA


def coop_epochs(shots: int | None) -> int:
    """Epochs of the official configs: 1 shot 50, 2-4 shots 100, 8+ shots 200."""
    if shots is None or shots >= 8:
        return 200
    if shots <= 1:
        return 50
    return 100


def full(shots: int | None) -> dict[str, Any]:
    return {"epochs": 10, "lr": 1e-5, "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.1,
            "warmup_epochs": 1, "warmup_type": "linear"}


def lora(shots: int | None) -> dict[str, Any]:
    return {
        "epochs": 10, "lr": 5e-3, "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.0,
        "warmup_epochs": 1, "warmup_type": "linear",
        **LORA.declared_defaults(),  # rank 4, alpha 0.8 (scaling 0.2 as in the IIMM code), targets None:
        # DEFAULT_TARGETS found in the model, plus the image projection of projection-only towers
    }


def coop(shots: int | None) -> dict[str, Any]:
    return {
        "epochs": coop_epochs(shots), "lr": 0.002, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
        "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_type": "constant", "warmup_lr": 1e-5,
        **COOP.declared_defaults(),  # n_ctx 16, init_std 0.02, ctx_init None
    }


def contcoop(shots: int | None) -> dict[str, Any]:
    hp = coop(shots)
    hp.update(CONTCOOP.declared_defaults())  # n_ctx 4, kd_weight 8.0, heads 1, ctx_init "a photo of a"
    return hp


def tpc_cma(shots: int | None) -> dict[str, Any]:
    return {
        "epochs": 20, "lr": 1e-3, "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.0,
        "warmup_epochs": 1, "warmup_type": "linear",
        **TPC_CMA.declared_defaults(),  # alpha_target 0.05, lambdas and kappa 1, warm-up 20 %, ramp 50 %
    }
