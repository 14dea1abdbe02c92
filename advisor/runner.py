"""``advisor run``: one real fine-tuning run, measured before and after, recorded in one transaction.

Steps: few-shot training split + fixed test split -> zero-shot accuracy (ID and each OOD set) and
modality gap -> the tuner trains -> the same measurements on the adapted model as a user would
deploy it -> one run row (with the pair's signal set and provenance). Nothing is written unless
every step succeeded, so a crash or Ctrl-C leaves the history unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DatasetError, HistoryError, TrainingError
from .curves import CURVE_VERSION
from .specs import DatasetBundle, DatasetSpec, ImageSet, ModelSpec, RunResult, TrainContext

#: Test images per dataset used for accuracy before/after. A fixed sample (seed 0) so runs with
#: different training seeds are measured on the same images.
DEFAULT_MAX_TEST = 500
DEFAULT_MAX_OOD = 500
TEST_SAMPLE_SEED = 0


class RunSpooled(HistoryError):
    """The run was measured but the history could not be written: it waits in the spool."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


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
_base_features: dict[tuple[str, str, int], Any] = {}
_ood_bundles: dict[tuple[str, tuple[str, ...] | None], dict[str, DatasetBundle]] = {}
_pairs: dict[tuple[Any, ...], Any] = {}  # (model spec, dataset spec, device) -> PreparedPair with signals


def load_eval_set(model: Any, spec: DatasetSpec, max_images: int, bundle: DatasetBundle | None = None) -> EvalSet:
    """The test split of a dataset, sampled to ``max_images`` with a fixed seed (memoised).
    Pass the already loaded ``bundle`` so the dataset is not loaded a second time."""
    key = (model.identity(), spec.name, max_images)
    if key not in _eval_sets:
        _eval_sets[key] = _load_eval_set(model, spec, max_images, bundle)
    return _eval_sets[key]


def measure_zero_shot(model: Any, ev: EvalSet, device: str) -> tuple[float, float]:
    """``measure`` of the untouched model, memoised per (model identity, eval set); its image
    features are kept for ``measure_adapted``."""
    from .tuning import ZeroShotAdapted, image_features_of

    key = (model.identity(), ev.name, len(ev.labels))
    if key not in _zero_shot:
        adapted = ZeroShotAdapted(model, device=device)
        _base_features[key] = image_features_of(adapted, ev.pixels)
        _zero_shot[key] = measure(adapted, ev, image_features=_base_features[key])
    return _zero_shot[key]


def image_tower_unchanged(base: Any, adapted: Any, ev: EvalSet, device: str, probe: int = 8) -> bool:
    """Whether ``adapted`` encodes images exactly as the untouched model does (prompt learning
    keeps the image tower frozen): checked bitwise on a probe batch, so reusing the cached
    features can never change a measurement."""
    import torch

    from .tuning import ZeroShotAdapted

    pixels = ev.pixels[:probe]
    a = torch.as_tensor(adapted.encode_image(pixels)).float().cpu()
    b = torch.as_tensor(ZeroShotAdapted(base, device=device).encode_image(pixels)).float().cpu()
    return a.shape == b.shape and bool(torch.equal(a, b))


def measure_adapted(base: Any, adapted: Any, ev: EvalSet, reuse_image_features: bool) -> tuple[float, float]:
    """``measure`` of a trained model; with ``reuse_image_features`` the untouched model's
    cached image features stand in for re-encoding (only the text side changed)."""
    feats = _base_features.get((base.identity(), ev.name, len(ev.labels))) if reuse_image_features else None
    return measure(adapted, ev, image_features=feats)


def _load_eval_set(model: Any, spec: DatasetSpec, max_images: int, bundle: DatasetBundle | None) -> EvalSet:
    from .data import get_split, load_dataset, sample

    bundle = bundle if bundle is not None else load_dataset(spec)
    template = bundle.templates[0] if bundle.templates else ""
    _check_promptable(spec.name, bundle.class_names, template)
    test = sample(get_split(bundle, "test"), max_images, TEST_SAMPLE_SEED)
    return EvalSet(spec.name, list(bundle.class_names), template, preprocess_images(model, test), np.asarray(test.labels))


def measure(adapted: Any, ev: EvalSet, batch_size: int = 256, image_features: Any = None) -> tuple[float, float]:
    """Top-1 accuracy and modality gap of an adapted model on one evaluation set."""
    from .tuning import measure as measure_pixels

    return measure_pixels(adapted, ev.pixels, ev.labels, ev.class_names, ev.template, batch_size,
                          image_features=image_features)


