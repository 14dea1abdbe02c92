"""Training a predictor against a history and storing it."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..errors import PredictorError
from .evaluation import clean_json, evaluate_lodo
from . import DEFAULT_PREDICTOR
from .rows import row_dataset, row_targets

#: Below this much history the predictor is not trained; recommend falls back to the IIMM heuristic.
MIN_RUNS = 10
MIN_DATASETS = 3
#: Known method order used to break ties and for fallbacks (third-party tuners come after).


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


def _training_rows(history: Any) -> list[dict[str, Any]]:
    """Every run as a lean training row (``History.iter_training_rows``: streamed, without the
    fields the predictor never reads, shared descriptors and signals), else ``training_rows``."""
    stream = getattr(history, "iter_training_rows", None)
    return list(stream(lean=True)) if callable(stream) else history.training_rows()


def train_predictor(
    history: Any,
    *,
    name: str = DEFAULT_PREDICTOR,
    evaluate: bool = True,
    estimator: Any = None,
) -> dict[str, Any]:
    """Fit on every run in ``history`` (an unfitted ``AdvisorPredictor``, default
    hyper-parameters unless ``estimator`` is given), optionally score it leave-one-dataset-out,
    and save it. Returns a summary."""
    from sklearn.base import clone

    from .estimator import AdvisorPredictor

    from ..terminal import phase

    with phase("reading the history"):
        rows = _training_rows(history)
    ok, why = history_ready(rows)
    if not ok:
        raise PredictorError(f"cannot train: {why}; record more runs with `advisor run`")
    est = clone(estimator) if estimator is not None else AdvisorPredictor()
    with phase(f"fitting the predictor on {len(rows)} runs"):
        model = est.fit_rows(rows).model_
    scores: dict[str, Any] = {"n_runs": model.n_runs, "datasets": model.datasets,
                              "monotone_shots": [t for t, m in zip(model.target_names, model.monotone) if any(m)],
                              "spaces": model.spaces}
    if evaluate:
        with phase("scoring it leave-one-dataset-out"):
            ev = evaluate_lodo(rows, estimator=est)
        scores.update({k: ev[k] for k in ("holdout", "targets", "calibration", "seed_noise", "baselines", "n_groups")})
    scores = clean_json(scores)
    extra: dict[str, Any] = {}
    if callable(getattr(history, "run_groups", None)):  # a history, not a test's stand-in
        from .support import HistorySummary

        with phase("summarising the history for recommend"):
            extra["summary"] = HistorySummary.build(rows, history).to_dict()
    pid = history.save_predictor(name, model.to_json(), model.feature_names, model.training_hash, scores, **extra)
    return {
        "name": name,
        "id": pid,
        "n_runs": model.n_runs,
        "datasets": model.datasets,
        "n_features": model.n_features,
        "signals": model.schema.signals if model.schema else [],
        "training_hash": model.training_hash,
        "scores": scores,
    }

