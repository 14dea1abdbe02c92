"""CLIP-Adapter on the image side (Gao et al., "CLIP-Adapter: Better Vision-Language Models with
Feature Adapters", arXiv 2110.04544; the official code's ``Adapter``):

    A(f) = ReLU(W2 · ReLU(W1 · f)),  W1: d -> d/reduction, W2: d/reduction -> d, no biases
    f'   = ratio · A(f) + (1 - ratio) · f

with f the frozen image tower's output, trained with cross-entropy over the scaled cosine
between f' and the frozen class-prompt text features. Both towers stay frozen, so image and
text features are computed once and training is cheap. The adapter's design and ratio 0.2 are
the paper's; the optimisation (AdamW lr 1e-3, batch 32, 20 epochs, 1 warm-up epoch then cosine,
through advisor's shared loop) is this example's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from advisor import tuning as T
from advisor.specs import TrainContext, TrainResult

from . import CLIP_ADAPTER


def defaults(shots: int | None) -> dict[str, Any]:
    return {
        "epochs": 20,
        "lr": 1e-3,
        "batch_size": 32,
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "warmup_epochs": 1,
        "warmup_type": "linear",
        **CLIP_ADAPTER.declared_defaults(),
    }


class Adapter(nn.Module):
    """The residual bottleneck: ``ratio · A(f) + (1 - ratio) · f``."""

    def __init__(self, dim: int, reduction: int, ratio: float):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, dim, bias=False), nn.ReLU())
        self.ratio = ratio

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.fc(f) + (1.0 - self.ratio) * f


class AdapterAdapted(T.ZeroShotAdapted):
    """The frozen model with the adapter after its image tower (text side untouched)."""

    def __init__(self, model: Any, adapter: Adapter, device: str):
        super().__init__(model, device)
        self.adapter = adapter

    @torch.no_grad()
    def encode_image(self, pixels: Any) -> torch.Tensor:
        return self.adapter(super().encode_image(pixels))

    def class_text_features(self, class_names: Sequence[str], template: str) -> torch.Tensor:
        return super().class_text_features(class_names, template)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in self.adapter.state_dict().items()}


def train(ctx: TrainContext) -> TrainResult:
    hp = T.resolve_hparams(CLIP_ADAPTER, defaults(ctx.shots), ctx)
    pixels, labels = T.check_context(ctx)
    generator = T.seed_everything(ctx.seed)
    model = ctx.model
    model.eval()
    with T.frozen(model):
        feats = T.frozen_image_features(ctx, pixels)
        with torch.no_grad():
            txt = T.encode_class_texts(model, ctx.class_names, ctx.template, ctx.device)
            scale = T.logit_scale_value(model).detach()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            adapter = Adapter(int(feats.shape[1]), hp["reduction"], hp["ratio"]).to(ctx.device)
        labels = labels.to(ctx.device)

        def loss_fn(idx: torch.Tensor, step: int, total: int) -> torch.Tensor:
            idx = idx.to(ctx.device)
            return T.clip_loss(adapter(feats[idx]), txt, labels[idx], scale)

        params = list(adapter.parameters())
        losses = T.fit(params, loss_fn, n=labels.numel(), hp=hp, ctx=ctx, generator=generator)
    adapter.requires_grad_(False)
    return TrainResult(adapted=AdapterAdapted(model, adapter, ctx.device), trainable_params=T.count_trainable(params),
                       losses=losses, hparams=hp)
