"""Model + dataset split -> Embeddings, in one batched pass, cached on disk.

- ``load_model`` resolves a ModelSpec through the model plugins, once per (spec, device) in a
  ``Session`` (``advisor.session``; ``session_model`` when the device is already resolved); no
  module keeps models of its own. ``model_source`` resolves the name once per session, and the
  weights check, the cache key and the load all use that resolution.
- ``encode_images`` runs the image tower over an ImageSet: a torch DataLoader (workers, pinned
  memory on CUDA) over ``imageset.pil(i)`` + ``model.preprocess`` for files, and a vectorised
  path (``model.preprocess_batch`` on uint8 batches) for in-memory arrays, which is what makes
  8-28 px offline sources cheap. bf16 autocast on CUDA, fp32 on CPU; tqdm on stderr.
- ``embed`` ties dataset loading, split / few-shot / sampling, image and class-text encoding
  and the disk cache (``advisor.cache``) together. A cache hit never loads the model.

Embeddings are raw (unnormalised) joint-space features; metrics normalise as their method says.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from . import cache
from .config import resolve_device
from .errors import DatasetError, ModelLoadError
from .session import Session, session_or_new
from .specs import DatasetSpec, Embeddings, ImageSet, ModelSource, ModelSpec, VisionLanguageModel
from .terminal import phase, progress_bar

#: Counters for tests and benchmarks: how often a model was really loaded and run.
stats: dict[str, int] = {"model_loads": 0, "image_batches": 0, "text_batches": 0}

#: Part of every cache key: bump when the preprocessing or pooling arithmetic changes.
TRANSFORM_VERSION = "1"

#: The working resolutions ``--image-size`` may ask for: below 16 px no tower has a patch grid,
#: above 2048 px one image's activations take gigabytes and a CPU pass takes hours.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048


def check_image_size(spec: ModelSpec) -> None:
    """Refuse an ``--image-size`` outside ``MIN_IMAGE_SIZE..MAX_IMAGE_SIZE`` in one line, before
    any dataset or model is loaded."""
    size = spec.image_size
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ModelLoadError(f"--image-size must be a positive number of pixels from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
                             f"(got {size})")


# ------------------------------------------------------------------------------ models


def model_source(spec: ModelSpec, session: Session | None = None) -> ModelSource:
    """The model source ``spec.name`` resolves to (``advisor.plugins.get_model_source``: an
    unknown name is one line), resolved once per session: every later step of the session
    (the weights check, the cache key, the load) uses this one resolution."""
    from .plugins import get_model_source

    return session_or_new(session).get("model_source", spec.name, lambda: get_model_source(spec.name))


def load_model(spec: ModelSpec | str, device: str | None = None, *, fresh: bool = False,
               session: Session | None = None) -> Any:
    """The VisionLanguageModel for ``spec`` on ``device``, in eval mode.

    Loaded once per (spec, device) in ``session`` (a fresh session when none is given): signals
    and evaluation share one instance. Pass ``fresh=True`` for a private copy you intend to
    modify (fine-tuning), so the shared one stays pristine.
    """
    if isinstance(spec, str):
        spec = ModelSpec(name=spec)
    check_image_size(spec)
    return session_model(spec, resolve_device(device), session_or_new(session), fresh=fresh)


def session_model(spec: ModelSpec, device: str, session: Session, fresh: bool = False) -> Any:
    """``load_model`` on a device already resolved (``config.resolve_device``): the model
    ``session`` holds for (spec, device), loaded from the session's resolution of the name."""
    def make() -> Any:
        return open_model(spec, device, model_source(spec, session))

    return make() if fresh else session.get("model", (spec, device), make)


def open_model(spec: ModelSpec, device: str, source: ModelSource) -> Any:
    """Load the model now from its resolved ``source``, on a device already resolved
    (``config.resolve_device``); ``load_model`` keeps it in a session."""
    check_image_size(spec)
    with phase(f"loading model {spec.name}"):
        model = source.load(spec, device)
    stats["model_loads"] += 1
    if not isinstance(model, VisionLanguageModel):
        raise ModelLoadError(f"model source {source.name!r} returned {type(model).__name__}, which lacks the VisionLanguageModel interface")
    model.eval()
    return model


