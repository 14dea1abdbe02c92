"""``advisor run``: one real fine-tuning run, measured before and after, recorded in one transaction.

Steps: few-shot training split + fixed test split -> zero-shot accuracy (ID and each OOD set) and
modality gap -> the tuner trains -> the same measurements on the adapted model as a user would
deploy it -> one run row (with the pair's signal set and provenance). Nothing is written unless
every step succeeded, so a crash or Ctrl-C leaves the history unchanged.
"""

from __future__ import annotations

import copy
import math
import os
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from .curves import CURVE_VERSION
from .errors import DatasetError, HistoryError, TrainingError
from .history.spool import RunSpooled
from .run_checks import CheckedRun
from .session import Session, session_or_new
from .specs import DatasetBundle, DatasetSpec, ImageSet, ModelSpec, RunRequest, RunResult, TrainContext
from .specs.run import DEFAULT_MAX_OOD, DEFAULT_MAX_TEST

__all__ = ["DEFAULT_MAX_OOD", "DEFAULT_MAX_TEST", "TEST_SAMPLE_SEED", "RunSpooled", "run_finetune", "run_request"]

#: Test images per dataset used for accuracy before/after (``DEFAULT_MAX_TEST``,
#: ``DEFAULT_MAX_OOD``): a fixed sample (seed 0) so runs with different training seeds are
#: measured on the same images.
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


def template_of(bundle: DatasetBundle) -> str:
    """The dataset's prompt template (its first)."""
    return bundle.templates[0] if bundle.templates else ""


def check_promptable(name: str, bundle: DatasetBundle) -> DatasetBundle:
    """The bundle, once its template and class names are known to make prompts."""
    template = template_of(bundle)
    if "{}" not in template and "{c}" not in template:
        raise DatasetError(f"dataset {name!r}: prompt template {template!r} has no '{{}}' for the class name")
    bad = [c for c in bundle.class_names if not isinstance(c, str) or not c.strip()]
    if bad or not bundle.class_names:
        raise DatasetError(f"dataset {name!r}: classes cannot be prompted (empty class names)")
    return bundle


def load_bundle(session: Session, spec: DatasetSpec) -> DatasetBundle:
    """The dataset ``spec`` loaded and its prompts checked, once per session."""
    from .data import load_dataset

    return session.get("dataset", spec, lambda: check_promptable(spec.name, load_dataset(spec)))


def _eval_key(model: Any, ev_name: str, n: int) -> tuple[str, str, int]:
    return (model.identity(), ev_name, n)


def eval_set(model: Any, name: str, bundle: DatasetBundle, max_images: int) -> EvalSet:
    """The test split of a loaded dataset, sampled to ``max_images`` with a fixed seed and
    preprocessed for ``model``."""
    from .data import get_split, sample

    test = sample(get_split(bundle, "test"), max_images, TEST_SAMPLE_SEED)
    return EvalSet(name, list(bundle.class_names), template_of(bundle), preprocess_images(model, test),
                   np.asarray(test.labels))


def test_sets(model: Any, wanted: Sequence[tuple[str, DatasetBundle, int]], session: Session) -> list[EvalSet]:
    """The fixed test sample of each (name, loaded dataset, size) in ``wanted``, preprocessed
    for ``model``: each once per session (the runs of a sweep worker's pair share them)."""
    return [session.get("eval_set", _eval_key(model, name, n), lambda: eval_set(model, name, bundle, n))
            for name, bundle, n in wanted]


def measure_zero_shot(model: Any, sets: Sequence[EvalSet], device: str, session: Session) -> list[tuple[float, float]]:
    """Top-1 accuracy and modality gap of the untouched model on each eval set, once per (model
    identity, eval set) in the session; its image features are kept there for
    ``measure_adapted`` and the learning curve."""
    from .tuning import ZeroShotAdapted, image_features_of, measure_pixels

    adapted = ZeroShotAdapted(model, device=device)

    def make(ev: EvalSet, key: Hashable) -> tuple[float, float]:
        feats = session.get("base_features", key, lambda: image_features_of(adapted, ev.pixels))
        return measure_pixels(adapted, ev.pixels, ev.labels, ev.class_names, ev.template, image_features=feats)

    keys = [_eval_key(model, ev.name, len(ev.labels)) for ev in sets]
    return [session.get("zero_shot", key, lambda ev=ev, key=key: make(ev, key)) for ev, key in zip(sets, keys)]


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


