"""Run every registered metric on one set of embeddings: validated, timed, failures isolated.

A metric returns a float or a mapping of signal name -> float (``advisor.specs.Metric``). The
engine here is the only place that calls ``Metric.compute``: it skips metrics whose ``needs``
the embeddings cannot meet, checks that every value is a finite real number, times each metric,
and turns an exception or a bad value into an entry in ``SignalSet.errors`` under the metric's
name, so one broken (third-party) metric never costs the others.

Where the signals are computed (``signal_device``): when the model ran on a GPU (or the caller
asks for ``cuda``) and CUDA is available here, the embeddings are copied to that device once as
torch tensors and every metric registered with ``array_api=True`` (all built-ins) computes there
in torch, float64 as in numpy; otherwise everything runs in numpy on the CPU, exactly as before.
Metrics without ``array_api`` always receive numpy arrays.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import one_line
from .specs import DatasetSpec, Embeddings, Metric, ModelSpec
from .terminal import phase


@dataclass
class SignalSet:
    """The outcome of ``run_metrics``.

    ``values``, ``versions`` and ``seconds`` are keyed by *signal* name (what the history stores
    per row). A metric that reports several signals (IIMM and its terms) gives each of them its
    version and its total time; ``metric_seconds`` holds each metric's time once (sum that, not
    ``seconds``). ``metric_of`` maps each signal to the metric that produced it. ``errors`` and
    ``skipped`` are keyed by metric name with a one-line reason. ``meta`` carries the
    embeddings' metadata (split hash, model identity, cache hit, seconds) when known.
    """

    values: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    metric_of: dict[str, str] = field(default_factory=dict)
    metric_seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.metric_seconds.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "signals": dict(self.values),  # the key `recommend --json` and history rows use too
            "versions": dict(self.versions),
            "seconds": dict(self.seconds),
            "errors": dict(self.errors),
            "skipped": dict(self.skipped),
        }


def _as_float(value: Any) -> float:
    """A finite real number as a Python float, else ValueError (bools and complex are refused)."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (complex, np.complexfloating)):
        raise ValueError(f"returned {type(value).__name__} {value!r}, not a real number")
    if (isinstance(value, np.ndarray) or _is_torch(value)) and tuple(value.shape) == ():
        value = value.item()
        return _as_float(value)
    if not isinstance(value, numbers.Real):
        raise ValueError(f"returned {type(value).__name__}, not a number")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"returned a non-finite value ({out})")
    return out


def metric_outputs(metric: Metric, result: Any) -> dict[str, float]:
    """A metric's result as {signal name: finite float}, as the engine accepts it, else ValueError
    (a mapping of names to real numbers, or one real number named after the metric)."""
    if isinstance(result, Mapping):
        if not result:
            raise ValueError("returned an empty mapping")
        out = {}
        for key, value in result.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"returned a signal name that is not a string: {key!r}")
            try:
                out[key] = _as_float(value)
            except ValueError as exc:
                raise ValueError(f"signal {key!r} {exc}") from None
        return out
    return {metric.name: _as_float(result)}


def blas_threads() -> int | None:
    """1 when the machine is already busy (1-minute load average within half a core of the CPU
    count), else None (the BLAS library's own choice).

    On a shared machine a multi-threaded BLAS spins its threads against other processes: on this
    2-core machine under a load of 11-14, a 384x384 ``eigh`` took 1.09 s with 2 threads and 0.07 s
    with 1 (benchmarks/signals.py records the load with every run).
    """
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on this platform
        return None
    return 1 if cpus > 1 and load >= cpus - 0.5 else None