def model_fingerprint(spec: ModelSpec, source: ModelSource | None = None) -> str:
    """What identifies a model's weights *without loading it*, for cache keys (``source``: the
    spec's resolved model source, resolved here when not given).

    A model plugin may attach ``fingerprint(spec) -> str`` to its ``load`` callable (the
    built-ins hash their weight files); otherwise the spec itself (name, pretrained, image size)
    is the key, and ``advisor cache clear`` is needed after changing that model's weights.
    """
    from .plugins import get_model_source, provider_of

    source = source if source is not None else get_model_source(spec.name)
    fp = getattr(source.load, "fingerprint", None)
    if callable(fp):
        return str(fp(spec))
    return f"{provider_of('models', source.name)}|{spec.key()}"


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _autocast(device: Any) -> Any:
    import contextlib

    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_for(device: str) -> str:
    return "bf16" if str(device).startswith("cuda") else "fp32"


def _progress(total: int, quiet: bool, desc: str) -> Any:
    return progress_bar(total, desc, "img", quiet)


# ------------------------------------------------------------------------------ images


class _PILImages:
    """DataLoader dataset: item i -> (pixels or uint8 array, None) or (None, error message).

    Errors travel as values so a corrupt file is reported by path in the main process
    (DataLoader re-raises worker exceptions with a multi-line message). When the model's
    ``preprocess`` is by definition ``preprocess_batch`` on one image (``batch_preprocess_exact``),
    items stay uint8 arrays and ``_Collate`` preprocesses a whole batch in one vectorised call.
    """

    def __init__(self, images: ImageSet, preprocess: Any, raw: bool) -> None:
        self.images = images
        self.preprocess = preprocess
        self.raw = raw

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, str | None]:
        try:
            image = self.images.pil(i)
            return (np.asarray(image, dtype=np.uint8) if self.raw else self.preprocess(image)), None
        except DatasetError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a preprocessing failure on one file
            return None, f"cannot preprocess image {self.images.images[i]}: {exc}"


class _Collate:
    def __init__(self, preprocess_batch: Any = None) -> None:
        self.preprocess_batch = preprocess_batch

    def __call__(self, batch: list[tuple[Any, str | None]]) -> Any:
        import torch

        for _, err in batch:
            if err is not None:
                return err
        items = [x for x, _ in batch]
        if self.preprocess_batch is None:
            return torch.stack(items)
        if len({a.shape for a in items}) == 1:
            return self.preprocess_batch(torch.from_numpy(np.stack(items)))
        return torch.cat([self.preprocess_batch(torch.from_numpy(a)[None]) for a in items])


