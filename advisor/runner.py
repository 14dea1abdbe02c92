"""``advisor run``: one real fine-tuning run, measured before and after, recorded in one transaction.

Steps: few-shot training split + fixed test split -> zero-shot accuracy (ID and each OOD set) and
modality gap -> the tuner trains -> the same measurements on the adapted model as a user would
deploy it -> one run row (with the pair's signal set and provenance). Nothing is written unless
every step succeeded, so a crash or Ctrl-C leaves the history unchanged.
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DatasetError, TrainingError
from .specs import DatasetSpec, ImageSet, ModelSpec, RunResult, TrainContext

#: Test images per dataset used for accuracy before/after. A fixed sample (seed 0) so runs with
#: different training seeds are measured on the same images.
DEFAULT_MAX_TEST = 500
DEFAULT_MAX_OOD = 300
TEST_SAMPLE_SEED = 0


@dataclass
class EvalSet:
    """A labelled evaluation set, preprocessed once for the model."""

    name: str
    class_names: list[str]
    template: str
    pixels: Any  # torch tensor (N,3,H,W)
    labels: np.ndarray


def preprocess_images(model: Any, images: ImageSet) -> Any:
    """ImageSet -> float tensor (N,3,H,W) prepared by ``model.preprocess``."""
    import torch

    if len(images) == 0:
        raise DatasetError("no images to preprocess")
    return torch.stack([model.preprocess(images.pil(i)) for i in range(len(images))])


def _check_promptable(name: str, class_names: Sequence[str], template: str) -> None:
    if "{}" not in template and "{c}" not in template:
        raise DatasetError(f"dataset {name!r}: prompt template {template!r} has no '{{}}' for the class name")
    bad = [c for c in class_names if not isinstance(c, str) or not c.strip()]
    if bad or not class_names:
        raise DatasetError(f"dataset {name!r}: classes cannot be prompted (empty class names)")


#: In-process memo: (model identity, dataset, max images) -> EvalSet / zero-shot measurement.
#: A sweep that runs every method on one pair prepares and measures the test sets once.
_eval_sets: dict[tuple[str, str, int], EvalSet] = {}
_zero_shot: dict[tuple[str, str, int], tuple[float, float]] = {}


def load_eval_set(model: Any, spec: DatasetSpec, max_images: int) -> EvalSet:
    """The test split of a dataset, sampled to ``max_images`` with a fixed seed (memoised)."""
    key = (model.identity(), spec.name, max_images)
    if key not in _eval_sets:
        _eval_sets[key] = _load_eval_set(model, spec, max_images)
    return _eval_sets[key]


def measure_zero_shot(model: Any, ev: EvalSet, device: str) -> tuple[float, float]:
    """``measure`` of the untouched model, memoised per (model identity, eval set)."""
    from .tuning import ZeroShotAdapted

    key = (model.identity(), ev.name, len(ev.labels))
    if key not in _zero_shot:
        _zero_shot[key] = measure(ZeroShotAdapted(model, device=device), ev)
    return _zero_shot[key]


def _load_eval_set(model: Any, spec: DatasetSpec, max_images: int) -> EvalSet:
    from .data import get_split, load_dataset, sample

    bundle = load_dataset(spec)
    template = bundle.templates[0] if bundle.templates else ""
    _check_promptable(spec.name, bundle.class_names, template)
    test = sample(get_split(bundle, "test"), max_images, TEST_SAMPLE_SEED)
    return EvalSet(spec.name, list(bundle.class_names), template, preprocess_images(model, test), np.asarray(test.labels))


def measure(adapted: Any, ev: EvalSet, batch_size: int = 256) -> tuple[float, float]:
    """Top-1 accuracy and modality gap of an adapted model on one evaluation set."""
    from .tuning import measure as measure_pixels

    return measure_pixels(adapted, ev.pixels, ev.labels, ev.class_names, ev.template, batch_size)


def _default_ood(dataset: str) -> list[str]:
    """The other offline built-ins that can be loaded on this machine."""
    from .data import OFFLINE_DATASETS, load_dataset

    out = []
    for name in OFFLINE_DATASETS:
        if name == dataset:
            continue
        try:
            load_dataset(DatasetSpec(name))
        except DatasetError as exc:
            print(f"Warning: OOD reference {name!r} skipped: {exc}", file=sys.stderr)
            continue
        out.append(name)
    return out


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_finetune(
    model_spec: ModelSpec,
    dataset_spec: DatasetSpec,
    method: str,
    *,
    shots: int | None = 16,
    seed: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    hparams: dict[str, Any] | None = None,
    ood: Sequence[str] | None = None,
    device: str | None = None,
    db: str | None = None,
    max_test: int = DEFAULT_MAX_TEST,
    max_ood: int = DEFAULT_MAX_OOD,
    signals: bool = True,
    record: bool = True,
    save_adapter: bool = True,
    quiet: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    """Train ``method`` on the pair, measure before/after, and record one run (see module doc)."""
    import torch

    from .config import artifacts_dir, resolve_device
    from .data import dataset_descriptors, few_shot, get_split, load_dataset
    from .embed import load_model
    from .plugins import get_tuner
    from .provenance import provenance

    tuner = get_tuner(method)  # unknown method: one-line error before any work
    device = resolve_device(device)
    if shots is not None and shots < 1:
        raise TrainingError(f"--shots must be at least 1 (got {shots})")
    bundle = load_dataset(dataset_spec)
    template = bundle.templates[0] if bundle.templates else ""
    _check_promptable(dataset_spec.name, bundle.class_names, template)
    train = get_split(bundle, "train")
    if shots is not None:
        train = few_shot(train, shots, seed, class_names=bundle.class_names)
    ood_names = list(ood) if ood is not None else _default_ood(dataset_spec.name)

    torch.manual_seed(seed)
    np.random.seed(seed)
    base = load_model(model_spec, device)
    id_set = load_eval_set(base, dataset_spec, max_test)
    ood_sets = [load_eval_set(base, DatasetSpec(n), max_ood) for n in ood_names]
    train_pixels = preprocess_images(base, train)
    train_labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)

    id_before, gap_before = measure_zero_shot(base, id_set, device)
    ood_before = {ev.name: measure_zero_shot(base, ev, device)[0] for ev in ood_sets}

    signal_values: dict[str, float] = {}
    signal_versions: dict[str, str] = {}
    if signals:
        from .signals import compute_signals

        sig = compute_signals(model_spec, dataset_spec, seed=0, device=device, quiet=quiet)
        signal_values, signal_versions = dict(sig.values), dict(sig.versions)

    model = copy.deepcopy(base)  # the tuner mutates weights; the memoised base must stay pristine
    progress = on_step or _progress_bar(quiet)
    ctx = TrainContext(
        model=model, class_names=list(bundle.class_names), template=template,
        train_pixels=train_pixels, train_labels=train_labels, device=device, seed=seed,
        epochs=epochs, lr=lr, batch_size=batch_size, shots=shots, hparams=dict(hparams or {}),
        progress=progress,
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = tuner.train(ctx)
    wall = time.perf_counter() - t0
    _close_progress(progress)

    id_after, gap_after = measure(result.adapted, id_set)
    ood_after = {ev.name: measure(result.adapted, ev)[0] for ev in ood_sets}
    epochs_done = result.hparams.get("epochs") or epochs or 1
    run_id = uuid.uuid4().hex[:16]
    adapter_path = None
    if save_adapter:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in result.adapted.adapter_state().items()}
        if state:
            path = artifacts_dir() / f"{run_id}-{method}.safetensors"
            save_file(state, str(path), metadata={"method": method, "model": model_spec.name, "dataset": dataset_spec.name})
            adapter_path = str(path)

    desc = dict(base.describe())
    desc.update(name=model_spec.name, pretrained=model_spec.pretrained, image_size=base.image_size)
    run = RunResult(
        model=model_spec.name, pretrained=model_spec.pretrained, dataset=dataset_spec.name, method=method,
        shots=shots, seed=seed, hparams=dict(result.hparams), split_hash=train.split_hash(),
        id_acc_before=id_before, id_acc_after=id_after, ood_before=ood_before, ood_after=ood_after,
        gap_before=gap_before, gap_after=gap_after, wall_time_s=wall,
        train_images_per_s=(len(train) * float(epochs_done) / wall) if wall > 0 else None,
        peak_memory_mb=_peak_memory_mb(device), trainable_params=int(result.trainable_params), device=device,
        provenance=provenance(device, seed), signals=signal_values, signal_versions=signal_versions,
        model_desc=desc, dataset_desc=dataset_descriptors(bundle), losses=[float(x) for x in result.losses],
        adapter_path=adapter_path, run_id=run_id,
    )
    if record:
        from .history import open_history

        run.run_id = open_history(db).record_run(run)
    return run


def _progress_bar(quiet: bool) -> Callable[[int, int, float], None] | None:
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def step(i: int, total: int, loss: float) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc="training", unit="step", file=sys.stderr)
        bar.update(max(0, i - bar.n))
        bar.set_postfix(loss=f"{loss:.4f}")

    step.state = state  # type: ignore[attr-defined]
    return step


def _close_progress(progress: Any) -> None:
    bar = getattr(progress, "state", {}).get("bar")
    if bar is not None:
        bar.close()


def summarize(run: RunResult) -> dict[str, Any]:
    """The headline numbers of a run, for the CLI (gains as the predictor defines its targets)."""
    from .predictor import row_targets

    targets = row_targets(vars(run))
    ood_change = targets["ood_change"] if math.isfinite(targets["ood_change"]) else None
    return {
        "run_id": run.run_id, "model": run.model, "dataset": run.dataset, "method": run.method,
        "shots": run.shots, "seed": run.seed,
        "id_acc_before": run.id_acc_before, "id_acc_after": run.id_acc_after,
        "id_gain": targets["id_gain"], "ood_change": ood_change,
        "gap_before": run.gap_before, "gap_after": run.gap_after,
        "wall_time_s": run.wall_time_s, "trainable_params": run.trainable_params,
        "adapter_path": run.adapter_path,
    }

