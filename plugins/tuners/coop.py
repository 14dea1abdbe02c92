"""CoOp: learnable context vectors in the text tower's token-embedding space.

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022), following the official
code (github.com/KaiyangZhou/CoOp @ ff61507, ``trainers/coop.py``; methods.md section 5):

- prompt for class k: ``[start] [V]_1 ... [V]_M [CLASSNAME_k] . [end]``: one *unified* context
  shared by all classes, class token at the end, M = 16, ``[V]`` initialised N(0, 0.02) in place
  of the placeholder words ``"X X ... X"``;
- both towers frozen; cross-entropy over ``exp(logit_scale)·cos(img, txt)``;
- SGD (momentum 0.9, weight decay 5e-4: Dassl's defaults), lr 0.002, batch 32, cosine schedule
  after 1 warm-up epoch at a constant 1e-5; epochs by shots: 1 -> 50, 2/4 -> 100, 8/16 -> 200.

Differences from the official recipe, for cost: the image tower is frozen, so image features
are computed once (or taken from ``ctx.image_features``) and the random-resized-crop/flip
augmentation is not applied; fp32 on CPU (the official default is fp16 on GPU, here bf16
autocast on CUDA).

Works with every model implementing the ``VisionLanguageModel`` prompt-learning methods
(``tokenize`` -> ``token_embeddings`` -> ``encode_text_embeddings``): for open_clip the context
lives in CLIP's word-embedding space, for lit-offline in MiniLM's input-embedding space. The
learned context is applied to *any* class names, which is how out-of-domain sets are evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from advisor import tuning as T
from advisor.errors import TrainingError
from advisor.specs import TrainContext, TrainResult

from .builtin import COOP
from .defaults import coop as defaults


def inner_token_mask(tokens: Any, offset: int) -> torch.Tensor:
    """(B,L) bool: the positions of a text's own tokens: after the start token(s), before the end
    token, not padding. Falls back to every non-padding position for a tokenizer without an end
    token."""
    valid = tokens["attention_mask"].bool() if isinstance(tokens, dict) else tokens != 0
    pos = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
    last = (valid.long() * pos).max(dim=1, keepdim=True).values  # index of the end token
    mask = valid & (pos >= offset) & (pos < last)
    empty = ~mask.any(dim=1, keepdim=True)
    return torch.where(empty, valid, mask)


class PromptLearner(nn.Module):
    """M learnable context vectors placed at ``[context_offset, context_offset+M)`` of the prompts
    ``"X X ... X {classname}."``; the placeholder embeddings are replaced, everything else (start
    token, class-name tokens, ".", end token, padding) keeps the frozen model's embeddings.

    The frozen parts depend only on the class names, so they are computed once per name list.
    """

    def __init__(self, model: Any, n_ctx: int, init_std: float, generator: torch.Generator, device: str,
                 ctx_init: str | None = None):
        super().__init__()
        self.offset = int(model.context_offset)
        if ctx_init:
            ctx = self.init_from_text(model, ctx_init, device)
            n_ctx = ctx.shape[0]
        else:
            if n_ctx < 1:
                raise TrainingError(f"n_ctx must be at least 1 (got {n_ctx})")
            ctx = torch.randn(n_ctx, int(model.token_dim), generator=generator) * float(init_std)
        self.ctx = nn.Parameter(ctx.to(device))
        self.n_ctx = n_ctx
        self.device = device
        self._cache: dict[tuple[str, ...], tuple[Any, torch.Tensor]] = {}

    def init_from_text(self, model: Any, text: str, device: str) -> torch.Tensor:
        """CoOp's CTX_INIT: the token embeddings of ``text`` (e.g. "a photo of a"); M = its length."""
        tokens = T.to_device(model.tokenize([text]), device)
        with torch.no_grad():
            emb = model.token_embeddings(tokens).detach()
        mask = inner_token_mask(tokens, self.offset)[0]
        if not bool(mask.any()):
            raise TrainingError(f"ctx_init {text!r} has no tokens")
        return emb[0, mask].float().cpu()

    def prompt_texts(self, class_names: Sequence[str]) -> list[str]:
        head = " ".join(["X"] * self.n_ctx)
        return [f"{head} {name}." for name in class_names]

    def frozen_parts(self, model: Any, class_names: Sequence[str]) -> tuple[Any, torch.Tensor]:
        """(tokens, token embeddings (C,L,D)) of the placeholder prompts, cached."""
        key = tuple(str(c) for c in class_names)
        if key not in self._cache:
            tokens = T.to_device(model.tokenize(self.prompt_texts(key)), self.device)
            with torch.no_grad():
                emb = model.token_embeddings(tokens).detach()
            if emb.shape[1] < self.offset + self.n_ctx + 1:
                raise TrainingError(f"the text tower's context ({emb.shape[1]} tokens) is too short for {self.n_ctx} context vectors")
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = (tokens, emb)
        return self._cache[key]

    def insert(self, emb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Replace positions [offset, offset+M) of ``emb`` (C,L,D) by ``ctx`` ((M,D) or (C,M,D))."""
        c = emb.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        o, m = self.offset, self.n_ctx
        return torch.cat([emb[:, :o], ctx.to(emb.dtype), emb[:, o + m :]], dim=1)

    def text_features(self, model: Any, class_names: Sequence[str]) -> torch.Tensor:
        tokens, emb = self.frozen_parts(model, class_names)
        return model.encode_text_embeddings(self.insert(emb, self.ctx), tokens).float()


class PromptAdapted:
    """A frozen model plus learned prompts, as a user would deploy it.

    ``class_text_features`` applies the learned context to whatever class names it is given;
    the dataset template is not used (the learned context replaces it).
    """

    def __init__(self, model: Any, learner: PromptLearner, device: str):
        self.model = model
        self.learner = learner
        self.device = device

    @torch.no_grad()
    def encode_image(self, pixels: Any) -> torch.Tensor:
        with T.autocast(self.device):
            return self.model.encode_image(torch.as_tensor(pixels).to(self.device)).float()

    @torch.no_grad()
    def class_text_features(self, class_names: Sequence[str], template: str = "") -> torch.Tensor:
        with T.autocast(self.device):
            return self.learner.text_features(self.model, list(class_names)).float()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in self.learner.state_dict().items()}


def train_prompts(ctx: TrainContext, learner: PromptLearner, hp: dict[str, Any], generator: torch.Generator,
                  extra_loss: Any = None) -> list[float]:
    """CoOp's loop over cached image features: CE on scaled cosine logits (+ ``extra_loss(txt)``)."""
    pixels, labels = T.check_context(ctx)
    model = ctx.model
    feats = T.frozen_image_features(ctx, pixels, int(hp.get("eval_batch_size", 128)))
    labels = labels.to(ctx.device)
    scale = T.logit_scale_value(model).detach()
    names = list(ctx.class_names)

    def loss_fn(idx: torch.Tensor, step: int, total: int) -> torch.Tensor:
        txt = learner.text_features(model, names)
        idx = idx.to(ctx.device)
        loss = T.clip_loss(feats[idx], txt, labels[idx], scale)
        if extra_loss is not None:
            loss = loss + extra_loss(txt)
        return loss

    return T.fit(list(learner.parameters()), loss_fn, n=labels.numel(), hp=hp, ctx=ctx, generator=generator,
                 adapted=PromptAdapted(model, learner, ctx.device))


def train(ctx: TrainContext) -> TrainResult:
    hp = T.resolve_hparams(COOP, defaults(ctx.shots), ctx)
    generator = T.seed_everything(ctx.seed)
    model = ctx.model
    model.eval()
    with T.frozen(model):
        learner = PromptLearner(model, int(hp["n_ctx"]), float(hp["init_std"]), generator, ctx.device,
                                ctx_init=hp.get("ctx_init"))
        hp["n_ctx"] = learner.n_ctx
        losses = train_prompts(ctx, learner, hp, generator)
    learner.requires_grad_(False)
    return TrainResult(
        adapted=PromptAdapted(model, learner, ctx.device),
        trainable_params=T.count_trainable(learner.parameters()),
        losses=losses,
        hparams=hp,
    )
