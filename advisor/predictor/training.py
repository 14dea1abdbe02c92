"""Training a predictor against a history and storing it."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..errors import HistoryError, PredictorError
from .evaluation import clean_json, evaluate_lodo, has_curve_point
from . import DEFAULT_PREDICTOR
from .rows import row_dataset, row_targets

#: Below this much history the predictor is not trained; recommend falls back to the IIMM heuristic.
MIN_RUNS = 10
MIN_DATASETS = 3
#: Run fields a training row with curves leaves out (the history's lean rows drop these and
#: the curve; a probe predictor needs the curve).
_NOT_READ_WITH_CURVES = ("losses", "provenance", "adapter_path")


def probe_predictor_name(k: int) -> str:
    """The name a predictor with ``probe_epochs=k`` is stored under: ``probe-{k}``."""
    return f"probe-{int(k)}"


def history_ready(rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether the history is big enough to train on, and a one-line reason if not."""
    usable = [r for r in rows if math.isfinite(row_targets(r)["id_gain"])]
    n_ds = len({row_dataset(r) for r in usable})
    if len(usable) < MIN_RUNS or n_ds < MIN_DATASETS:
        return False, (
            f"the history has {len(usable)} usable runs over {n_ds} datasets; "
            f"a predictor needs at least {MIN_RUNS} runs over {MIN_DATASETS} datasets"
        )
    return True, ""


def _training_rows(history: Any, curves: bool = False) -> list[dict[str, Any]]:
    """Every run as a lean training row (``History.iter_training_rows``: streamed, without the
    fields the predictor never reads, shared descriptors and signals), else ``training_rows``.
    ``curves``: with each run's learning curve (what probe features read)."""
    stream = getattr(history, "iter_training_rows", None)
    if not callable(stream):
        return history.training_rows()
    if not curves:
        return list(stream(lean=True))
    out = []
    for r in stream(lean=False):
        for f in _NOT_READ_WITH_CURVES:
            r.pop(f, None)
        out.append(r)
    return out


def rows_with_curve(rows: Sequence[Mapping[str, Any]], k: int) -> int:
    """How many rows have a learning-curve point at epoch ``k`` with a measurement in it."""
    from .probes import probe_features

    return sum(1 for r in rows if any(math.isfinite(v) for v in probe_features(r.get("curve"), k).values()))


