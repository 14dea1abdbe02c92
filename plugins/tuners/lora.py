"""LoRA through peft, on the query and value projections of both towers.

Defaults follow the IIMM code (methods.md section 1.2; ``models/common.py``, ``models/clip.py``,
``train.py``): LoRA on the Q and V parts of the attention in-projection of **both** towers,
rank 4, scaling 0.2 (peft ``lora_alpha = 0.2 · r``), A ~ N(0, 0.02), B = 0, no dropout; the rest of
the model frozen; CE over ``exp(logit_scale)·cos(img, txt)`` against the fixed class prompts. The
optimiser is ours, because the IIMM default (SGD, lr 1e-6) leaves LoRA's zero-initialised B at ~0
in a few-shot budget of ~50 steps: AdamW lr 5e-3, no weight decay, batch 32, 10 epochs, 1 warm-up
epoch then cosine. Measured on lit-offline / mnist-5k, 16 shots, 10 epochs: lr 1e-3 barely moves
the training loss (0.446 -> 0.415), 5e-3 halves it (0.447 -> 0.247), 2e-2 drives it to 0.03
and over-fits. Every value is overridable (``rank``, ``alpha``, ``dropout``, ``targets``,
``init_std``...).

Why the attention is split first: open_clip uses ``nn.MultiheadAttention``, whose packed
``in_proj_weight`` is read directly inside the functional forward. peft's wrapper for that
module merges the LoRA delta into the frozen weight before each forward and subtracts it after,
so the frozen weights drift by float rounding (methods.md section 8). Instead, each
``nn.MultiheadAttention`` is replaced by an equivalent module with separate ``q_proj``,
``k_proj``, ``v_proj`` (exact slices of the packed weight) and the original ``out_proj``: plain
``nn.Linear`` layers that peft wraps without ever touching the base weights (the layout CLIP-LoRA
uses as well). The same is done for the ResNet attention pool, which calls its projection weights
functionally. ``base_state`` packs the frozen weights back into the original layout, so a test
can check they are bitwise unchanged.

Targets by model: open_clip ``q_proj``/``v_proj`` in every attention of both towers (for
ModifiedResNet towers the attention pool's); lit-offline MiniLM's ``query``/``value`` layers plus
the image projection (EfficientNet-Lite0 has no attention: its frozen-by-design trunk gets no
LoRA; the projection is the only linear layer on that side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advisor import tuning as T
from advisor.errors import TrainingError
from advisor.specs import TrainContext, TrainResult

from .builtin import LORA
from .defaults import lora as defaults

#: Module-name suffixes LoRA goes on when ``targets`` is not given (those present are used).
DEFAULT_TARGETS = ("q_proj", "v_proj", "query", "value")


# --------------------------------------------------------------------------------------------
# Attention with separate projections
# --------------------------------------------------------------------------------------------


class SplitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with q/k/v as separate ``nn.Linear`` layers (same numbers).

    Supports what open_clip uses: self- and cross-attention, ``batch_first`` either way,
    additive or boolean ``attn_mask`` and ``key_padding_mask``; returns ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise TrainingError("LoRA: unsupported nn.MultiheadAttention variant (separate k/v dims or bias_kv)")
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = e, mha.num_heads, mha.batch_first
        self.dropout = mha.dropout
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            lin = nn.Linear(e, e, bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[i * e : (i + 1) * e])
                if b is not None:
                    lin.bias.copy_(b.detach()[i * e : (i + 1) * e])
            lin.weight.requires_grad_(mha.in_proj_weight.requires_grad)
            if b is not None:
                lin.bias.requires_grad_(b.requires_grad)
            setattr(self, name, lin)
        self.out_proj = mha.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        bsz, lq, e = query.shape
        ls = key.shape[1]
        h = self.num_heads
        q = self.q_proj(query).view(bsz, lq, h, e // h).transpose(1, 2)
        k = self.k_proj(key).view(bsz, ls, h, e // h).transpose(1, 2)
        v = self.v_proj(value).view(bsz, ls, h, e // h).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, bsz, h, lq, ls, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=bool(is_causal and mask is None),
        )
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, lq, e))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, bsz: int, h: int,
                   lq: int, ls: int, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask conventions (bool True = do not attend) as one additive mask."""
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        if m.dim() == 3:  # (B*H, Lq, Ls)
            m = m.view(bsz, h, lq, ls)
        mask = m
    if key_padding_mask is not None:
        kp = key_padding_mask
        if kp.dtype == torch.bool:
            kp = torch.zeros(kp.shape, dtype=dtype, device=kp.device).masked_fill(kp, float("-inf"))
        kp = kp.to(dtype).view(bsz, 1, 1, ls)
        mask = kp if mask is None else mask + kp
    return mask