def choose_num_workers(images: ImageSet, preprocess: Any, cpus: int | None = None, probe: int = 4) -> int:
    """DataLoader workers for decoding ``images``: 0 unless a worker pays for itself.

    0 for in-memory arrays (nothing to decode), on machines with at most 2 CPUs (a worker takes
    a core from the model's forward pass; ``benchmarks/embed.py`` measures 0 and 1 workers side by
    side), for fewer than 64 images, and when decoding plus preprocessing one image costs under
    1 ms (a worker's start-up and inter-process copies cost more than it saves). Otherwise half
    the CPUs, at most 4, so the forward pass keeps the other half.
    """
    if _uses_fast_path(images):
        return 0
    cpus = cpus or _cpu_count()
    if cpus <= 2 or len(images) < 64:
        return 0
    costs = []  # CPU time, not wall time: on a busy machine the wall clock measures the neighbours
    for i in range(min(probe, len(images))):
        start = time.process_time()
        preprocess(images.pil(i))
        costs.append(time.process_time() - start)
    return 0 if min(costs) < 1e-3 else min(4, cpus // 2)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _uses_fast_path(images: ImageSet, model: Any = None) -> bool:
    arr = images.images
    return isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and (model is None or hasattr(model, "preprocess_batch"))


def encode_images(
    model: Any,
    images: ImageSet,
    *,
    batch_size: int = 64,
    device: str | None = None,
    num_workers: int | None = None,
    quiet: bool = False,
    with_layers: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
    """Image embeddings (N,d) float32, plus pooled per-layer states (N,w_l) with ``with_layers``.

    ``device`` defaults to where the model is; the model is moved there if it differs.
    ``num_workers=None`` chooses the DataLoader workers (``choose_num_workers``). On CUDA, batches
    come from pinned memory and are copied with ``non_blocking=True``.
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    dev = torch.device(resolve_device(device)) if device else _model_device(model)
    if _model_device(model) != dev:
        model.to(dev)
    n = len(images)
    outs: list[np.ndarray] = []
    layer_outs: list[list[np.ndarray]] = []

    def run(pixels: Any) -> None:
        pixels = pixels.to(dev, non_blocking=True)
        with _autocast(dev):
            res = model.encode_image(pixels, return_layers=with_layers)
        emb, layers = res if with_layers else (res, None)
        outs.append(emb.float().cpu().numpy())
        if layers is not None:
            layer_outs.append([layer.float().cpu().numpy() for layer in layers])
        stats["image_batches"] += 1

    bar = _progress(n, quiet, "embedding images")
    try:
        with torch.inference_mode():
            if _uses_fast_path(images, model):
                arr = images.images
                assert isinstance(arr, np.ndarray)
                for start in range(0, n, batch_size):
                    chunk = torch.from_numpy(np.array(arr[start : start + batch_size], copy=True))  # sources may be read-only
                    if dev.type == "cuda":
                        chunk = chunk.pin_memory().to(dev, non_blocking=True)
                    run(model.preprocess_batch(chunk))
                    bar.update(len(chunk))
            else:
                raw = bool(getattr(model, "batch_preprocess_exact", False)) and hasattr(model, "preprocess_batch")
                if num_workers is None:
                    num_workers = choose_num_workers(images, model.preprocess)
                loader = torch.utils.data.DataLoader(
                    _PILImages(images, model.preprocess, raw),
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=num_workers,
                    pin_memory=dev.type == "cuda",
                    collate_fn=_Collate(model.preprocess_batch if raw else None),
                    persistent_workers=False,
                )
                for batch in loader:
                    if isinstance(batch, str):
                        raise DatasetError(batch)
                    run(batch)
                    bar.update(len(batch))
    finally:
        bar.close()
    d = int(getattr(model, "embed_dim", 0) or 0)
    image = np.concatenate(outs) if outs else np.zeros((0, d), dtype=np.float32)
    if not with_layers:
        return image
    layers = [np.concatenate([b[i] for b in layer_outs]) for i in range(len(layer_outs[0]))] if layer_outs else []
    return image, layers


# ------------------------------------------------------------------------------ texts


def encode_texts(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | None = None,
    with_layers: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
    """Text embeddings (M,d) float32 (+ per-layer pooled states with ``with_layers``)."""
    import torch

    dev = torch.device(resolve_device(device)) if device else _model_device(model)
    if _model_device(model) != dev:
        model.to(dev)
    outs: list[np.ndarray] = []
    layer_outs: list[list[np.ndarray]] = []
    texts = list(texts)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = model.tokenize(texts[start : start + batch_size])
            tokens = tokens.to(dev) if hasattr(tokens, "to") else tokens
            with _autocast(dev):
                res = model.encode_text(tokens, return_layers=with_layers)
            emb, layers = res if with_layers else (res, None)
            outs.append(emb.float().cpu().numpy())
            if layers is not None:
                layer_outs.append([layer.float().cpu().numpy() for layer in layers])
            stats["text_batches"] += 1
    d = int(getattr(model, "embed_dim", 0) or 0)
    out = np.concatenate(outs) if outs else np.zeros((0, d), dtype=np.float32)
    if not with_layers:
        return out
    layers = [np.concatenate([b[i] for b in layer_outs]) for i in range(len(layer_outs[0]))] if layer_outs else []
    return out, layers


def format_prompt(template: str, class_name: str) -> str:
    """``"a photo of a {}."`` -> ``"a photo of a cat."`` (any spelling of ``data.PLACEHOLDERS``;
    a template without one gets the name appended)."""
    from .data import normalize_template

    template = normalize_template(template)
    if "{}" in template:
        return template.replace("{}", class_name)
    return f"{template} {class_name}".strip()


def class_text_features(
    model: Any,
    class_names: Sequence[str],
    template: str | Sequence[str],
    device: str | None = None,
) -> np.ndarray:
    """(C,d) class-prompt embeddings. One template: raw (unnormalised) features. Several:
    CLIP's prompt ensemble, the mean of the L2-normalised per-template features."""
    templates = [template] if isinstance(template, str) else list(template)
    if len(templates) == 1:
        return encode_texts(model, [format_prompt(templates[0], c) for c in class_names], device=device)  # type: ignore[return-value]
    prompts = [format_prompt(t, c) for t in templates for c in class_names]
    feats = encode_texts(model, prompts, device=device)
    assert isinstance(feats, np.ndarray)
    feats = feats.reshape(len(templates), len(class_names), -1)
    feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True).clip(1e-12)
    return feats.mean(0).astype(np.float32)


# ------------------------------------------------------------------------------ embed


def select_images(dataset_spec: DatasetSpec | str, *, split: str = "train", shots: int | None = None, seed: int = 0,
                  max_images: int | None = None, bundle: Any = None) -> tuple[Any, ImageSet]:
    """Load a dataset (unless its loaded ``bundle`` is given) and pick the images ``embed``
    would use: split, few-shot, sample."""
    from .data import few_shot, get_split, load_dataset, sample

    bundle = bundle if bundle is not None else load_dataset(dataset_spec)
    images = get_split(bundle, split)
    if shots is not None:
        images = few_shot(images, shots, seed, class_names=bundle.class_names)
    images = sample(images, max_images, seed)
    if len(images) == 0:
        raise DatasetError(f"dataset {bundle.name!r} has no {split} images to embed")
    return bundle, images


def cache_key(model_spec: ModelSpec, bundle: Any, images: ImageSet, *, split: str, device: str, with_layers: bool,
              source: ModelSource | None = None) -> tuple[str, dict[str, Any]]:
    """The cache key for one embedding pass and the parts it hashes (no model is loaded;
    ``source``: the spec's resolved model source)."""
    fast = _uses_fast_path(images)
    parts = {
        "model": model_fingerprint(model_spec, source),
        "model_spec": model_spec.key(),
        "dataset": bundle.fingerprint,
        "split": split,
        "split_hash": images.split_hash(),
        "transform": f"{'array' if fast else 'pil'}-v{TRANSFORM_VERSION}",
        "precision": precision_for(device),
        "templates": list(bundle.templates),
        "class_names": list(bundle.class_names),
        "with_layers": bool(with_layers),
    }
    return cache.make_key(parts), parts


def embed(
    model_spec: ModelSpec | str,
    dataset_spec: DatasetSpec | str,
    *,
    split: str = "train",
    shots: int | None = None,
    seed: int = 0,
    max_images: int | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    use_cache: bool = True,
    with_layers: bool = False,
    quiet: bool = False,
    bundle: Any = None,
    session: Session | None = None,
) -> Embeddings:
    """Embed one split of a dataset with one model; served from the disk cache when possible.
    ``bundle``: the dataset already loaded from ``dataset_spec`` (not loaded a second time).
    ``session``: where the model is loaded once (``advisor.session``; a fresh one when None).

    ``meta`` records: model (name), model_identity, model_desc, dataset, dataset_fingerprint,
    dataset_desc, split, split_hash, shots, seed, n, d, image_size, transform, precision,
    device, cache_hit, cache_key, seconds (embedding time of the original pass), images_per_s,
    templates.
    """
    if isinstance(model_spec, str):
        model_spec = ModelSpec(name=model_spec)
    check_image_size(model_spec)  # cheap checks first: before the dataset loads
    if isinstance(dataset_spec, str):
        dataset_spec = DatasetSpec(name=dataset_spec)
    device, session = resolve_device(device), session_or_new(session)
    with phase(f"loading {dataset_spec.name} and looking up {model_spec.name}'s weights"):
        bundle, images = select_images(dataset_spec, split=split, shots=shots, seed=seed, max_images=max_images,
                                       bundle=bundle)
        key, parts = cache_key(model_spec, bundle, images, split=split, device=device, with_layers=with_layers,
                               source=model_source(model_spec, session))
    if use_cache:
        hit = cache.load(key)
        if hit is not None:
            hit.meta = {**hit.meta, "cache_hit": True, "cache_key": key}
            return hit

    model = load_model(model_spec, device, session=session)
    emb = _encode_pair(model, model_spec, bundle, images, device=device, batch_size=batch_size,
                       num_workers=num_workers, quiet=quiet, with_layers=with_layers)
    emb.meta = {**_embedding_meta(model, model_spec, bundle, images, emb, parts, split=split, shots=shots, seed=seed,
                                  max_images=max_images, device=device, with_layers=with_layers),
                "cache_key": key}
    if use_cache:
        cache.save(key, emb)
    return emb


def _encode_pair(model: Any, model_spec: ModelSpec, bundle: Any, images: ImageSet, *, device: str, batch_size: int,
                 num_workers: int | None, quiet: bool, with_layers: bool) -> Embeddings:
    """The images and the class prompts encoded (``meta`` holds only the timings here)."""
    t0 = time.perf_counter()
    res = encode_images(model, images, batch_size=batch_size, device=device, num_workers=num_workers, quiet=quiet, with_layers=with_layers)
    t_img = time.perf_counter() - t0
    image, image_layers = res if with_layers else (res, None)
    templates = list(bundle.templates)
    text = class_text_features(model, bundle.class_names, templates, device=device)
    text_layers = None
    if with_layers:
        prompts = [format_prompt(t, c) for t in templates for c in bundle.class_names]
        _, text_layers = encode_texts(model, prompts, device=device, with_layers=True)
    return Embeddings(
        image=image,
        text=text,
        labels=np.asarray(images.labels, dtype=np.int64),
        class_names=list(bundle.class_names),
        image_layers=image_layers,
        text_layers=text_layers,
        meta={"seconds": time.perf_counter() - t0, "image_seconds": t_img},
        text_layer_rows="prompts",
    )


def _embedding_meta(model: Any, model_spec: ModelSpec, bundle: Any, images: ImageSet, emb: Embeddings,
                    parts: dict[str, Any], *, split: str, shots: int | None, seed: int, max_images: int | None,
                    device: str, with_layers: bool) -> dict[str, Any]:
    """What ``embed`` records about a fresh pass (see its docstring)."""
    from .data import dataset_descriptors

    image, seconds, t_img = emb.image, emb.meta["seconds"], emb.meta["image_seconds"]
    return {
        "model": model_spec.name,
        "pretrained": model_spec.pretrained,
        "model_identity": model.identity(),
        "model_fingerprint": parts["model"],
        "model_desc": model.describe(),
        "dataset": bundle.name,
        "dataset_fingerprint": bundle.fingerprint,
        "dataset_desc": dataset_descriptors(bundle),
        "split": split,
        "split_hash": parts["split_hash"],
        "shots": shots,
        "seed": seed,
        "max_images": max_images,
        "n": int(image.shape[0]),
        "n_images": int(image.shape[0]),
        "d": int(image.shape[1]),
        "embed_dim": int(image.shape[1]),
        "n_classes": len(bundle.class_names),
        "image_size": int(getattr(model, "image_size", 0) or 0),
        "transform": parts["transform"],
        "precision": parts["precision"],
        "device": device,
        "templates": list(bundle.templates),
        "with_layers": bool(with_layers),
        "seconds": round(seconds, 4),
        "image_seconds": round(t_img, 4),
        "images_per_s": round(len(images) / t_img, 2) if t_img > 0 else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cache_hit": False,
    }