def measure_adapted(base: Any, adapted: Any, sets: Sequence[EvalSet], reuse_image_features: bool,
                    session: Session) -> list[tuple[float, float]]:
    """Top-1 accuracy and modality gap of a trained model on each eval set; with
    ``reuse_image_features`` the untouched model's image features held by the session stand in
    for re-encoding (only the text side changed)."""
    from .tuning import measure_pixels

    def features(ev: EvalSet) -> Any:
        key = _eval_key(base, ev.name, len(ev.labels))
        return session.peek("base_features", key) if reuse_image_features else None

    return [measure_pixels(adapted, ev.pixels, ev.labels, ev.class_names, ev.template, image_features=features(ev))
            for ev in sets]


def standard_error(acc: float, n: int) -> float | None:
    """Binomial standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n) if n > 0 else None


def ood_references(source: str, names: Sequence[str] | None, session: Session) -> dict[str, DatasetBundle]:
    """The OOD reference sets, once per session: ``names`` when given, else one per *other*
    source (the offline built-in base sets whose source is not the task's: a task derived from
    MNIST is not measured "out of domain" on MNIST). A sweep worker's session loads each
    reference set once for all its runs."""
    key = (source, tuple(names) if names is not None else None)
    return session.get("ood", key, lambda: _load_ood_references(source, names, session))


def _load_ood_references(source: str, names: Sequence[str] | None, session: Session) -> dict[str, DatasetBundle]:
    from .plugins import list_datasets

    out: dict[str, DatasetBundle] = {}
    for name in (names if names is not None else [src.name for src in list_datasets(ood_reference=True)]):
        try:
            bundle = load_bundle(session, DatasetSpec(name))
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
    return out


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ the run


@dataclass
class RunInputs:
    """What the run loaded: the dataset, its training part, the OOD reference sets, the model
    and the preprocessed images."""

    bundle: DatasetBundle
    template: str
    train_split: ImageSet
    train: ImageSet
    base: Any
    id_set: EvalSet
    ood_sets: list[EvalSet]
    train_pixels: Any
    train_labels: Any
    t_prepare: float


@dataclass
class Before:
    """The untouched model's measurements and the pair's descriptors and signals."""

    id_acc: float
    gap: float
    ood: dict[str, float]
    pair: Any
    prepare_s: float


@dataclass
class Trained:
    """The tuner's result, the learning curve and the training time."""

    result: Any
    recorder: Any
    wall: float


@dataclass
class After:
    """The adapted model's measurements."""

    id_acc: float
    gap: float
    ood: dict[str, float]
    reuse: bool
    evaluate_s: float


def run_finetune(model_spec: ModelSpec, dataset_spec: DatasetSpec, method: str, *,
                 on_step: Callable[[int, int, float], None] | None = None, session: Session | None = None,
                 **options: Any) -> RunResult:
    """Compatibility wrapper: ``RunRequest(model_spec, dataset_spec, method, **options)``,
    checked (``check_request``) and run (``run_request``). ``options`` are RunRequest's fields."""
    from .run_checks import check_request

    req = RunRequest(model_spec, dataset_spec, method, **options)
    return run_request(check_request(req), session, on_step=on_step)


def run_request(checked: CheckedRun, session: Session | None = None, *,
                on_step: Callable[[int, int, float], None] | None = None) -> RunResult:
    """Train the checked request's method on the pair, measure before/after and record one run
    (see module doc). ``session`` holds what is loaded (a sweep worker passes one for all its
    runs).

    The trained adapter is written only for a recorded run, into ``adapters_dir`` or the
    directory beside the history (``config.adapters_dir``); the row stores its path relative
    to that directory, and the returned run's ``adapter_path`` is the file the row points to."""
    req, session = checked.request, session_or_new(session)
    adapter_folder = check_destinations(req)
    inputs = load_inputs(req, checked.device, session)
    schedule = checked.resolved.get("epochs")
    probe = req.stop_after_epochs is not None and isinstance(schedule, int) and req.stop_after_epochs < schedule
    # A probe is measured by its curve alone: the untouched model's test and OOD accuracies
    # (encoding every test image) would be thrown away with the run.
    before = measure_before(req, checked.device, inputs, session, zero_shot=not probe)
    trained = train(checked, inputs, on_step, session)
    partial = stopped_early(trained)
    # A run stopped before the end of its schedule (a probe) is measured by its curve only and
    # never recorded: it would be mistaken for a whole run.
    after = not_measured(inputs) if partial else measure_after(inputs, trained, checked.device, session)
    run_id = uuid.uuid4().hex[:16]
    adapter_path, adapter_file = save_adapter(req, trained, None if partial else adapter_folder, run_id)
    run = run_result(checked, inputs, before, trained, after, run_id, adapter_path)
    if req.record and partial:
        print(f"Warning: the run stopped after {len(run.losses)} of its {run.hparams.get('epochs')} epochs: "
              "not recorded", file=sys.stderr)
    elif req.record:
        record_or_spool(req, run, run_id, adapter_file)
    return run