def _thread_limit(threads: int | None) -> Any:
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def signal_device(emb: Embeddings, device: str | None = None) -> str | None:
    """The torch device to compute the signals on, or None for numpy on the CPU.

    - ``emb`` already holds torch tensors: their device (the caller chose it);
    - else ``device`` when given, otherwise the device the embeddings were computed on
      (``emb.meta["device"]``): a ``cuda`` device is used when CUDA is available here (a cache
      written on a GPU machine and read on a CPU-only one falls back to numpy);
    - anything else (``cpu``, ``mps``, unknown): None, numpy.

    torch is imported only when a CUDA device is asked for.
    """
    if _is_torch(emb.image):
        return str(emb.image.device)
    wanted = device if device is not None else emb.meta.get("device")
    if not isinstance(wanted, str) or not wanted.startswith("cuda"):
        return None
    import torch

    return wanted if torch.cuda.is_available() else None


def _convert(emb: Embeddings, convert: Any) -> Embeddings:
    layers = (lambda xs: None if xs is None else [convert(x) for x in xs])
    return Embeddings(image=convert(emb.image), text=convert(emb.text), labels=convert(emb.labels),
                      class_names=list(emb.class_names), image_layers=layers(emb.image_layers),
                      text_layers=layers(emb.text_layers),
                      paired_text=None if emb.paired_text is None else convert(emb.paired_text),
                      meta=emb.meta, text_layer_rows=emb.text_layer_rows)


def embeddings_on(emb: Embeddings, device: str) -> Embeddings:
    """A copy of ``emb`` with every array a torch tensor on ``device`` (dtypes kept; labels
    int64): what ``run_metrics`` hands the ``array_api`` metrics when computing on a GPU."""
    import torch

    def convert(x: Any) -> Any:
        if _is_torch(x):
            return x.to(device)
        x = np.asarray(x)
        return torch.as_tensor(x.astype(np.int64) if x.dtype.kind in "iub" else x, device=device)

    return _convert(emb, convert)


def embeddings_in_numpy(emb: Embeddings) -> Embeddings:
    """``emb`` with numpy arrays (tensors copied to the host), for metrics without ``array_api``."""
    return _convert(emb, lambda x: x.detach().cpu().numpy() if _is_torch(x) else x)


def run_metrics(emb: Embeddings, names: list[str] | None = None, device: str | None = None) -> SignalSet:
    """Compute the named metrics (default: every registered one) on ``emb``.

    ``device``: where to compute (``signal_device``; default: where the embeddings were made,
    CUDA when available, else numpy). ``meta["signal_device"]`` records the choice.
    Unknown names raise UnknownNameError; everything a metric does wrong lands in ``errors``.
    """
    from .plugins import get_metric, get_metrics, is_builtin, provider_of

    if names:
        metrics = {n: get_metric(n) for n in names}
    else:
        # Built-in metrics first: when a third-party metric reports a signal name a built-in
        # already reports, the third-party one is the metric in error, not IIMM.
        registered = dict(get_metrics())
        order = sorted(registered, key=lambda n: not is_builtin(provider_of("metrics", n)))
        metrics = {n: registered[n] for n in order}
    available = emb.available
    out = SignalSet(meta=dict(emb.meta))
    out.meta.setdefault("n_images", len(emb.labels))
    out.meta.setdefault("n_classes", len(emb.text))
    dev = signal_device(emb, device)
    out.meta["signal_device"] = dev or "numpy"
    if dev is None:
        views = {False: emb}
    else:
        on_dev = emb if _is_torch(emb.image) else embeddings_on(emb, dev)
        views = {True: on_dev}
        if not all(getattr(m, "array_api", False) for m in metrics.values()):
            views[False] = emb if not _is_torch(emb.image) else embeddings_in_numpy(emb)
    threads = blas_threads()
    out.meta["blas_threads"] = threads or "default"
    with _thread_limit(threads):
        _run_each(views, metrics, available, out)
    return out


