"""Full fine-tuning: every weight of both towers (and the learned temperature) is trained.

Following the IIMM code's end-to-end fine-tuning (methods.md section 1.2, ``train_helpers.train``):
cross-entropy over ``exp(logit_scale)·norm(img)·norm(txt)ᵀ`` against the *fixed* class prompts of
the dataset template, both towers trainable, autocast on GPU, 10 epochs (``train.py`` default).

The optimiser is ours: the IIMM default (SGD, lr 1e-6, 10 epochs at batch 128) barely moves the
weights in a few-shot budget of a few dozen steps, so we use AdamW with weight decay 0.1 as
end-to-end CLIP fine-tuning recipes do (WiSE-FT, Wortsman et al. 2022: AdamW, wd 0.1, cosine with
warm-up), lr 1e-5, batch 32, 1 epoch of linear warm-up then cosine. All overridable.

For lit-offline every parameter is trained too: the EfficientNet-Lite0 image tower, the
projection, MiniLM and the temperature. The model stays in ``eval()`` mode (dropout off,
BatchNorm statistics fixed at their ImageNet values), so only parameters change, never buffers.
"""

from __future__ import annotations

import torch

from advisor import tuning as T
from advisor.specs import TrainContext, TrainResult

from .builtin import FULL
from .defaults import full as defaults


def train(ctx: TrainContext) -> TrainResult:
    hp = T.resolve_hparams(FULL, defaults(ctx.shots), ctx)
    pixels, labels = T.check_context(ctx, pixels_for="full fine-tuning trains the image tower")
    generator = T.seed_everything(ctx.seed)
    model = ctx.model
    model.eval()
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    labels = labels.to(ctx.device)
    names = list(ctx.class_names)

    def loss_fn(idx: torch.Tensor, step: int, total: int) -> torch.Tensor:
        img = model.encode_image(pixels[idx].to(ctx.device))
        txt = T.encode_class_texts(model, names, ctx.template, ctx.device)
        return T.clip_loss(img, txt, labels[idx.to(ctx.device)], T.logit_scale_value(model))

    n_trainable = T.count_trainable(list(params.values()))
    adapted = T.ModelAdapted(model, params, ctx.device)
    losses = T.fit(list(params.values()), loss_fn, n=labels.numel(), hp=hp, ctx=ctx, generator=generator,
                   adapted=adapted)
    model.requires_grad_(False)
    return TrainResult(
        adapted=adapted,
        trainable_params=n_trainable,
        losses=losses,
        hparams=hp,
        extra={"logit_scale": float(model.logit_scale.detach().exp())},
    )
