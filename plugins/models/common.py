"""Pieces every model plugin shares: the token batch type, batched pixel preprocessing,
per-layer recording through forward hooks, and hashing of weights.

Kept in one place so open_clip and lit-offline models behave the same way where the
``VisionLanguageModel`` protocol (advisor/specs/models.py) leaves room: what ``tokenize`` returns, how
a uint8 batch becomes pixels, how per-layer states are pooled.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F


class Tokens(dict):
    """What ``model.tokenize`` returns: ``{"input_ids": (B,L) long, "attention_mask": (B,L) long}``.

    A dict (so towers that need a mask get one) with the conveniences of a tensor batch:
    ``.to(device)``, ``.input_ids``, ``.select(index)``. Every model method that takes tokens
    also accepts a bare ``input_ids`` LongTensor.
    """

    @property
    def input_ids(self) -> torch.Tensor:
        return self["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self["attention_mask"]

    def to(self, device: Any) -> "Tokens":
        return Tokens({k: v.to(device) for k, v in self.items()})

    def select(self, index: Any) -> "Tokens":
        """Rows ``index`` (an int slice, index tensor or list) of every field."""
        return Tokens({k: v[index] for k, v in self.items()})

    @property
    def shape(self) -> torch.Size:
        return self["input_ids"].shape


def as_tokens(tokens: Any, pad_id: int = 0) -> Tokens:
    """Accept ``Tokens``, a plain dict or a bare ``input_ids`` tensor."""
    if isinstance(tokens, Tokens):
        return tokens
    if isinstance(tokens, dict):
        return Tokens(tokens)
    if isinstance(tokens, torch.Tensor):
        return Tokens(input_ids=tokens, attention_mask=(tokens != pad_id).long())
    raise TypeError(f"expected Tokens or a LongTensor of token ids, got {type(tokens).__name__}")


# ------------------------------------------------------------------------------ pixels


def uint8_batch_to_pixels(
    batch: torch.Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """(B,H,W) or (B,H,W,3) uint8 -> (B,3,size,size) float, normalised.

    Resize the shorter side to ``size`` (bicubic with antialiasing, PyTorch's PIL-compatible
    kernel), centre-crop to a square, scale to [0,1], normalise. Vectorised over the batch so
    small in-memory images (8-28 px) never go through one PIL call each.
    """
    x = batch
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    x = x.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        if h <= w:
            nh, nw = size, max(size, int(round(w * size / h)))
        else:
            nh, nw = max(size, int(round(h * size / w))), size
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    # Round-trip through uint8 like a PIL resize does, so PIL and array paths agree exactly.
    x = x.round().clamp_(0, 255) / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def pil_to_uint8(image: Any) -> torch.Tensor:
    """A PIL image -> (H,W,3) uint8 tensor."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy())


# ------------------------------------------------------------------------------ layers


@contextmanager
def record_outputs(modules: Sequence[torch.nn.Module], pool: Callable[[Any], torch.Tensor]) -> Iterator[list]:
    """Forward hooks on ``modules`` that append ``pool(output)`` to the yielded list, in call order."""
    out: list[torch.Tensor] = []
    handles = []

    def hook(_module: Any, _inp: Any, output: Any) -> None:
        if isinstance(output, tuple):
            output = output[0]
        out.append(pool(output))

    for m in modules:
        handles.append(m.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def mean_pool_masked(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens where ``mask`` is 1: sentence-transformers' mean pooling."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


# ------------------------------------------------------------------------------ hashing


def tensor_hash(tensors: dict[str, torch.Tensor], n: int = 16) -> str:
    """Hash of named tensors (names, shapes, dtypes and bytes), independent of insertion order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:n]


def file_sha256(path: str | os.PathLike, memo_dir: Path | None = None, n: int = 16) -> str:
    """sha256 of a (possibly large) weights file, memoised by (path, size, mtime) so big
    checkpoints are read once."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    memo: dict[str, str] = {}
    memo_file = memo_dir / "weights-hashes.json" if memo_dir is not None else None
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if key in memo:
            return memo[key][:n]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_file is not None:
        memo[key] = digest
        try:
            memo_file.write_text(json.dumps(memo, indent=1))
        except OSError:
            pass
    return digest[:n]


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
