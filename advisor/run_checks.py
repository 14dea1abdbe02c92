"""What ``advisor run`` refuses before it loads a dataset or a model.

A bad option found after 10-15 s of model loading and preprocessing wastes the user's time, and
one found after training throws the measured run away. Everything that can be checked from the
arguments alone is checked here, once per ``RunRequest`` (``check_request``), before the run
starts: the tuner's own ``check_hparams`` (the one hyper-parameter validator), the device against this
machine, the hyper-parameters against the tuner's own defaults (the same ``resolve_hparams`` the
tuner calls), finite numbers, sample sizes, image size, model and dataset names; and what the
history will accept of the run (a seed its 32-bit column holds), so a measured run is never
refused after training: bounded epochs (``MAX_EPOCHS``) and learning rate (``MAX_LR``), no option
given twice with two values (``--epochs 1 --hparam epochs=3``), no OOD set that is the dataset.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import TrainingError
from .specs import ModelSpec, RunRequest, TrainContext, Tuner

#: More epochs than this are refused (``--epochs 1000000000`` would run for years, ``2**63``
#: overflows): the shipped history's runs use 10-20, the papers' GPU schedules up to 200.
MAX_EPOCHS = 100_000
#: A learning rate above this diverges with every built-in tuner (the loss becomes NaN), and a
#: run with NaN losses cannot be recorded: refused before training. The defaults are 1e-5..2e-2.
MAX_LR = 10.0


def check_finite(method: str, values: Mapping[str, Any]) -> None:
    """Every number among ``values`` is finite (``--hparam epochs=Infinity``, ``batch_size=1e999``
    and ``lr=NaN`` are one-line errors, not an OverflowError deep inside training)."""
    for key, value in values.items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(float(value)):
            raise TrainingError(f"{method}: {key} must be a finite number (got {value!r})")


@dataclass(frozen=True)
class CheckedRun:
    """A request that passed ``check_request``: its tuner, its device (resolved on this machine
    when the run will happen here) and the hyper-parameters the tuner will resolve."""

    request: RunRequest
    tuner: Tuner
    device: str
    resolved: Mapping[str, Any]


def check_request(req: RunRequest, *, planning: bool = False) -> CheckedRun:
    """Check a run request once, before anything loads; raise a one-line AdvisorError for
    anything the run would reject later. ``planning=True`` (a sweep planning runs that workers,
    maybe elsewhere, will make) leaves the device as given, unresolved, and leaves the OOD sets
    against the dataset to the worker."""
    from .config import resolve_device
    from .plugins import get_tuner

    tuner = get_tuner(req.method)  # unknown method: one line before any work
    tuner.check_hparams(req.given_hparams)  # names, types and bounds, as the tuner declares them
    device = str(req.device or "cpu") if planning else resolve_device(req.device)
    resolved = check_run_options(req.model, req.method, tuner, shots=req.shots, seed=req.seed, epochs=req.epochs,
                                 lr=req.lr, batch_size=req.batch_size, hparams=req.hparams, ood=req.ood,
                                 device=device, max_test=req.max_test, max_ood=req.max_ood,
                                 dataset=None if planning else req.dataset.name)
    return CheckedRun(req, tuner, device, resolved)


def check_run_options(
    model_spec: ModelSpec,
    method: str,
    tuner: Tuner,
    *,
    shots: int | None,
    seed: int,
    epochs: Any,
    lr: Any,
    batch_size: Any,
    hparams: Mapping[str, Any] | None,
    ood: Sequence[str] | None,
    device: str,
    max_test: Any,
    max_ood: Any,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Raise a one-line AdvisorError for any option ``run_finetune`` would reject later; return
    the hyper-parameters the tuner will resolve (defaults < epochs/lr/batch_size < hparams)."""
    from .plugins import get_dataset_source, get_model_source, provider_of
    from .tuning import resolve_hparams

    get_model_source(model_spec.name)  # unknown model: one line, before anything is loaded
    if model_spec.image_size is not None and (isinstance(model_spec.image_size, bool)
                                              or not isinstance(model_spec.image_size, int)
                                              or model_spec.image_size < 1):
        raise TrainingError(f"--image-size must be a positive number of pixels (got {model_spec.image_size!r})")
    if shots is not None and shots < 1:
        raise TrainingError(f"--shots must be at least 1 (got {shots})")
    for flag, value in (("--max-images", max_test), ("max_ood", max_ood)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingError(f"{flag} must be a positive number of images (got {value!r})")
    for name in ood or ():
        get_dataset_source(name)  # unknown OOD dataset: one line, before anything is loaded
        if dataset is not None and name == dataset:
            raise TrainingError(f"--ood {name}: the OOD reference set cannot be the dataset itself "
                                "(its test set would be reported as out-of-domain)")
    check_seed(seed)
    extra = dict(hparams or {})
    for key, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)):
        if value is not None and key in extra and extra[key] != value:
            raise TrainingError(f"--{key.replace('_', '-')} {value} and --hparam {key}={extra[key]} contradict "
                                "each other: give one of them")
    check_finite(method, {"epochs": epochs, "lr": lr, "batch_size": batch_size, **extra})
    ctx = TrainContext(model=None, class_names=[], template="", train_pixels=None, train_labels=None,
                       device=device, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, shots=shots,
                       hparams=extra)
    # A third-party tuner may accept keys beyond its defaults (resolve_hparams' extra_keys):
    # only the built-ins, whose calls pass none, get the unknown-key check here.
    builtin = provider_of("tuners", method).startswith("advisor_plugins.")
    resolved = resolve_hparams(method, tuner.defaults(shots), ctx, extra_keys=() if builtin else tuple(extra))
    check_bounds(method, resolved)
    return resolved


def check_seed(seed: Any) -> None:
    """The seed fits the history's seed column (32-bit on every backend) and numpy's seeding
    (non-negative)."""
    from .history.rows import BY_NAME

    top = BY_NAME["seed"].maximum
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= top:
        raise TrainingError(f"--seed must be an integer from 0 to {top} (what the history's seed column "
                            f"and numpy accept; got {seed!r})")


def check_bounds(method: str, hp: Mapping[str, Any]) -> None:
    """Resolved epochs at most ``MAX_EPOCHS`` and learning rate at most ``MAX_LR``."""
    epochs, lr = hp.get("epochs"), hp.get("lr")
    if isinstance(epochs, numbers.Real) and not isinstance(epochs, bool) and epochs > MAX_EPOCHS:
        raise TrainingError(f"{method}: epochs must be at most {MAX_EPOCHS} (got {epochs})")
    if isinstance(lr, numbers.Real) and not isinstance(lr, bool) and lr > MAX_LR:
        raise TrainingError(f"{method}: lr must be at most {MAX_LR:g}: a larger learning rate diverges (got {lr:g})")