def _run_each(views: Mapping[bool, Embeddings], metrics: Mapping[str, Metric], available: frozenset[str],
              out: SignalSet) -> None:
    """``views[True]``: the embeddings as torch tensors (for ``array_api`` metrics), when the
    signals run in torch; ``views[False]``: the numpy embeddings."""
    for name, metric in metrics.items():
        emb = views[True] if True in views and getattr(metric, "array_api", False) else views[False]
        needs = frozenset(getattr(metric, "needs", frozenset()))
        missing = needs - available
        if missing:
            out.skipped[name] = f"needs {', '.join(sorted(missing))}"
            continue
        start = time.perf_counter()
        try:
            values = metric_outputs(metric, metric.compute(emb))
        except Exception as exc:  # noqa: BLE001 - a broken metric must not stop the others
            out.errors[name] = one_line(exc)
            continue
        elapsed = time.perf_counter() - start
        clash = sorted(k for k in values if k in out.values)
        if clash:
            out.errors[name] = f"signal {clash[0]!r} is already produced by metric {out.metric_of[clash[0]]!r}"
            continue
        version = str(getattr(metric, "version", "1"))
        for key, value in values.items():
            out.values[key] = value
            out.versions[key] = version
            out.seconds[key] = elapsed
            out.metric_of[key] = name
        out.metric_seconds[name] = elapsed


#: Signals are computed on a stratified, seeded sample of the training split: enough for stable
#: estimates (IIMM, gaps, LogME), and the same sample for ``advisor run`` and ``advisor recommend``.
DEFAULT_SIGNAL_IMAGES = 2000


def compute_signals(
    model_spec: ModelSpec | str,
    dataset_spec: DatasetSpec | str,
    *,
    shots: int | None = None,
    seed: int = 0,
    max_images: int | None = None,
    device: str | None = None,
    with_layers: bool = True,
    quiet: bool = False,
    use_cache: bool = True,
    metrics: list[str] | None = None,
    bundle: Any = None,
    session: Any = None,
) -> SignalSet:
    """Embed the pair's training split once (cached) and run every metric on it (``bundle``:
    the dataset already loaded from ``dataset_spec``, so it is not loaded again; ``session``:
    where the model is loaded once, ``advisor.session``).

    The returned SignalSet's ``meta`` holds the embeddings' metadata (``split_hash``, model
    identity, dataset fingerprint, cache hit, embedding seconds).
    """
    from .embed import embed

    if max_images is None:
        max_images = DEFAULT_SIGNAL_IMAGES
    if isinstance(model_spec, str):
        model_spec = ModelSpec(name=model_spec)
    if isinstance(dataset_spec, str):
        dataset_spec = DatasetSpec(name=dataset_spec)
    emb = embed(model_spec, dataset_spec, split="train", shots=shots, seed=seed, max_images=max_images,
                device=device, use_cache=use_cache, with_layers=with_layers, quiet=quiet, bundle=bundle,
                session=session)
    with phase(f"computing signals on {len(emb.labels)} images"):
        return run_metrics(emb, metrics, device=device)


def describe_pair(model_spec: ModelSpec, dataset_spec: DatasetSpec, meta: Mapping[str, Any],
                  device: str | None = None, session: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The history's model and dataset descriptors for a pair, keyed exactly as ``advisor run``
    keys them (name and pretrained from the spec, the model's working image size).

    Uses the embeddings' metadata when it carries them, so a cache hit does not load the model.
    """
    model_desc = meta.get("model_desc")
    if not isinstance(model_desc, Mapping):
        from .embed import load_model

        model_desc = load_model(model_spec, device, session=session).describe()
    model_desc = dict(model_desc)
    model_desc.update(name=model_spec.name, pretrained=model_spec.pretrained,
                      image_size=model_desc.get("image_size") or model_spec.image_size)
    dataset_desc = meta.get("dataset_desc")
    if not isinstance(dataset_desc, Mapping):
        from .data import dataset_descriptors, load_dataset

        dataset_desc = dataset_descriptors(load_dataset(dataset_spec))
    return model_desc, dict(dataset_desc)
