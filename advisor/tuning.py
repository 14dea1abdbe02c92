"""The tuners' shared toolkit: the pieces of every tuner's training loop, so tuners differ only in
what they train and which loss they minimise. (Training the *predictor* lives in advisor.predictor.)

- ``resolve_hparams``: tuner defaults < ``ctx.epochs/lr/batch_size`` < ``ctx.hparams``; unknown
  keys are a one-line ``TrainingError``.
- ``fit``: seeded mini-batches, SGD/AdamW, warm-up then cosine per step, bf16 autocast on CUDA
  (fp32 on CPU), ``ctx.progress`` after every step. Exceptions (including one raised by the
  progress callback) propagate untouched.
- ``clip_logits`` / ``clip_loss``: CE over ``exp(logit_scale)·norm(img)·norm(txt)ᵀ``, the IIMM
  repo's classification loss against fixed class prompts.
- ``ZeroShotAdapted`` / ``ModelAdapted``: the ``Adapted`` protocol for the untouched model and
  for a model whose own weights were tuned; ``top1_accuracy`` gives top-1 accuracy of any ``Adapted``.

Models are kept in ``eval()`` mode while training: dropout is off and normalisation statistics
(EfficientNet's BatchNorm) stay fixed, so the only tensors that change are the ones a tuner
trains. Tuners may modify ``ctx.model`` in place; ``advisor run`` passes them a copy.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embed import format_prompt
from .errors import TrainingError
from .specs import LOOP_HPARAMS, EpochEnd, TrainContext, Tuner
from .terminal import phase

#: open_clip clamps the learned temperature at 100 (logit_scale <= ln 100).
MAX_LOGIT_SCALE = math.log(100.0)

# --------------------------------------------------------------------------------------------
# Devices, precision, seeding
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for batch order and initialisation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed), plain fp32 elsewhere."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(obj: Any, device: str) -> Any:
    """Move a tensor, or the tensors of a dict/list/tuple (tokenizer outputs), to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return type(obj)({k: to_device(v, device) for k, v in obj.items()}) if isinstance(obj, dict) else {
            k: to_device(v, device) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter of ``module`` (restored on exit,
    also after an exception), so prompt learning never computes or stores weight gradients."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def count_trainable(params: nn.Module | Iterable[torch.Tensor]) -> int:
    """Number of scalar values a tuner trains (each tensor counted once)."""
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return int(total)


# --------------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------------


def resolve_hparams(tuner: str | Tuner, defaults: Mapping[str, Any], ctx: TrainContext,
                    extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, then ``ctx.epochs``/``lr``/``batch_size`` when given, then ``ctx.hparams``.

    Overrides are checked against declared types and bounds: a tuner's registration declares
    its own (``Tuner.hparams``); with only a name, the shared loop's (``LOOP_HPARAMS``) are
    checked and any other key of ``defaults`` or ``extra_keys`` is taken as given. Unknown keys
    and bad values (non-positive epochs, ``lr=Infinity`` ...) raise ``TrainingError`` with one line.
    """
    if isinstance(tuner, Tuner):
        name, specs = tuner.name, tuner.hparam_specs()
    else:
        name, specs = tuner, {h.name: h for h in LOOP_HPARAMS}
    known = set(defaults) | set(specs) | set(extra_keys)
    unknown = sorted(set(ctx.hparams or {}) - known)
    if unknown:
        raise TrainingError(
            f"unknown hyper-parameter(s) for {name}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    overrides = {key: getattr(ctx, key) for key in ("epochs", "lr", "batch_size") if getattr(ctx, key, None) is not None}
    overrides.update(ctx.hparams or {})
    hp = dict(defaults)
    for key, value in overrides.items():
        try:
            hp[key] = specs[key].parse(value) if key in specs else value
        except ValueError as exc:
            raise TrainingError(f"{name}: {exc}") from None
    return hp


def check_context(ctx: TrainContext, pixels_for: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate pixels/labels/class names; return (pixels, labels) as tensors on the CPU.

    ``pixels_for`` names why a tuner that trains inside the image tower needs pixels (cached
    features are not enough); without pixels it then raises a TrainingError saying so."""
    labels = torch.as_tensor(np.asarray(ctx.train_labels), dtype=torch.long).reshape(-1)
    if labels.numel() == 0:
        raise TrainingError("no training images")
    n_classes = len(ctx.class_names)
    if n_classes < 2:
        raise TrainingError(f"need at least 2 classes to train (got {n_classes})")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise TrainingError(f"training labels must lie in [0, {n_classes}) (got {int(labels.min())}..{int(labels.max())})")
    pixels = ctx.train_pixels
    if pixels is None and pixels_for:
        raise TrainingError(f"{pixels_for} and needs training pixels")
    if pixels is not None:
        pixels = torch.as_tensor(pixels)
        if pixels.shape[0] != labels.numel():
            raise TrainingError(f"{pixels.shape[0]} training images but {labels.numel()} labels")
    return pixels, labels


# --------------------------------------------------------------------------------------------
# Prompts and features
# --------------------------------------------------------------------------------------------


def class_prompts(class_names: Sequence[str], template: str) -> list[str]:
    return [format_prompt(template, str(c)) for c in class_names]


def encode_class_texts(model: Any, class_names: Sequence[str], template: str, device: str) -> torch.Tensor:
    """(C,d) text features of the class prompts; differentiable when grad is enabled."""
    tokens = to_device(model.tokenize(class_prompts(class_names, template)), device)
    with autocast(device):
        return model.encode_text(tokens).float()


@torch.no_grad()
def encode_frozen_images(model: Any, pixels: torch.Tensor, device: str, batch_size: int = 128) -> torch.Tensor:
    """(N,d) image features of a frozen image tower, computed once (float32, on ``device``)."""
    out = []
    for i in range(0, pixels.shape[0], batch_size):
        with autocast(device):
            out.append(model.encode_image(pixels[i : i + batch_size].to(device)).float())
    return torch.cat(out)


def frozen_image_features(ctx: TrainContext, pixels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """``ctx.image_features`` when the caller cached them, else one pass of the frozen tower."""
    if ctx.image_features is not None:
        cached = ctx.image_features
        feats = torch.as_tensor(cached if isinstance(cached, torch.Tensor) else np.asarray(cached))
        feats = feats.detach().float().to(ctx.device)
        if pixels is not None and feats.shape[0] != pixels.shape[0]:
            raise TrainingError(f"{feats.shape[0]} cached image features but {pixels.shape[0]} training images")
        return feats
    if pixels is None:
        raise TrainingError("neither training pixels nor cached image features were given")
    return encode_frozen_images(ctx.model, pixels, ctx.device, batch_size)


def logit_scale_value(model: Any) -> torch.Tensor:
    """exp(logit_scale), clamped at 100 as open_clip does."""
    return model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``scale · norm(img) @ norm(txt)ᵀ``: (B,C) logits of images against class texts."""
    return scale * F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
              scale: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy of the scaled cosine logits (the loss of CoOp and of the IIMM repo's fine-tuning)."""
    return F.cross_entropy(clip_logits(image_features, text_features, scale), labels)


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def make_optimizer(params: Sequence[torch.Tensor], hp: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``sgd`` (momentum) or ``adamw`` from ``hp`` (``optimizer``, ``lr``, ``weight_decay``, ``momentum``)."""
    params = list(params)
    if not params:
        raise TrainingError("nothing to train: the tuner selected no parameters")
    name = str(hp.get("optimizer", "adamw")).lower()
    wd = float(hp.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=float(hp.get("momentum", 0.9)), weight_decay=wd,
                               foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=wd, foreach=True)
    raise TrainingError(f"unknown optimizer {name!r} (known: adamw, sgd)")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, *,
                  warmup_type: str = "linear", warmup_lr: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: ``warmup_steps`` of warm-up, then cosine from the base lr to 0.

    ``warmup_type="linear"`` ramps from lr/warmup_steps to lr; ``"constant"`` holds ``warmup_lr``
    (CoOp: 1 epoch at 1e-5 before the cosine schedule).
    """
    base = optimizer.param_groups[0]["lr"]
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    if warmup_type not in ("linear", "constant"):
        raise TrainingError(f"unknown warmup_type {warmup_type!r} (known: linear, constant)")

    def factor(step: int) -> float:
        if step < warmup_steps:
            if warmup_type == "constant":
                return float(warmup_lr if warmup_lr is not None else base) / base
            return (step + 1) / (warmup_steps + 1)
        rest = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / rest)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches (the last one may be smaller; never empty)."""
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def fit(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[torch.Tensor, int, int], torch.Tensor],
    *,
    n: int,
    hp: Mapping[str, Any],
    ctx: TrainContext,
    generator: torch.Generator,
    after_step: Callable[[int], None] | None = None,
    adapted: Any = None,
) -> list[float]:
    """The shared loop: for each epoch, for each shuffled batch ``idx``: ``loss_fn(idx, step, total)``
    under autocast, backward, optimizer step, scheduler step, ``ctx.progress(step, total, loss)``.

    Returns the mean training loss of each epoch. A non-finite loss stops the run with a
    ``TrainingError`` (lower the learning rate). ``loss_fn`` may compute extra gradients itself
    (TPC-CMA's gradient-aware ramp) but must return the loss to minimise.

    After each epoch ``ctx.on_epoch(EpochEnd(...))`` sees ``adapted``, the tuner's ``Adapted``
    view of the model being trained (pass it so the runner can record validation and
    out-of-domain points of the learning curve). ``ctx.stop_after_epochs`` and ``ctx.deadline``
    end the loop early (a probe) without changing the schedule the steps follow.

    The deadline is checked after every optimiser step, not only at epoch ends, so one long
    epoch cannot overrun it by more than a step. A loop stopped inside an epoch returns the
    losses of the epochs it completed: the partial epoch gives no loss and no curve point (a
    point at epoch e always means e whole epochs, as in the history's curves, so a partial one
    could not be told apart from it). The last step of an epoch is left to the epoch-end check,
    after ``on_epoch``: a completed epoch keeps its point.
    """
    params = [p for p in params if p.requires_grad]
    epochs = int(hp["epochs"])
    bs = min(int(hp["batch_size"]), n)
    steps_per_epoch = math.ceil(n / bs)
    total = epochs * steps_per_epoch
    opt = make_optimizer(params, hp)
    warm = int(round(float(hp.get("warmup_epochs", 0)) * steps_per_epoch))
    sched = warmup_cosine(opt, total, warm, warmup_type=str(hp.get("warmup_type", "linear")),
                          warmup_lr=hp.get("warmup_lr"))
    losses: list[float] = []
    step = 0
    train_s = 0.0
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        running, count = 0.0, 0
        batches = batch_indices(n, bs, generator)
        for i, idx in enumerate(batches):
            opt.zero_grad(set_to_none=True)
            with autocast(ctx.device):
                loss = loss_fn(idx, step, total)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"training diverged (loss {value}) at step {step + 1}/{total}; lower the learning rate")
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += value * len(idx)
            count += len(idx)
            if after_step is not None:
                after_step(step)
            if ctx.progress is not None:
                ctx.progress(step, total, value)
            if i + 1 < len(batches) and past_deadline(ctx):
                return losses  # inside an epoch: the partial epoch gives no point (see above)
        losses.append(running / max(count, 1))
        train_s += time.perf_counter() - t_epoch
        if ctx.on_epoch is not None:
            ctx.on_epoch(EpochEnd(epoch=epoch + 1, epochs=epochs, step=step, total_steps=total, loss=losses[-1],
                                  train_s=train_s, adapted=adapted))
        if stop_early(ctx, epoch + 1):
            break
    return losses


def stop_early(ctx: TrainContext, epochs_done: int) -> bool:
    """Whether a probe ends here: ``ctx.stop_after_epochs`` reached or ``ctx.deadline`` passed."""
    if ctx.stop_after_epochs is not None and epochs_done >= int(ctx.stop_after_epochs):
        return True
    return past_deadline(ctx)


def past_deadline(ctx: TrainContext) -> bool:
    """Whether ``ctx.deadline`` (a ``time.monotonic()`` instant; None: none) has passed."""
    return ctx.deadline is not None and time.monotonic() >= float(ctx.deadline)


# --------------------------------------------------------------------------------------------
# Adapted models and evaluation
# --------------------------------------------------------------------------------------------


class ZeroShotAdapted:
    """The untouched model behind the ``Adapted`` protocol (zero-shot baseline; nothing to save)."""

    def __init__(self, model: Any, device: str | None = None):
        self.model = model
        self.device = device or _module_device(model)

    @torch.no_grad()
    def encode_image(self, pixels: Any) -> torch.Tensor:
        with autocast(self.device):
            return self.model.encode_image(torch.as_tensor(pixels).to(self.device)).float()

    @torch.no_grad()
    def class_text_features(self, class_names: Sequence[str], template: str) -> torch.Tensor:
        return encode_class_texts(self.model, class_names, template, self.device)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {}


class ModelAdapted(ZeroShotAdapted):
    """A model whose own weights were tuned (full fine-tuning, LoRA).

    ``trained`` names the parameters that were trained: ``adapter_state`` returns exactly those
    (as CPU copies), e.g. every weight for full fine-tuning, only the LoRA matrices for LoRA.
    """

    def __init__(self, model: nn.Module, trained: Mapping[str, torch.Tensor], device: str | None = None):
        super().__init__(model, device)
        self.trained = dict(trained)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in self.trained.items()}


def _module_device(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError):
        return "cpu"


@torch.no_grad()
def measure_pixels(adapted: Any, pixels: Any, labels: Any, class_names: Sequence[str], template: str,
            batch_size: int = 256, image_features: torch.Tensor | None = None) -> tuple[float, float]:
    """Top-1 accuracy and modality gap of ``adapted`` on (pixels, labels).

    The gap is the distance between the centroid of the normalised image embeddings and the
    centroid of their true-class prompt embeddings (the paired form of the Liang et al. gap).
    ``image_features`` (from ``image_features_of``) skips encoding: the runner passes the
    untouched model's cached features when a tuner left the image tower as it was.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    txt = F.normalize(torch.as_tensor(adapted.class_text_features(list(class_names), template)).float().cpu(), dim=-1)
    feats = image_features if image_features is not None else image_features_of(adapted, pixels, batch_size)
    img = F.normalize(feats, dim=-1)
    acc = float((img @ txt.T).argmax(1).eq(labels).float().mean()) if labels.numel() else 0.0
    gap = float(torch.linalg.vector_norm(img.mean(0) - txt[labels].mean(0)))
    return acc, gap


@torch.no_grad()
def image_features_of(adapted: Any, pixels: Any, batch_size: int = 256) -> torch.Tensor:
    """(N,d) float32 CPU image features of ``adapted``, encoded in batches."""
    pixels = torch.as_tensor(pixels)
    with phase(f"evaluating on {pixels.shape[0]} images"):
        feats = [torch.as_tensor(adapted.encode_image(pixels[i : i + batch_size])).float().cpu()
                 for i in range(0, pixels.shape[0], batch_size)]
    return torch.cat(feats)


def top1_accuracy(adapted: Any, pixels: Any, labels: Any, class_names: Sequence[str], template: str,
                  batch_size: int = 256) -> float:
    """Top-1 accuracy of ``adapted`` on (pixels, labels) against prompts for ``class_names``."""
    return measure_pixels(adapted, pixels, labels, class_names, template, batch_size)[0]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (to check which ones a tuner changed)."""
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=False).items()}


def changed(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> set[str]:
    """Names whose tensors differ bitwise between two snapshots (a name in only one counts too)."""
    out = {k for k in set(before) ^ set(after)}
    for k in set(before) & set(after):
        a, b = before[k], after[k]
        if a.shape != b.shape or not torch.equal(a, b):
            out.add(k)
    return out
