"""The open_clip model behind the ``VisionLanguageModel`` protocol (advisor/specs/models.py).

Torch-heavy half of the open_clip plugin (the registration in ``open_clip.py`` stays light so
``advisor --help`` does not import torch); how a name becomes one of these (architectures and
tags, ``hf-hub:``, local checkpoints, the tiny test configs) is ``open_clip_loading.py``.

The text forward from input embeddings (prompt learning) replicates open_clip 3.x
``CLIP.encode_text`` / ``TextTransformer.forward`` step by step; a test checks that
``encode_text_embeddings(token_embeddings(t), t)`` equals ``encode_text(t)`` exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from advisor.errors import ModelLoadError

from .common import (
    Tokens,
    as_tokens,
    count_params,
    record_outputs,
    uint8_batch_to_pixels,
)
from .families import OPEN_CLIP as FAMILY

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenClipModel(nn.Module):
    """An open_clip ``CLIP``/``CustomTextCLIP`` wrapped to the shared model protocol."""

    context_offset = 1  # position 0 is the start-of-text token

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any,
        *,
        name: str,
        pretrained: str | None,
        architecture: str,
        preprocess: Any,
        mean: Sequence[float],
        std: Sequence[float],
        weights_id: str,
        resize_mode: str = "shortest",
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.architecture = architecture
        self._preprocess = preprocess
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_id = weights_id
        self.resize_mode = resize_mode
        size = getattr(clip.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = int(self._embed_dim())
        text = self._text_parts(required=False)
        self.token_dim = int(text["token_embedding"].weight.shape[1]) if text else 0
        self.context_length = int(getattr(clip, "context_length", 0) or getattr(getattr(clip, "text", None), "context_length", 77))

    # ------------------------------------------------------------------ properties

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def _embed_dim(self) -> int:
        proj = getattr(self.clip, "text_projection", None)
        if proj is None and hasattr(self.clip, "text"):
            proj = getattr(self.clip.text, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        out = getattr(self.clip.visual, "output_dim", None)
        if out:
            return out
        with torch.no_grad():
            return self.clip.encode_text(self.tokenize(["a"]).input_ids.to(self._device())).shape[-1]

    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def _text_parts(self, required: bool = True) -> dict[str, Any] | None:
        """The text tower's pieces, for the standard CLIP layout and for TextTransformer."""
        from open_clip.transformer import TextTransformer

        c = self.clip
        if hasattr(c, "token_embedding"):
            return {
                "token_embedding": c.token_embedding,
                "positional_embedding": c.positional_embedding,
                "transformer": c.transformer,
                "ln_final": c.ln_final,
                "text_projection": c.text_projection,
                "attn_mask": c.attn_mask,
                "pool_type": c.text_pool_type,
                "eos_id": getattr(c, "text_eos_id", None),
                "tower": None,
            }
        text = getattr(c, "text", None)
        if isinstance(text, TextTransformer):
            return {
                "token_embedding": text.token_embedding,
                "positional_embedding": text.positional_embedding,
                "transformer": text.transformer,
                "ln_final": text.ln_final,
                "text_projection": text.text_projection,
                "attn_mask": text.attn_mask,
                "pool_type": text.pool_type,
                "eos_id": getattr(text, "eos_id", None),
                "tower": text,
            }
        if required:
            raise ModelLoadError(
                f"model {self.name!r} has a Hugging Face text tower; token-level access (prompt learning, text layers) is not supported for it"
            )
        return None

    # ------------------------------------------------------------------ images

    def preprocess(self, image: Any) -> torch.Tensor:
        """PIL image -> (3,S,S): open_clip's own eval transform for pretrained models."""
        return self._preprocess(image)

    def preprocess_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(B,H,W[,3]) uint8 -> (B,3,S,S), vectorised (the embedder's fast path for arrays).

        Same steps as open_clip's "shortest" eval transform (bicubic resize of the shorter
        side, centre crop, normalise); other resize modes fall back to ``preprocess``.
        """
        if self.resize_mode != "shortest":
            return torch.stack([self.preprocess(_to_pil(im)) for im in batch])
        return uint8_batch_to_pixels(batch, self.image_size, self.mean, self.std)

    def _image_blocks(self) -> tuple[list[nn.Module], Any]:
        v = self.clip.visual
        if hasattr(v, "transformer") and hasattr(v.transformer, "resblocks"):
            has_cls = getattr(v, "class_embedding", None) is not None and getattr(v, "pool_type", "tok") == "tok"

            def pool_tokens(x: torch.Tensor) -> torch.Tensor:
                return (x[:, 0] if has_cls else x.mean(1)).float()

            return list(v.transformer.resblocks), pool_tokens
        if all(hasattr(v, f"layer{i}") for i in range(1, 5)):
            return [v.layer1, v.layer2, v.layer3, v.layer4], lambda x: x.float().mean((2, 3))
        trunk = getattr(v, "trunk", None)
        for attr in ("blocks", "stages", "layers"):
            blocks = getattr(trunk, attr, None) if trunk is not None else None
            if blocks is not None:
                def pool_any(x: torch.Tensor) -> torch.Tensor:
                    x = x.float()
                    return x.mean((2, 3)) if x.ndim == 4 else x.mean(1)

                return list(blocks), pool_any
        raise ModelLoadError(f"model {self.name!r}: per-layer image states are not supported for this vision tower")

    def encode_image(self, pixels: torch.Tensor, return_layers: bool = False) -> Any:
        if not return_layers:
            return self.clip.encode_image(pixels)
        blocks, pool = self._image_blocks()
        with record_outputs(blocks, pool) as states:
            emb = self.clip.encode_image(pixels)
        return emb, list(states)

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        ids = self.tokenizer(list(texts))
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        ids = ids.long()
        return Tokens(input_ids=ids, attention_mask=(ids != 0).long())

    def token_embeddings(self, tokens: Any) -> torch.Tensor:
        t = as_tokens(tokens)
        return self._text_parts()["token_embedding"](t.input_ids.to(self._device()))

    def _pool_index(self, ids: torch.Tensor, parts: dict[str, Any]) -> torch.Tensor:
        if parts["pool_type"] == "eos":
            return (ids == parts["eos_id"]).int().argmax(dim=-1)
        if parts["pool_type"] == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device, dtype=torch.long)
        if parts["pool_type"] == "first":
            return torch.zeros(ids.shape[0], device=ids.device, dtype=torch.long)
        return ids.argmax(dim=-1)

    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: Any, return_layers: bool = False) -> Any:
        """Replicates open_clip's text forward from the token-embedding step on."""
        from open_clip.transformer import text_global_pool

        parts = self._text_parts()
        ids = as_tokens(tokens).input_ids.to(embeddings.device)
        transformer = parts["transformer"]
        cast_dtype = transformer.get_cast_dtype()
        x = embeddings.to(cast_dtype)
        tower = parts["tower"]
        attn_mask = parts["attn_mask"]
        if tower is not None:
            seq_len = ids.shape[1]
            if tower.cls_emb is not None:
                from open_clip.transformer import _expand_token

                x = torch.cat([x, _expand_token(tower.cls_emb, x.size(0))], 1)
                seq_len += 1
            if tower.use_pad_mask or tower.cls_emb is not None:
                add_mask = tower._build_additive_mask(ids, seq_len, x.dtype)
                attn_mask = add_mask if attn_mask is None else attn_mask[:seq_len, :seq_len].unsqueeze(0) + add_mask
            x = x + parts["positional_embedding"][:seq_len].to(cast_dtype)
        else:
            x = x + parts["positional_embedding"].to(cast_dtype)
        idx = self._pool_index(ids, parts)
        rows = torch.arange(ids.shape[0], device=ids.device)

        def pool_eot(h: torch.Tensor) -> torch.Tensor:
            return h[rows, idx].float()

        with record_outputs(list(transformer.resblocks) if return_layers else [], pool_eot) as states:
            x = transformer(x, attn_mask=attn_mask)
        if tower is not None and tower.cls_emb is not None:
            pooled = parts["ln_final"](text_global_pool(x, pool_type="last"))
        else:
            x = parts["ln_final"](x)
            pooled = text_global_pool(x, ids, parts["pool_type"], eos_token_id=parts["eos_id"])
        proj = parts["text_projection"]
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return (pooled, list(states)) if return_layers else pooled

    def encode_text(self, tokens: Any, return_layers: bool = False) -> Any:
        t = as_tokens(tokens).to(self._device())
        if not return_layers:
            return self.clip.encode_text(t.input_ids)
        return self.encode_text_embeddings(self.token_embeddings(t), t, return_layers=True)

    # ------------------------------------------------------------------ identity

    def describe(self) -> dict[str, Any]:
        v = self.clip.visual
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "image_size": self.image_size,
            "family": FAMILY,
            "architecture": self.architecture,
            "vision": type(v).__name__,
            "params": count_params(self.clip),
            "embed_dim": self.embed_dim,
            "token_dim": self.token_dim,
            "random_weights": str(self.weights_id).startswith("random-seed"),  # advisor.weights
        }

    def identity(self) -> str:
        return f"open_clip|{self.name}|{self.pretrained or ''}|{self.image_size}|{self.weights_id}"


def _to_pil(arr: torch.Tensor) -> Any:
    from PIL import Image

    return Image.fromarray(arr.cpu().numpy()).convert("RGB")
