"""A prepared (model, dataset) pair: what ``advisor run``, ``advisor recommend`` and ``advisor
signals`` all start from.

``prepare_pair`` resolves the model spec once (an unknown name is one line before any work),
refuses randomly initialised weights unless allowed, describes the model (from the history when
it knows the model, so no weights load; from the loaded model when the caller has one) and the
dataset (``advisor.data.describe_dataset``: memoised, so a cached pair decodes no image), and
then either takes the pair's signals from the history or embeds the pair's signal sample (the
training split, seed 0 and ``DEFAULT_SIGNAL_IMAGES`` unless told otherwise, served by the
embedding cache) and runs every metric on it, storing the result as one signal set when asked.
``pair_from_embeddings`` is the same for a user's own embeddings file.

The result, ``PreparedPair``, carries the descriptors, the signal values and versions, where they
came from (``history`` | ``computed`` | ``embeddings``), and the measurement itself (the
``SignalSet`` with its errors, timings and the embeddings' metadata: split hash, cache hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .session import Session, session_or_new
from .specs import DatasetBundle, DatasetSpec, ModelSpec


@dataclass
class PreparedPair:
    """A (model, dataset) pair ready for a run, a recommendation or a signal report."""

    model_spec: ModelSpec
    dataset_spec: DatasetSpec | None
    model_desc: dict[str, Any]
    dataset_desc: dict[str, Any]
    signals: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    source: str = "none"  # "history" | "computed" | "embeddings" | "none" (descriptors only)
    signal_set: Any = None  # the advisor.signals.SignalSet measured now (None: not measured here)
    split_hash: str = ""
    stored: int | None = None  # the id of the signal set stored in the history, if one was

    @property
    def keys(self) -> dict[str, str]:
        """The history's keys of the pair (``model_key``, ``dataset_key``)."""
        from .history.keys import dataset_key, model_key

        return {"model_key": model_key(self.model_desc), "dataset_key": dataset_key(self.dataset_desc)}


# ------------------------------------------------------------------------------------------
# Descriptors
# ------------------------------------------------------------------------------------------


def known_model_desc(spec: ModelSpec, rows: Sequence[Mapping[str, Any]], history: Any = None) -> dict[str, Any] | None:
    """The model's descriptors from the history, when exactly one recorded model matches the
    spec (name, pretrained and, if given, image size): this avoids loading the weights. Models
    come from the runs, and from ``history.models()`` when the history offers it (models whose
    signals were measured without any run). Without ``--image-size``, a model recorded at
    exactly one resolution is taken at that resolution."""
    descs = [dict(r.get("model_desc") or {}, name=(r.get("model_desc") or {}).get("name") or r.get("model"))
             for r in rows]
    lister = getattr(history, "models", None)
    if callable(lister):
        descs += [dict(d) for d in lister()]
    found: dict[Any, dict[str, Any]] = {}
    for d in descs:
        if d.get("name") != spec.name:
            continue
        if (d.get("pretrained") or None) != (spec.pretrained or None):
            continue
        if spec.image_size is not None and d.get("image_size") != spec.image_size:
            continue
        found[d.get("image_size")] = d
    return next(iter(found.values())) if len(found) == 1 else None


def loaded_model_desc(spec: ModelSpec, model: Any) -> dict[str, Any]:
    """The descriptors of a loaded model, keyed as the history keys them (name and pretrained
    from the spec, the model's working image size)."""
    desc = dict(model.describe())
    desc.update(name=spec.name, pretrained=spec.pretrained, image_size=model.image_size)
    return desc


# ------------------------------------------------------------------------------------------
# prepare_pair
# ------------------------------------------------------------------------------------------


def prepare_pair(
    model_spec: ModelSpec,
    dataset_spec: DatasetSpec,
    *,
    history: Any = None,
    db: str | None = None,
    rows: Sequence[Mapping[str, Any]] = (),
    lookup: bool = False,
    store: bool = False,
    measure: bool = True,
    shots: int | None = None,
    seed: int = 0,
    max_images: int | None = None,
    device: str | None = None,
    use_cache: bool = True,
    quiet: bool = False,
    metrics: list[str] | None = None,
    allow_random_weights: bool = False,
    check_random: bool = True,
    model: Any = None,
    bundle: DatasetBundle | None = None,
    session: Session | None = None,
) -> PreparedPair:
    """Prepare the pair (see the module docstring).

    ``lookup``: signals the history (``history``, or ``db`` opened when needed) holds for the
    pair are used when it knows the model, and again under the model's real key after
    measuring, so nothing is measured twice. ``store``: signals measured now are stored as one
    signal set (an empty set is never stored). ``measure=False`` returns the descriptors only.
    ``model`` / ``bundle``: an already loaded model or dataset, described directly (``advisor
    run`` has both). ``check_random=False`` skips the random-weights refusal (a run records
    what it measured). ``session``: where the model is loaded once (``advisor.session``; a
    fresh one when None).
    """
    from .data import check_dataset_spec, dataset_descriptors, describe_dataset
    from .embed import check_image_size, model_source
    from .weights import check_weights, mark

    # The cheap checks first, each one line: an unknown model, an image size out of bounds, an
    # unknown dataset, option or missing folder, before the weights are looked up (seconds for
    # an open_clip model) and before any data loads. The model name is resolved once, in the
    # session, for every later step (the weights check, the cache key, the load).
    session = session_or_new(session)
    source = model_source(model_spec, session)
    check_image_size(model_spec)
    if bundle is None and dataset_spec is not None:
        check_dataset_spec(dataset_spec)
    known = loaded_model_desc(model_spec, model) if model is not None else None
    if known is None and lookup:
        known = known_model_desc(model_spec, rows, history)
    random = check_weights(model_spec, source, allow_random_weights, known) if check_random else False
    dataset_desc = (dataset_descriptors(bundle) if bundle is not None else
                    describe_dataset(dataset_spec) if lookup or not measure else None)
    pair = PreparedPair(model_spec, dataset_spec, mark(known, random) if known is not None else {},
                        dataset_desc or {})
    stored = _StoredSignals(history, db)
    if not measure or (lookup and known is not None and stored.fill(pair)):
        return pair
    _measure(pair, known, random, dataset_desc, stored, lookup=lookup, store=store, model=model, bundle=bundle,
             session=session, shots=shots, seed=seed, max_images=max_images, device=device, use_cache=use_cache,
             quiet=quiet, metrics=metrics)
    return pair