def _attention_pool_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip ``AttentionPool2d.forward`` calling its projections as modules (so LoRA applies)."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(0, 2, 1)  # (N, HW, C)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
    x = x + self.positional_embedding[None, :, :].to(x.dtype)
    n, length, c = x.shape
    h = self.num_heads
    q = self.q_proj(x[:, :1]).view(n, 1, h, c // h).transpose(1, 2)
    k = self.k_proj(x).view(n, length, h, c // h).transpose(1, 2)
    v = self.v_proj(x).view(n, length, h, c // h).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.c_proj(out.transpose(1, 2).reshape(n, c))


def split_attention(model: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` (and open_clip ResNet attention pool's functional
    forward) so q/k/v are called as ``nn.Linear`` modules. Returns the names of replaced modules."""
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, child_name, SplitMultiheadAttention(child))
                replaced.append(full)
            elif type(child).__name__ == "AttentionPool2d" and all(
                isinstance(getattr(child, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "c_proj")
            ):
                child.forward = _attention_pool_forward.__get__(child)  # type: ignore[method-assign]
                replaced.append(full)
    return replaced


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's frozen weights in the *original* layout: LoRA matrices dropped, peft's
    ``.base_layer`` removed, split q/k/v packed back into ``in_proj_weight``/``in_proj_bias``."""
    sd = {k.replace(".base_layer", ""): v.detach() for k, v in model.state_dict().items() if ".lora_" not in k}
    out: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SplitMultiheadAttention):
            packed[name] = {}
    for k, v in sd.items():
        owner = next((p for p in packed if k.startswith(p + ".") and k[len(p) + 1 :].split(".")[0] in ("q_proj", "k_proj", "v_proj")), None)
        if owner is None:
            out[k] = v
        else:
            packed[owner][k[len(owner) + 1 :]] = v
    for owner, parts in packed.items():
        out[f"{owner}.in_proj_weight"] = torch.cat([parts[f"{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")])
        if "q_proj.bias" in parts:
            out[f"{owner}.in_proj_bias"] = torch.cat([parts[f"{p}.bias"] for p in ("q_proj", "k_proj", "v_proj")])
    return out


# --------------------------------------------------------------------------------------------
# Target selection and injection
# --------------------------------------------------------------------------------------------


def resolve_targets(model: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """Full module names LoRA wraps (``nn.Linear`` only).

    ``targets`` are module-name suffixes. By default: ``DEFAULT_TARGETS`` wherever they occur,
    plus the model's own top-level linear projection ``proj`` when it has one (lit-offline's
    image head; open_clip's projections are plain parameters, not layers).
    """
    if isinstance(targets, str):  # --hparam targets=q_proj,v_proj
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    suffixes = list(targets) if targets else list(DEFAULT_TARGETS)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(name == s or name.endswith("." + s) for s in suffixes):
            found.append(name)
    if not targets and isinstance(getattr(model, "proj", None), nn.Linear):
        found.append("proj")
    if not found:
        raise TrainingError(f"LoRA: no nn.Linear module matches targets {suffixes}")
    return found


def inject_lora(model: nn.Module, hp: dict[str, Any], generator: torch.Generator) -> dict[str, nn.Parameter]:
    """Split attention, wrap the target layers with peft LoRA, re-initialise A ~ N(0, init_std),
    B = 0, freeze everything else. Returns the LoRA parameters by name."""
    from peft import LoraConfig, inject_adapter_in_model

    split_attention(model)
    names = resolve_targets(model, hp.get("targets"))
    rank = int(hp["rank"])
    if rank < 1:
        raise TrainingError(f"LoRA rank must be at least 1 (got {rank})")
    config = LoraConfig(r=rank, lora_alpha=float(hp["alpha"]), lora_dropout=float(hp["dropout"]),
                        target_modules=names, bias="none")
    inject_adapter_in_model(config, model)
    model.requires_grad_(False)
    lora: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator) * float(hp["init_std"]))
        elif ".lora_B." in name:
            with torch.no_grad():
                p.zero_()
        else:
            continue
        p.requires_grad_(True)
        lora[name] = p
    return lora


def train(ctx: TrainContext) -> TrainResult:
    hp = T.resolve_hparams(LORA, defaults(ctx.shots), ctx)
    pixels, labels = T.check_context(ctx, pixels_for="LoRA trains inside the image tower")
    generator = T.seed_everything(ctx.seed)
    model = ctx.model
    model.eval()
    lora = inject_lora(model, hp, generator)
    model.eval()
    modules = sorted({n.rsplit(".lora_", 1)[0] for n in lora})
    hp["targets"] = sorted({m.rsplit(".", 1)[-1] for m in modules})
    labels = labels.to(ctx.device)
    names = list(ctx.class_names)
    scale = T.logit_scale_value(model).detach()

    def loss_fn(idx: torch.Tensor, step: int, total: int) -> torch.Tensor:
        img = model.encode_image(pixels[idx].to(ctx.device))
        txt = T.encode_class_texts(model, names, ctx.template, ctx.device)
        return T.clip_loss(img, txt, labels[idx.to(ctx.device)], scale)

    n_trainable = T.count_trainable(list(lora.values()))
    adapted = T.ModelAdapted(model, lora, ctx.device)
    losses = T.fit(list(lora.values()), loss_fn, n=labels.numel(), hp=hp, ctx=ctx, generator=generator,
                   adapted=adapted)
    model.requires_grad_(False)
    return TrainResult(
        adapted=adapted,
        trainable_params=n_trainable,
        losses=losses,
        hparams=hp,
        extra={"lora_modules": float(len(modules))},
    )
