"""The interface every model plugin implements (``VisionLanguageModel``), and a model plugin's
registration (``ModelSource``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable


from .requests import ModelSpec


@runtime_checkable
class VisionLanguageModel(Protocol):
    """The interface tuners and signals share, implemented by every model plugin.

    Implementations are ``torch.nn.Module`` subclasses. Encoders return *unnormalised*
    joint-space embeddings; callers normalise. ``logit_scale`` is a learnable scalar parameter
    holding log(temperature) as in open_clip.

    Prompt learning (CoOp, ContCoOp) needs to reach the text tower's input embeddings:
    ``tokenize`` -> ``token_embeddings(tokens)`` -> edit positions -> ``encode_text_embeddings``.
    Learned context vectors are inserted at positions ``[context_offset, context_offset + M)``
    of a prompt built as ``" ".join(["X"] * M) + " " + text``.
    """

    name: str
    image_size: int
    embed_dim: int
    token_dim: int  # width of the text tower's token-embedding space
    context_offset: int  # index of the first token after the start token
    logit_scale: Any  # torch.nn.Parameter

    def preprocess(self, image: Any) -> Any:
        """PIL image -> float tensor (3, image_size, image_size), normalised for the tower."""

    def encode_image(self, pixels: Any, return_layers: bool = False) -> Any:
        """(B,3,H,W) -> (B,d); with return_layers: (emb, [per-layer pooled (B, w_l)])."""

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Texts -> token ids (LongTensor (B,L)) plus whatever mask the tower needs (a dict)."""

    def encode_text(self, tokens: Any, return_layers: bool = False) -> Any:
        """Tokens from ``tokenize`` -> (B,d); with return_layers: (emb, [per-layer (B, w_l)])."""

    def token_embeddings(self, tokens: Any) -> Any:
        """Tokens -> (B,L,token_dim) input embeddings (before positions are added)."""

    def encode_text_embeddings(self, embeddings: Any, tokens: Any) -> Any:
        """Input embeddings (B,L,token_dim) with the tokens they came from -> (B,d)."""

    def describe(self) -> dict[str, Any]:
        """Descriptors: architecture, family, params, embed_dim, image_size, pretrained."""

    def identity(self) -> str:
        """A string that changes whenever the weights or working resolution change."""


@dataclass(frozen=True)
class ModelSource:
    """A model plugin's registration.

    ``load(spec, device)`` returns a VisionLanguageModel on ``device``. A ``matches`` function
    lets one source accept open-ended names (every open_clip architecture, ``hf-hub:`` ids,
    checkpoint paths); otherwise the source answers to ``name`` only. ``family`` groups models
    that share towers and training (the predictor's model-family feature; the loaded model's
    ``describe()["family"]`` is the same value). ``offline``: weights install with a package.
    """

    name: str
    load: Callable[[ModelSpec, str], Any]
    description: str = ""
    matches: Callable[[str], bool] | None = None
    offline: bool = True
    family: str = ""
