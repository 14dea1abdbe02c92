"""How a model name becomes an ``OpenClipModel``: any open_clip architecture with a
``pretrained`` tag or checkpoint path, ``hf-hub:ORG/REPO``, ``local-dir:DIR``, an OpenAI-layout
checkpoint given as the name, and two tiny random configs for tests (``tiny-vit``, ``tiny-rn``).

Every user-caused failure (unknown tag, missing weights offline, bad hub id) becomes one
``ModelLoadError`` line saying what is missing and how to provide it; ``weights_fingerprint``
names the weights for cache keys without building the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from advisor.errors import ModelLoadError

from . import online
from .common import file_sha256, seeded, tensor_hash
from .open_clip_model import OPENAI_MEAN, OPENAI_STD, OpenClipModel

INIT_SEED = 0  # random-init models (tiny configs, --pretrained omitted) are seeded: deterministic

#: Tiny random configs for tests: a 2-layer ViT and a 1-block-per-stage ModifiedResNet, both
#: with a 2-layer CLIP text tower over the real CLIP BPE vocabulary (context 77).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-vit": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
    "tiny-rn": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
}


def _offline() -> bool:
    return online.offline()


def _how_to_provide(what: str, hub_repo: str | None = None) -> str:
    state = online.missing_state()  # "could not be downloaded" or "not in the local cache ..."
    verb = "" if state.startswith("could") else "are "
    return f"weights for {what} {verb}{state}: {online.how_to_get(hub_repo)}"


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _tokenizer_for(name: str, cache_dir: str | None) -> Any:
    import open_clip

    try:
        return open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - hub/tokenizer download failures
        raise ModelLoadError(f"cannot load the tokenizer for {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


_SIMPLE_TOKENIZER: Any = None


def _simple_tokenizer() -> Any:
    global _SIMPLE_TOKENIZER
    if _SIMPLE_TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _SIMPLE_TOKENIZER = SimpleTokenizer(context_length=77)
    return _SIMPLE_TOKENIZER


def _transform(size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic", resize_mode: str = "shortest") -> Any:
    import open_clip

    return open_clip.image_transform(size, is_train=False, mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode)


def load_tiny(name: str, image_size: int | None, device: str) -> OpenClipModel:
    """A tiny random open_clip model, seeded (same weights every time), for tests."""
    from copy import deepcopy

    from open_clip.model import CLIP

    cfg = deepcopy(TINY_CONFIGS[name])
    size = image_size or cfg["vision_cfg"]["image_size"]
    if image_size and isinstance(cfg["vision_cfg"]["layers"], list) and image_size % 32:
        raise ModelLoadError(f"{name}: --image-size must be a multiple of 32 for a ModifiedResNet (got {image_size})")
    if image_size and not isinstance(cfg["vision_cfg"]["layers"], list) and image_size % cfg["vision_cfg"]["patch_size"]:
        raise ModelLoadError(f"{name}: --image-size must be a multiple of the patch size {cfg['vision_cfg']['patch_size']} (got {image_size})")
    cfg["vision_cfg"]["image_size"] = size
    with seeded(INIT_SEED):
        clip = CLIP(**cfg)
    clip = clip.to(device).eval()
    return OpenClipModel(
        clip,
        _simple_tokenizer(),
        name=name,
        pretrained=None,
        architecture=name,
        preprocess=_transform(size, OPENAI_MEAN, OPENAI_STD),
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        weights_id=f"random-seed{INIT_SEED}:" + tensor_hash(clip.state_dict()),
    )


def _resolve_pretrained(arch: str, pretrained: str | None, cache_dir: str | None) -> tuple[str | None, dict, str]:
    """Validate ``--pretrained`` for ``arch``; returns (checkpoint path or None, tag cfg, weights id).

    Finds the weights without a network when HF_HUB_OFFLINE is set, and turns every failure
    into one line saying which weights are missing and how to provide them.
    """
    import open_clip

    if pretrained is None:
        return None, {}, f"random-seed{INIT_SEED}"
    if os.path.isfile(pretrained):
        return pretrained, {}, "sha256:" + file_sha256(pretrained, _memo_dir())
    tags = open_clip.list_pretrained_tags_by_model(arch)
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        if _looks_like_path(pretrained):
            raise ModelLoadError(f"checkpoint file not found: {pretrained}")
        valid = ", ".join(tags) if tags else "none (this architecture has no published weights; pass a checkpoint path)"
        raise ModelLoadError(f"unknown pretrained tag {pretrained!r} for {arch} (valid: {valid}; or a checkpoint file path)")
    online.go_offline_unless_reachable(_download_url(arch, pretrained))  # fail fast: no minute of retries
    try:
        if _offline() and not cfg.get("hf_hub") and cfg.get("url"):
            target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
            if not target.is_file():
                raise FileNotFoundError(target)
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - network / hub-offline errors of every flavour
        raise ModelLoadError(_how_to_provide(f"{arch} pretrained={pretrained!r}")) from None
    if not path:
        raise ModelLoadError(_how_to_provide(f"{arch} pretrained={pretrained!r}"))
    return path, cfg, f"{pretrained}:sha256:" + file_sha256(path, _memo_dir())


def _memo_dir() -> Path | None:
    try:
        from advisor.config import cache_dir

        return cache_dir()
    except Exception:  # noqa: BLE001
        return None


def _from_state_dict_file(path: str, image_size: int | None, device: str) -> tuple[nn.Module, str]:
    """A checkpoint file given as the model name: infer an OpenAI-layout CLIP from its shapes."""
    from open_clip.model import build_model_from_openai_state_dict

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "token_embedding.weight" not in {k.removeprefix("module.") for k in obj}:
        raise ModelLoadError(
            f"{path} is not an OpenAI-layout CLIP state dict; use --model ARCH --pretrained {path} (or a local-dir:DIR with open_clip_config.json)"
        )
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        clip = build_model_from_openai_state_dict(dict(sd), quick_gelu=True, cast_dtype=None)
        # The builder casts weights to fp16 (OpenAI's release format); reload them at full precision.
        clip = clip.float()
        clip.load_state_dict({k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")})
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot build a CLIP model from {path}: {str(exc).splitlines()[0]}") from None
    if image_size and image_size != clip.visual.image_size:
        raise ModelLoadError(f"{path}: --image-size is fixed by the checkpoint ({clip.visual.image_size}) for checkpoint-as-model")
    return clip.to(device).eval(), "sha256:" + file_sha256(path, _memo_dir())


def _download_url(name: str, pretrained: str | None) -> str:
    """Where the weights of ``name``/``pretrained`` would be downloaded from: a tag's own URL
    (OpenAI's tags live outside the Hugging Face hub) or the hub endpoint."""
    import open_clip

    if pretrained and not name.startswith(("hf-hub:", "local-dir:")) and not os.path.isfile(pretrained):
        cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
        if cfg.get("url") and not cfg.get("hf_hub"):
            return str(cfg["url"])
    return online.hub_endpoint()


def load_open_clip(name: str, pretrained: str | None, image_size: int | None, cache_dir: str | None, device: str) -> OpenClipModel:
    """Load any open_clip model; every user-caused failure becomes a one-line ModelLoadError."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ModelLoadError(f"--image-size must be a positive number of pixels (got {image_size!r})")  # 0 is not "default"
    if name in TINY_CONFIGS:
        if pretrained is not None:
            raise ModelLoadError(f"{name} is a random test model; it takes no --pretrained")
        return load_tiny(name, image_size, device)

    # A checkpoint path given as the model name.
    if not name.startswith(("hf-hub:", "local-dir:")) and os.path.exists(name):
        if not os.path.isdir(name):
            return _checkpoint_model(name, image_size, device)
        name = "local-dir:" + name

    online.go_offline_unless_reachable(_download_url(name, pretrained))  # fail fast: no minute of retries
    kwargs: dict[str, Any] = {"device": device, "cache_dir": cache_dir}
    if image_size:
        kwargs["force_image_size"] = image_size
    if name.startswith("hf-hub:"):
        clip, preprocess, weights_id = _from_hub(name, pretrained, kwargs)
    elif name.startswith("local-dir:"):
        clip, preprocess, weights_id = _from_local_dir(name, kwargs)
    else:
        clip, preprocess, weights_id = _from_architecture(name, pretrained, kwargs, cache_dir)
    clip = clip.eval()
    pcfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    return OpenClipModel(
        clip,
        _tokenizer_for(name, cache_dir),
        name=name,
        pretrained=pretrained,
        architecture=name,
        preprocess=preprocess,
        mean=pcfg.get("mean", OPENAI_MEAN),
        std=pcfg.get("std", OPENAI_STD),
        weights_id=weights_id,
        resize_mode=pcfg.get("resize_mode", "shortest"),
    )


def _checkpoint_model(path: str, image_size: int | None, device: str) -> OpenClipModel:
    """A checkpoint file given as the model name (OpenAI layout)."""
    clip, wid = _from_state_dict_file(path, image_size, device)
    size = int(clip.visual.image_size if isinstance(clip.visual.image_size, int) else clip.visual.image_size[0])
    return OpenClipModel(
        clip, _simple_tokenizer(), name=os.path.abspath(path), pretrained=None, architecture="openai-layout-checkpoint",
        preprocess=_transform(size, OPENAI_MEAN, OPENAI_STD), mean=OPENAI_MEAN, std=OPENAI_STD, weights_id=wid,
    )


def _from_hub(name: str, pretrained: str | None, kwargs: dict[str, Any]) -> tuple[Any, Any, str]:
    """An ``hf-hub:ORG/REPO`` model: (model, preprocess, weights id)."""
    import open_clip

    if pretrained is not None:
        raise ModelLoadError(f"{name}: --pretrained is not used with hf-hub: ids (the repo holds the weights)")
    repo = name[len("hf-hub:"):]
    if not repo or repo.count("/") != 1:
        raise ModelLoadError(f"bad hf-hub id {name!r}: expected hf-hub:ORG/REPO")
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    except Exception:  # noqa: BLE001
        raise ModelLoadError(_how_to_provide(name, hub_repo=repo)) from None
    return clip, preprocess, "hub:" + repo


def _from_local_dir(name: str, kwargs: dict[str, Any]) -> tuple[Any, Any, str]:
    """A ``local-dir:PATH`` model (an open_clip export): (model, preprocess, weights id)."""
    import open_clip

    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    weights_id = "local-dir"
    ckpt = next((p for p in sorted(Path(name[len('local-dir:'):]).glob("*")) if p.suffix in (".bin", ".pt", ".safetensors")), None)
    if ckpt is not None:
        weights_id = "sha256:" + file_sha256(ckpt, _memo_dir())
    return clip, preprocess, weights_id


def _from_architecture(arch: str, pretrained: str | None, kwargs: dict[str, Any],
                       cache_dir: str | None) -> tuple[Any, Any, str]:
    """An open_clip architecture with a pretrained tag or weights file: (model, preprocess,
    weights id)."""
    import open_clip

    if arch not in open_clip.list_models():
        raise ModelLoadError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    path, tag_cfg, weights_id = _resolve_pretrained(arch, pretrained, cache_dir)
    if tag_cfg.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    try:
        with seeded(INIT_SEED):
            clip, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=path, pretrained_text=path is None and not _offline(), **kwargs
            )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _architecture_error(arch, pretrained, path, exc) from None
    return clip, preprocess, weights_id


def _architecture_error(arch: str, pretrained: str | None, path: str | None, exc: Exception) -> ModelLoadError:
    """The one line for an architecture that could not be built: what is missing offline, or
    open_clip's own first line."""
    import open_clip

    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if path is None and ("offline" in msg.lower() or "connect" in msg.lower() or "hub" in msg.lower()):
        hf_text = (open_clip.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_model_name")
        if hf_text:
            return ModelLoadError(f"{arch} builds its text tower from the Hugging Face model {hf_text}, which is "
                                  f"{online.missing_state()}: {online.how_to_get(hf_text)}")
        return ModelLoadError(_how_to_provide(arch))
    return ModelLoadError(f"cannot load {arch} with pretrained={pretrained!r}: {msg}")


def weights_fingerprint(name: str, pretrained: str | None, image_size: int | None, cache_dir: str | None) -> str:
    """A cheap stand-in for ``identity()`` used in cache keys: never builds the model."""
    import open_clip

    versions = f"torch={torch.__version__},open_clip={open_clip.__version__}"
    base = f"open_clip|{name}|{pretrained or ''}|{image_size or ''}"
    if name in TINY_CONFIGS:
        from advisor.specs import stable_hash

        return f"{base}|random-seed{INIT_SEED}:cfg-{stable_hash(TINY_CONFIGS[name])}|{versions}"
    if not name.startswith(("hf-hub:", "local-dir:")) and os.path.isfile(name):
        return f"{base}|sha256:{file_sha256(name, _memo_dir())}"
    if name.startswith("local-dir:") or os.path.isdir(name):
        folder = Path(name.removeprefix("local-dir:"))
        files = sorted(p for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".safetensors", ".json"))
        return f"{base}|" + ",".join(f"{p.name}:{file_sha256(p, _memo_dir())}" for p in files)
    if name.startswith("hf-hub:"):
        return f"{base}|hub|{versions}"
    _, _, weights_id = _resolve_pretrained(name, pretrained, cache_dir)
    return f"{base}|{weights_id}" + (f"|{versions}" if pretrained is None else "")