def stopped_early(trained: Trained) -> bool:
    """Whether the tuner stopped before the end of its schedule (``stop_after_epochs`` or the
    probe budget): fewer epoch losses than the resolved epochs."""
    epochs = trained.result.hparams.get("epochs")
    return isinstance(epochs, int) and len(trained.result.losses) < epochs


def not_measured(inputs: RunInputs) -> After:
    """The after-measurement of a run stopped early: not taken (NaN)."""
    return After(math.nan, math.nan, {ev.name: math.nan for ev in inputs.ood_sets}, False, 0.0)


def check_destinations(req: RunRequest) -> Path | None:
    """Refuse now, not after the training, an unreachable or read-only history and an adapters
    directory that cannot be written; return that directory (None: no adapter is written)."""
    if req.record:
        from .history import open_history

        with open_history(req.db) as history:
            history.check_writable()
    if not (req.save_adapter and req.record):
        return None
    from .config import adapters_dir as adapters_dir_for
    from .history.location import location

    where = location(req.db)
    folder = adapters_dir_for(None if "://" in where else Path(where), req.adapters_dir)
    check_writable_dir(folder, "the adapters directory", "--adapters-dir")
    return folder


def load_inputs(req: RunRequest, device: str, session: Session) -> RunInputs:
    """Load the dataset, its few-shot training part, the OOD reference sets and the model, and
    preprocess the test and training images (each once per session but the training images)."""
    import torch

    from .data import few_shot, get_split
    from .embed import session_model
    from .terminal import phase

    bundle = load_bundle(session, req.dataset)
    train_split = train = get_split(bundle, "train")
    if req.shots is not None:
        train = few_shot(train, req.shots, req.seed, class_names=bundle.class_names)
    ood = ood_references(bundle.source or req.dataset.name, req.ood, session)
    torch.manual_seed(req.seed)
    np.random.seed(req.seed)
    t_prepare = time.perf_counter()
    base = session_model(req.model, device, session)  # the device was resolved by check_request
    with phase(f"preparing test images ({req.dataset.name} and {len(ood)} OOD sets)"):
        wanted = [(req.dataset.name, bundle, req.max_test), *((n, b, req.max_ood) for n, b in ood.items())]
        id_set, *ood_sets = test_sets(base, wanted, session)
    with phase(f"preparing {len(train)} training images"):
        train_pixels = preprocess_images(base, train)
    train_labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    return RunInputs(bundle, template_of(bundle), train_split, train, base, id_set, ood_sets, train_pixels,
                     train_labels, t_prepare)


def measure_before(req: RunRequest, device: str, inputs: RunInputs, session: Session,
                   zero_shot: bool = True) -> Before:
    """The untouched model on the test sets, and the pair's descriptors and signals: measured
    once per (model, dataset, device) in the session (a sweep worker reuses them); a run records
    what it measured, random weights included. ``zero_shot=False`` (a probe stopped before the
    end of its schedule) leaves the accuracies unmeasured (NaN)."""
    from .pair import prepare_pair

    base = inputs.base
    if zero_shot:
        (id_acc, gap), *ood_measured = measure_zero_shot(base, [inputs.id_set, *inputs.ood_sets], device, session)
        ood = {ev.name: acc for ev, (acc, _) in zip(inputs.ood_sets, ood_measured)}
    else:
        id_acc, gap, ood = math.nan, math.nan, {ev.name: math.nan for ev in inputs.ood_sets}

    def pair() -> Any:
        return prepare_pair(req.model, req.dataset, measure=req.signals, check_random=False, device=device,
                            quiet=req.quiet, model=base, bundle=inputs.bundle, session=session)

    prepared = session.get("pair", (req.model, req.dataset, device), pair) if req.signals else pair()
    return Before(id_acc, gap, ood, prepared, time.perf_counter() - inputs.t_prepare)