def standard_error(acc: float, n: int) -> float | None:
    """Binomial standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n) if n > 0 else None


def _ood_references(source: str, names: Sequence[str] | None) -> dict[str, DatasetBundle]:
    """The OOD reference sets, loaded once: ``names`` when given, else one per *other* source
    (the offline built-in base sets whose source is not the task's: a task derived from MNIST
    is not measured "out of domain" on MNIST). Memoised per process, so a sweep worker loads
    each reference set once for all its runs."""
    from .data import load_dataset
    from .plugins import list_datasets

    key = (source, tuple(names) if names is not None else None)
    if key in _ood_bundles:
        return _ood_bundles[key]
    out: dict[str, DatasetBundle] = {}
    for name in (names if names is not None else [src.name for src in list_datasets(ood_reference=True)]):
        try:
            bundle = load_dataset(DatasetSpec(name))
        except DatasetError as exc:
            if names is not None:
                raise
            print(f"Warning: OOD reference {name!r} skipped: {exc}", file=sys.stderr)
            continue
        if (bundle.source or name) == source or name == source:
            if names is None:
                continue
            raise DatasetError(f"--ood {name}: it comes from the same source as the dataset ({source}), so it is "
                               "not out-of-domain; choose a set from another source")
        out[name] = bundle
    _ood_bundles[key] = out
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
    adapters_dir: str | None = None,
    spool_dir: str | None = None,
    provenance_extra: dict[str, Any] | None = None,
    quiet: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train ``method`` on the pair, measure before/after, and record one run (see module doc).

    The trained adapter is written only for a recorded run, into ``adapters_dir`` or the
    directory beside the history (``config.adapters_dir``); the row stores its path relative
    to that directory, and the returned run's ``adapter_path`` is the file the row points to."""
    import torch

    from .config import resolve_device
    from .data import few_shot, get_split, load_dataset
    from .embed import load_model
    from .plugins import get_tuner
    from .provenance import provenance

    from .run_checks import check_run_options

    tuner = get_tuner(method)  # unknown method: one-line error before any work
    device = resolve_device(device)
    resolved = check_run_options(model_spec, method, tuner, shots=shots, seed=seed, epochs=epochs, lr=lr,
                                 batch_size=batch_size, hparams=hparams, ood=ood, device=device, max_test=max_test,
                                 max_ood=max_ood, dataset=dataset_spec.name)
    if record:  # an unreachable or read-only history is refused now, not after the training
        from .history import open_history

        with open_history(db) as history:
            history.check_writable()
    adapter_folder = None
    if save_adapter and record:  # an adapters directory that cannot be written: refused now too
        from .config import adapters_dir as adapters_dir_for
        from .history.location import location

        where = location(db)
        adapter_folder = adapters_dir_for(None if "://" in where else Path(where), adapters_dir)
        check_writable_dir(adapter_folder, "the adapters directory", "--adapters-dir")
    bundle = load_dataset(dataset_spec)
    template = bundle.templates[0] if bundle.templates else ""
    _check_promptable(dataset_spec.name, bundle.class_names, template)
    train_split = train = get_split(bundle, "train")
    if shots is not None:
        train = few_shot(train, shots, seed, class_names=bundle.class_names)
    ood_bundles = _ood_references(bundle.source or dataset_spec.name, list(ood) if ood is not None else None)

    torch.manual_seed(seed)
    np.random.seed(seed)
    t_prepare = time.perf_counter()
    base = load_model(model_spec, device)
    from .terminal import phase

    with phase(f"preparing test images ({dataset_spec.name} and {len(ood_bundles)} OOD sets)"):
        id_set = load_eval_set(base, dataset_spec, max_test, bundle)
        ood_sets = [load_eval_set(base, DatasetSpec(n), max_ood, b) for n, b in ood_bundles.items()]
    with phase(f"preparing {len(train)} training images"):
        train_pixels = preprocess_images(base, train)
    train_labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)

    id_before, gap_before = measure_zero_shot(base, id_set, device)
    ood_before = {ev.name: measure_zero_shot(base, ev, device)[0] for ev in ood_sets}

    from .pair import prepare_pair

    # The pair's descriptors, and its signals measured once per (model, dataset) pair in a
    # process (a sweep reuses them); a run records what it measured, random weights included.
    pkey = (model_spec, dataset_spec, device)
    pair = _pairs.get(pkey) if signals else None
    if pair is None:
        pair = prepare_pair(model_spec, dataset_spec, measure=signals, check_random=False, device=device,
                            quiet=quiet, model=base, bundle=bundle)
        if signals:
            _pairs[pkey] = pair
    prepare_s = time.perf_counter() - t_prepare

    with phase("preparing the learning-curve sets"):
        recorder = curve_recorder(base, bundle, train_split, train, id_set, ood_sets, device, shots)
    model = copy.deepcopy(base)  # the tuner mutates weights; the memoised base must stay pristine
    progress = on_step or _progress_bar(quiet)
    ctx = TrainContext(
        model=model, class_names=list(bundle.class_names), template=template,
        train_pixels=train_pixels, train_labels=train_labels, device=device, seed=seed,
        epochs=epochs, lr=lr, batch_size=batch_size, shots=shots, hparams=dict(hparams or {}),
        progress=progress, on_epoch=recorder, stop_after_epochs=stop_after_epochs,
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0, measured_before = time.perf_counter(), recorder.measure_s
    result = tuner.train(ctx)
    wall = time.perf_counter() - t0 - (recorder.measure_s - measured_before)  # the curve's points excluded
    _close_progress(progress)
    check_converged(method, result.losses, result.hparams.get("lr", resolved.get("lr")))

    t_eval = time.perf_counter()
    reuse = image_tower_unchanged(base, result.adapted, id_set, device)
    id_after, gap_after = measure_adapted(base, result.adapted, id_set, reuse)
    ood_after = {ev.name: measure_adapted(base, result.adapted, ev, reuse)[0] for ev in ood_sets}
    evaluate_s = time.perf_counter() - t_eval
    measurement = {
        "eval_sample_seed": TEST_SAMPLE_SEED,
        "id_n": int(len(id_set.labels)),
        "ood_n": {ev.name: int(len(ev.labels)) for ev in ood_sets},
        "id_se_before": standard_error(id_before, len(id_set.labels)),
        "id_se_after": standard_error(id_after, len(id_set.labels)),
        "ood_se_before": {ev.name: standard_error(ood_before[ev.name], len(ev.labels)) for ev in ood_sets},
        "ood_se_after": {ev.name: standard_error(ood_after[ev.name], len(ev.labels)) for ev in ood_sets},
        "image_features_reused": reuse,
        "curve_version": CURVE_VERSION,
        "val_n": 0 if recorder.val is None else int(len(recorder.val.labels)),
        "ood_proxy_n": int(sum(len(p.labels) for p in recorder.ood)),
    }
    if stop_after_epochs is not None:
        measurement["stopped_after_epochs"] = len(result.losses)
    epochs_done = result.hparams.get("epochs") or epochs or 1
    run_id = uuid.uuid4().hex[:16]
    adapter_path = None  # as the history stores it: relative to the adapters directory
    adapter_file = None
    if adapter_folder is not None:  # --no-record writes no file
        state = {k: v.detach().contiguous().cpu() for k, v in result.adapted.adapter_state().items()}
        if state:
            adapter_path = f"{run_id}-{method}.safetensors"
            adapter_file = adapter_folder / adapter_path
            if not _save_adapter(state, adapter_file, {"method": method, "model": model_spec.name,
                                                       "dataset": dataset_spec.name}):
                adapter_path = adapter_file = None  # the measured run is kept, without its adapter

    run = RunResult(
        model=model_spec.name, pretrained=model_spec.pretrained, dataset=dataset_spec.name, method=method,
        shots=shots, seed=seed, hparams=dict(result.hparams), split_hash=train.split_hash(),
        id_acc_before=id_before, id_acc_after=id_after, ood_before=ood_before, ood_after=ood_after,
        gap_before=gap_before, gap_after=gap_after, wall_time_s=wall,
        train_images_per_s=(len(train) * float(epochs_done) / wall) if wall > 0 else None,
        peak_memory_mb=_peak_memory_mb(device), trainable_params=int(result.trainable_params), device=device,
        provenance={**provenance(device, seed), **(provenance_extra or {}), "measurement": measurement,
                    "timing": {"prepare_s": round(prepare_s, 3), "train_s": round(wall, 3),
                               "evaluate_s": round(evaluate_s, 3), "curve_s": round(recorder.measure_s, 3)}},
        signals=dict(pair.signals), signal_versions=dict(pair.versions),
        model_desc=dict(pair.model_desc), dataset_desc=dict(pair.dataset_desc), losses=[float(x) for x in result.losses],
        curve=list(recorder.points), adapter_path=adapter_path, run_id=run_id,
    )
    if record:
        from .history import open_history

        try:
            with open_history(db) as history:
                run.run_id = history.record_run(run)
                if run.run_id != run_id:  # a retry: the history keeps the first run and its adapter
                    run.adapter_path = history.get_run(run.run_id).get("adapter_path")
        except HistoryError as exc:
            # Measured but not writable (database down, locked, read-only): keep the run.
            from .history.spool import spool_document, write_spool

            try:
                path = write_spool(run, spool_dir, reason=str(exc))
            except OSError as spool_exc:
                # Neither the history nor the spool: the measurement goes to stderr, whole.
                print(json.dumps(spool_document(run, str(exc)), allow_nan=True), file=sys.stderr, flush=True)
                raise HistoryError(
                    f"{exc}; the spool cannot be written either ({spool_exc.strerror or spool_exc}): the measured "
                    "run is the JSON line above on stderr (save it as NAME.run.json in a spool directory and run "
                    "`advisor history import-spool`)") from None
            raise RunSpooled(f"{exc}; the measured run was saved to {path} "
                             "(add it with `advisor history import-spool`)", path=path) from None
        except BaseException:
            if adapter_file is not None:
                adapter_file.unlink(missing_ok=True)  # no row points at it
            raise
        if run.run_id != run_id and adapter_file is not None:
            adapter_file.unlink(missing_ok=True)
        if run.adapter_path and adapter_file is not None and not Path(run.adapter_path).is_absolute():
            run.adapter_path = str(adapter_file.parent / run.adapter_path)
    return run


def check_writable_dir(folder: Path, what: str, option: str) -> None:
    """Refuse (one line) a directory that cannot be created or written, without creating it:
    a file is created and removed in it, or in its nearest existing parent when it does not
    exist yet (a read-only or immutable file system fails here, before any training)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise TrainingError(f"{what} {folder} cannot be created: {probe} is not a directory (choose another with {option})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".advisor-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise TrainingError(f"{what} {folder} cannot be written ({exc.strerror or exc}); choose another with {option}") from None


def check_converged(method: str, losses: Sequence[float], lr: Any) -> None:
    """A run whose training loss became NaN or infinite diverged: its measurements mean nothing
    and the history refuses its losses, so it is an error (nothing recorded), not a result."""
    for i, loss in enumerate(losses):
        if not math.isfinite(float(loss)):
            raise TrainingError(f"{method} diverged: the training loss became {float(loss)} at step {i + 1} "
                                f"(lr {lr}); nothing was recorded: try a smaller --lr")


def _save_adapter(state: dict[str, Any], path: Path, metadata: dict[str, str]) -> bool:
    """Write a trained adapter; on failure (disk full, directory gone) warn in one line, remove
    any partial file and return False: the measured run is still recorded, without its adapter."""
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - OSError, or safetensors' own SafetensorError
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        print(f"Warning: the adapter could not be written to {path} ({reason}): the run is recorded without it",
              file=sys.stderr)
        return False
    return True


def curve_recorder(base: Any, bundle: DatasetBundle, train_split: ImageSet, shots_part: ImageSet, id_set: EvalSet,
                   ood_sets: Sequence[EvalSet], device: str, shots: int | None) -> Any:
    """The learning-curve recorder of a run (``advisor.curves``): a validation part of the
    training split that the shots leave unused, and the first images of each OOD reference
    set's fixed sample, with the untouched model's features; point 0 measured."""
    from .curves import OOD_PROXY_PER_SET, CurveRecorder, ProxySet, validation_part
    from .tuning import ZeroShotAdapted, image_features_of

    base_adapted = ZeroShotAdapted(base, device=device)
    val = None
    part = validation_part(train_split, shots_part, len(bundle.class_names)) if shots is not None else None
    if part is not None:
        pixels = preprocess_images(base, part)
        val = ProxySet("validation", id_set.class_names, id_set.template, pixels, np.asarray(part.labels),
                       image_features_of(base_adapted, pixels))
    proxies = []
    for ev in ood_sets:
        n = min(OOD_PROXY_PER_SET, len(ev.labels))
        feats = _base_features.get((base.identity(), ev.name, len(ev.labels)))
        if feats is None:
            feats = image_features_of(base_adapted, ev.pixels)
        proxies.append(ProxySet(ev.name, ev.class_names, ev.template, ev.pixels[:n], ev.labels[:n], feats[:n]))
    recorder = CurveRecorder(val=val, ood=proxies, base_adapted=base_adapted)
    recorder.start()
    return recorder


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