class _StoredSignals:
    """The history's signal sets for a pair, opened only when first needed."""

    def __init__(self, history: Any, db: str | None) -> None:
        self.history, self.db = history, db

    def opened(self) -> Any:
        if self.history is None:
            from .history import open_history

            self.history = open_history(self.db)
        return self.history

    def fill(self, pair: PreparedPair) -> bool:
        """Whether the history holds signals for the pair (then they are the pair's)."""
        keys = pair.keys
        found = self.opened().latest_signals(keys["model_key"], keys["dataset_key"])
        if found:
            pair.signals, pair.source = dict(found), "history"
        return bool(found)


def _measure(pair: PreparedPair, known: dict[str, Any] | None, random: bool, dataset_desc: dict[str, Any] | None,
             stored: _StoredSignals, *, lookup: bool, store: bool, model: Any, bundle: DatasetBundle | None,
             session: Session, max_images: int | None, **kwargs: Any) -> None:
    """Measure the pair's signals (``kwargs``: compute_signals' sample options), describe what
    was not described yet, and store a new signal set when asked."""
    from .config import resolve_device
    from .signals import compute_signals, describe_pair  # describe_pair: from the embeddings' metadata
    from .weights import mark

    model_spec, dataset_spec = pair.model_spec, pair.dataset_spec
    kwargs["device"] = device = resolve_device(kwargs["device"])
    if max_images is not None:
        kwargs["max_images"] = max_images
    # a loaded dataset is not loaded again, a loaded model not again
    sig = compute_signals(model_spec, dataset_spec, bundle=bundle, session=session, **kwargs)
    if model is None or dataset_desc is None:
        measured_model, measured_dataset = describe_pair(model_spec, dataset_spec, sig.meta, device, session)
    pair.model_desc = mark(known if model is not None else measured_model, random)
    pair.dataset_desc = dataset_desc if dataset_desc is not None else measured_dataset
    pair.signal_set, pair.split_hash = sig, str(sig.meta.get("split_hash") or "")
    if lookup and stored.fill(pair):
        return
    pair.signals = {k: float(v) for k, v in sig.values.items()}
    pair.versions, pair.source = dict(sig.versions), "computed"
    if store and pair.signals:
        pair.stored = stored.opened().store_signal_set(pair.model_desc, pair.dataset_desc, pair.split_hash,
                                                       dict(pair.signals), dict(sig.versions), dict(sig.seconds))


def pair_from_embeddings(path: str, model_name: str | None, dataset_name: str | None,
                         rows: Sequence[Mapping[str, Any]], history: Any) -> PreparedPair:
    """A pair from a user's own embeddings file: every registered metric runs on it;
    descriptors come from the file's ``meta_json`` (``model_desc``, ``dataset_desc``, as
    ``advisor`` writes them), else from the history's record of ``model_name``, else from the
    names given and the file's shapes. Nothing is stored."""
    from .embeddings_file import read as read_embeddings
    from .signals import run_metrics

    emb = read_embeddings(path)
    meta = emb.meta or {}
    model_desc = dict(meta["model_desc"]) if isinstance(meta.get("model_desc"), Mapping) else None
    if model_desc is None and model_name:
        model_desc = known_model_desc(ModelSpec(model_name), rows, history) or {"name": model_name}
    model_desc = model_desc or {"name": "embeddings"}
    model_desc.setdefault("embed_dim", int(emb.image.shape[1]))
    dataset_desc = dict(meta["dataset_desc"]) if isinstance(meta.get("dataset_desc"), Mapping) else {
        "name": dataset_name or Path(path).stem, "n_classes": int(emb.text.shape[0]), "n_train": int(emb.image.shape[0])}
    sig = run_metrics(emb, None)
    return PreparedPair(ModelSpec(str(model_desc.get("name"))), None, model_desc, dataset_desc,
                        signals={k: float(v) for k, v in sig.values.items()}, versions=dict(sig.versions),
                        source="embeddings", signal_set=sig,
                        split_hash=str(meta.get("split_hash") or ""))