def train(checked: CheckedRun, inputs: RunInputs, on_step: Callable[[int, int, float], None] | None,
          session: Session) -> Trained:
    """Train a copy of the model (the session's stays pristine) with the tuner, recording the
    learning curve; the curve's measurements are not training time."""
    import torch

    from .terminal import phase

    req, device = checked.request, checked.device
    with phase("preparing the learning-curve sets"):
        recorder = curve_recorder(inputs.base, inputs.bundle, inputs.train_split, inputs.train, inputs.id_set,
                                  inputs.ood_sets, device, req.shots, session)
    progress = on_step or _progress_bar(req.quiet)
    ctx = TrainContext(
        model=copy.deepcopy(inputs.base), class_names=list(inputs.bundle.class_names), template=inputs.template,
        train_pixels=inputs.train_pixels, train_labels=inputs.train_labels, device=device, seed=req.seed,
        epochs=req.epochs, lr=req.lr, batch_size=req.batch_size, shots=req.shots, hparams=dict(req.hparams),
        progress=progress, on_epoch=recorder, stop_after_epochs=req.stop_after_epochs,
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if req.probe_budget_s is not None:  # from here: the tuner's own set-up counts against it
        ctx.deadline = time.monotonic() + float(req.probe_budget_s)
    t0, measured_before = time.perf_counter(), recorder.measure_s
    result = checked.tuner.train(ctx)
    wall = time.perf_counter() - t0 - (recorder.measure_s - measured_before)  # the curve's points excluded
    _close_progress(progress)
    check_converged(req.method, result.losses, result.hparams.get("lr", checked.resolved.get("lr")))
    return Trained(result, recorder, wall)


def measure_after(inputs: RunInputs, trained: Trained, device: str, session: Session) -> After:
    """The adapted model on the same test sets (the untouched model's image features reused
    when the image tower is bitwise unchanged)."""
    t_eval = time.perf_counter()
    adapted, base = trained.result.adapted, inputs.base
    reuse = image_tower_unchanged(base, adapted, inputs.id_set, device)
    (id_acc, gap), *ood_measured = measure_adapted(base, adapted, [inputs.id_set, *inputs.ood_sets], reuse, session)
    ood = {ev.name: acc for ev, (acc, _) in zip(inputs.ood_sets, ood_measured)}
    return After(id_acc, gap, ood, reuse, time.perf_counter() - t_eval)


def save_adapter(req: RunRequest, trained: Trained, folder: Path | None, run_id: str) -> tuple[str | None, Path | None]:
    """Write the trained adapter (a recorded run only): its path as the history stores it
    (relative to the adapters directory) and the file; (None, None) when none was written."""
    if folder is None:  # --no-record writes no file
        return None, None
    state = {k: v.detach().contiguous().cpu() for k, v in trained.result.adapted.adapter_state().items()}
    if not state:
        return None, None
    path = f"{run_id}-{req.method}.safetensors"
    if not _save_adapter(state, folder / path, {"method": req.method, "model": req.model.name,
                                                "dataset": req.dataset.name}):
        return None, None  # the measured run is kept, without its adapter
    return path, folder / path


def _measurement(req: RunRequest, inputs: RunInputs, before: Before, trained: Trained, after: After) -> dict[str, Any]:
    """How the run was measured: sample sizes, standard errors, the curve's sets."""
    id_n, recorder = len(inputs.id_set.labels), trained.recorder
    out: dict[str, Any] = {
        "eval_sample_seed": TEST_SAMPLE_SEED,
        "id_n": int(id_n),
        "ood_n": {ev.name: int(len(ev.labels)) for ev in inputs.ood_sets},
        "id_se_before": standard_error(before.id_acc, id_n),
        "id_se_after": standard_error(after.id_acc, id_n),
        "ood_se_before": {ev.name: standard_error(before.ood[ev.name], len(ev.labels)) for ev in inputs.ood_sets},
        "ood_se_after": {ev.name: standard_error(after.ood[ev.name], len(ev.labels)) for ev in inputs.ood_sets},
        "image_features_reused": after.reuse,
        "curve_version": CURVE_VERSION,
        "val_n": 0 if recorder.val is None else int(len(recorder.val.labels)),
        "ood_proxy_n": int(sum(len(p.labels) for p in recorder.ood)),
    }
    if req.stop_after_epochs is not None or req.probe_budget_s is not None:
        out["stopped_after_epochs"] = len(trained.result.losses)
    if req.probe_budget_s is not None:
        out["probe_budget_s"] = float(req.probe_budget_s)
    return out


def run_result(checked: CheckedRun, inputs: RunInputs, before: Before, trained: Trained, after: After,
               run_id: str, adapter_path: str | None) -> RunResult:
    """The measured run, as the history records it."""
    from .provenance import provenance

    req, device, result, wall, pair = checked.request, checked.device, trained.result, trained.wall, before.pair
    epochs_done = result.hparams.get("epochs") or req.epochs or 1
    timing = {"prepare_s": round(before.prepare_s, 3), "train_s": round(wall, 3),
              "evaluate_s": round(after.evaluate_s, 3), "curve_s": round(trained.recorder.measure_s, 3)}
    return RunResult(
        model=req.model.name, pretrained=req.model.pretrained, dataset=req.dataset.name, method=req.method,
        shots=req.shots, seed=req.seed, hparams=dict(result.hparams), split_hash=inputs.train.split_hash(),
        id_acc_before=before.id_acc, id_acc_after=after.id_acc, ood_before=before.ood, ood_after=after.ood,
        gap_before=before.gap, gap_after=after.gap, wall_time_s=wall,
        train_images_per_s=(len(inputs.train) * float(epochs_done) / wall) if wall > 0 else None,
        peak_memory_mb=_peak_memory_mb(device), trainable_params=int(result.trainable_params), device=device,
        provenance={**provenance(device, req.seed), **(req.provenance_extra or {}),
                    "measurement": _measurement(req, inputs, before, trained, after), "timing": timing},
        signals=dict(pair.signals), signal_versions=dict(pair.versions),
        model_desc=dict(pair.model_desc), dataset_desc=dict(pair.dataset_desc), losses=[float(x) for x in result.losses],
        curve=list(trained.recorder.points), adapter_path=adapter_path, run_id=run_id,
    )


def record_or_spool(req: RunRequest, run: RunResult, run_id: str, adapter_file: Path | None) -> None:
    """Record the run in one transaction; when the history cannot be written, spool it (and
    when the spool cannot be written either, print it on stderr). A retry keeps the history's
    first run and its adapter."""
    from .history import open_history

    try:
        with open_history(req.db) as history:
            run.run_id = history.record_run(run)
            if run.run_id != run_id:  # a retry: the history keeps the first run and its adapter
                run.adapter_path = history.get_run(run.run_id).get("adapter_path")
    except HistoryError as exc:
        # Measured but not writable (database down, locked, read-only): keep the run.
        from .history.spool import spool_run

        spool_run(run, req.spool_dir, exc)
    except BaseException:
        if adapter_file is not None:
            adapter_file.unlink(missing_ok=True)  # no row points at it
        raise
    if run.run_id != run_id and adapter_file is not None:
        adapter_file.unlink(missing_ok=True)
    if run.adapter_path and adapter_file is not None and not Path(run.adapter_path).is_absolute():
        run.adapter_path = str(adapter_file.parent / run.adapter_path)


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
                   ood_sets: Sequence[EvalSet], device: str, shots: int | None, session: Session | None = None) -> Any:
    """The learning-curve recorder of a run (``advisor.curves``): a validation part of the
    training split that the shots leave unused, and the first images of each OOD reference
    set's fixed sample, with the untouched model's features; point 0 measured."""
    from .curves import OOD_PROXY_PER_SET, CurveRecorder, ProxySet, validation_part
    from .tuning import ZeroShotAdapted, image_features_of

    base_adapted = ZeroShotAdapted(base, device=device)
    val = None
    part = validation_part(train_split, shots_part, len(bundle.class_names)) if shots is not None else None
    if part is not None:
        def make_val() -> ProxySet:
            pixels = preprocess_images(base, part)
            return ProxySet("validation", id_set.class_names, id_set.template, pixels, np.asarray(part.labels),
                            image_features_of(base_adapted, pixels))

        # once per session (the probes of a pair share it): read only by the recorder
        key = (base.identity(), id_set.name, part.split_hash())
        val = session.get("curve_validation", key, make_val) if session is not None else make_val()
    proxies = []
    for ev in ood_sets:
        n = min(OOD_PROXY_PER_SET, len(ev.labels))
        feats = session.peek("base_features", _eval_key(base, ev.name, len(ev.labels))) if session else None
        if feats is None:  # not measured (a probe): encode the proxy's images only, not the whole sample
            proxy = (lambda ev=ev, n=n: image_features_of(base_adapted, ev.pixels[:n]))
            feats = session.get("curve_proxy", (base.identity(), ev.name, len(ev.labels), n), proxy) if session \
                else proxy()
        proxies.append(ProxySet(ev.name, ev.class_names, ev.template, ev.pixels[:n], ev.labels[:n], feats[:n]))
    recorder = CurveRecorder(val=val, ood=proxies, base_adapted=base_adapted)
    if session is None:
        recorder.start()
        return recorder
    # point 0 is the untouched model on the same images for every run of the pair at these shots
    key = (base.identity(), id_set.name, part.split_hash() if part is not None else None,
           tuple((p.name, len(p.labels)) for p in proxies))

    def first() -> dict[str, Any]:
        recorder.start()
        return dict(recorder.points[0])

    point0 = session.get("curve_point0", key, first)
    if not recorder.points:
        recorder.start(point0)
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