def _fit(history: Any, est: Any, evaluate: bool, probe: int | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(fitted model, scores, extra summary) of ``est`` fitted on every run of ``history``."""
    from ..terminal import phase

    with phase("reading the history"):
        rows = _training_rows(history, curves=probe is not None)
    ok, why = history_ready(rows)
    if not ok:
        raise PredictorError(f"cannot train: {why}; record more runs with `advisor run`")
    with_curve = rows_with_curve(rows, probe) if probe is not None else 0
    if probe is not None and not with_curve:
        raise PredictorError(f"cannot train a probe predictor: no run in the history records its learning curve "
                             f"to epoch {probe}; record runs with `advisor run` (every run records its curve)")
    with phase(f"fitting the predictor on {len(rows)} runs"):
        model = est.fit_rows(rows).model_
    scores: dict[str, Any] = {"n_runs": model.n_runs, "datasets": model.datasets,
                              "monotone_shots": [t for t, m in zip(model.target_names, model.monotone) if any(m)],
                              "spaces": model.spaces}
    if probe is not None:
        scores.update(probe_epochs=probe, n_with_curve=with_curve)
    if evaluate:
        with phase("scoring it leave-one-dataset-out"):
            # a probe predictor is scored where a probe tells it something: the held-out runs
            # with a curve point at K (trained, in each fold, on every run, as here)
            ev = evaluate_lodo(rows, estimator=est,
                               scored=None if probe is None else (lambda r: has_curve_point(r, probe)))
        scores.update({k: ev[k] for k in ("holdout", "targets", "calibration", "seed_noise", "baselines", "n_groups")})
    scores = clean_json(scores)
    extra: dict[str, Any] = {}
    if callable(getattr(history, "run_groups", None)):  # a history, not a test's stand-in
        from .support import HistorySummary

        with phase("summarising the history for recommend"):
            extra["summary"] = HistorySummary.build(rows, history).to_dict()
    return model, scores, extra


def _estimator(estimator: Any, probe: int | None) -> Any:
    from sklearn.base import clone

    from .estimator import AdvisorPredictor

    est = clone(estimator) if estimator is not None else AdvisorPredictor()
    return est.set_params(probe_epochs=probe) if probe is not None else est


def train_predictor(
    history: Any,
    *,
    name: str | None = None,
    evaluate: bool = True,
    estimator: Any = None,
    probe: int | None = None,
) -> dict[str, Any]:
    """Fit on every run in ``history`` (an unfitted ``AdvisorPredictor``, default
    hyper-parameters unless ``estimator`` is given), optionally score it leave-one-dataset-out,
    and save it under ``name`` (default ``default``). ``probe=k`` adds the probe features of the
    runs' curves at epoch k (``probe_epochs``; runs without a curve have NaN there) and stores
    it as ``probe-{k}``. Returns a summary."""
    from .features import check_probe_epochs

    try:
        probe = check_probe_epochs(probe)
    except ValueError as exc:
        raise PredictorError(str(exc)) from None
    if name is None:
        name = probe_predictor_name(probe) if probe is not None else DEFAULT_PREDICTOR
    est = _estimator(estimator, probe)
    model, scores, extra = _fit(history, est, evaluate, probe)
    pid = history.save_predictor(name, model.to_json(), model.feature_names, model.training_hash, scores, **extra)
    return _summary(name, pid, model, scores)


def _summary(name: str, pid: Any, model: Any, scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "id": pid,
        "n_runs": model.n_runs,
        "datasets": model.datasets,
        "n_features": model.n_features,
        "signals": model.schema.signals if model.schema else [],
        "probe_epochs": model.schema.probe_epochs if model.schema else None,
        "training_hash": model.training_hash,
        "scores": scores,
    }


def load_or_train_probe_predictor(history: Any, k: int) -> tuple[Any, str | None]:
    """The stored ``probe-{k}`` predictor (a ``FittedPredictor``) and None; else one trained now
    on every run of ``history`` (not scored: ``advisor predictor train --probe k`` scores it),
    stored when the history can be written, and a note saying what was done. Raises
    PredictorError when the history is too small or no run has a curve reaching epoch k."""
    from .features import check_probe_epochs
    from .stored import FittedPredictor

    try:
        k = check_probe_epochs(k)
    except ValueError as exc:
        raise PredictorError(str(exc)) from None
    if k is None:
        raise PredictorError("a probe predictor needs a number of probe epochs")
    name = probe_predictor_name(k)
    stored = history.load_predictor(name)
    if stored is not None:
        fp = FittedPredictor.from_stored(stored)
        if fp.schema is None or fp.schema.probe_epochs != k:
            raise PredictorError(f"stored predictor {name!r} was not trained on probes of {k} epochs; "
                                 f"run `advisor predictor train --probe {k}`")
        return fp, None
    model, scores, extra = _fit(history, _estimator(None, k), False, k)
    what = (f"no probe predictor {name!r} was stored: trained one now on {model.n_runs} runs "
            f"({scores['n_with_curve']} with a curve to epoch {k}) over {len(model.datasets)} datasets")
    try:
        history.save_predictor(name, model.to_json(), model.feature_names, model.training_hash, scores, **extra)
    except HistoryError as exc:
        return model, f"{what}, used without storing it (the history cannot be written: {exc})"
    return FittedPredictor.from_stored(history.load_predictor(name)), (
        f"{what} and stored it (`advisor predictor train --probe {k}` scores it)")
