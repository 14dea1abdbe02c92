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
from typing import Any, Mapping

from .errors import TrainingError
from .specs import RunRequest, TrainContext, Tuner

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
    from .plugins import get_dataset_source, get_model_source, get_tuner, is_builtin, provider_of

    tuner = get_tuner(req.method)  # unknown method: one line before any work
    builtin = is_builtin(provider_of("tuners", req.method))
    tuner.check_hparams(req.given_hparams)  # names, types and bounds, as the tuner declares them
    device = str(req.device or "cpu") if planning else resolve_device(req.device)
    get_model_source(req.model.name)  # unknown model or OOD set: one line, before anything is loaded
    for name in req.ood or ():
        get_dataset_source(name)
        if not planning and name == req.dataset.name:
            raise TrainingError(f"--ood {name}: the OOD reference set cannot be the dataset itself "
                                "(its test set would be reported as out-of-domain)")
    resolved = check_run_options(req, tuner, device, builtin=builtin)
    return CheckedRun(req, tuner, device, resolved)


def check_run_options(req: RunRequest, tuner: Tuner, device: str, *, builtin: bool) -> dict[str, Any]:
    """Raise a one-line AdvisorError for any number of ``req`` the run would reject later;
    return the hyper-parameters the tuner will resolve (defaults < epochs/lr/batch_size <
    hparams). ``builtin``: the tuner is one of advisor's own (only those get the unknown-key
    check here: a third-party tuner may accept keys beyond its defaults)."""
    from .tuning import resolve_hparams

    check_sizes(req)
    check_seed(req.seed)
    extra = dict(req.hparams or {})
    given = {"epochs": req.epochs, "lr": req.lr, "batch_size": req.batch_size}
    for key, value in given.items():
        if value is not None and key in extra and extra[key] != value:
            raise TrainingError(f"--{key.replace('_', '-')} {value} and --hparam {key}={extra[key]} contradict "
                                "each other: give one of them")
    check_finite(req.method, {**given, **extra})
    ctx = TrainContext(model=None, class_names=[], template="", train_pixels=None, train_labels=None,
                       device=device, seed=req.seed, epochs=req.epochs, lr=req.lr, batch_size=req.batch_size,
                       shots=req.shots, hparams=extra)
    resolved = resolve_hparams(req.method, tuner.defaults(req.shots), ctx, extra_keys=() if builtin else tuple(extra))
    check_bounds(req.method, resolved)
    return resolved


def check_sizes(req: RunRequest) -> None:
    """The image size, shots and sample sizes are positive numbers."""
    size = req.model.image_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise TrainingError(f"--image-size must be a positive number of pixels (got {size!r})")
    if req.shots is not None and req.shots < 1:
        raise TrainingError(f"--shots must be at least 1 (got {req.shots})")
    for flag, value in (("--max-images", req.max_test), ("max_ood", req.max_ood)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingError(f"{flag} must be a positive number of images (got {value!r})")


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
