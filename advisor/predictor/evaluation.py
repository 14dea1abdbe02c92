"""Leave-one-dataset-out evaluation of the predictor and of every baseline, in one loop.

For each dataset, the feature schema, the predictor and every baseline are fitted on the runs of
all *other* datasets only, then scored on the held-out dataset's runs (all shots and seeds).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import PredictorError
from .baselines import IIMMLinear, SignalKNN
from .rows import TARGETS, row_dataset, row_method, row_model, row_shots, targets_matrix

#: Known method order used to break ties and for fallbacks (third-party tuners come after).
KNOWN_METHODS: tuple[str, ...] = ("full", "lora", "coop", "contcoop", "tpc_cma")


_FALLBACK = ("lora", "full", "contcoop", "coop", "tpc_cma")


def lodo_folds(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int], list[int]]]:
    """(held-out dataset, train indices, test indices): every row of the held-out dataset
    (any model, shots or seed) is in test, none in train."""
    names = [row_dataset(r) for r in rows]
    return [
        (d, [i for i, n in enumerate(names) if n != d], [i for i, n in enumerate(names) if n == d])
        for d in sorted(set(names))
    ]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else math.nan


def objective_value(g: float, o: float, objective: str) -> float:
    if objective == "gain":
        return g
    if objective == "balanced":
        return g + o
    raise ValueError(objective)


def evaluate_lodo(
    rows: Sequence[Mapping[str, Any]],
    *,
    estimator: Any = None,
    knn_k: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-dataset-out scores of the predictor and of every baseline, in one loop.

    Per target: Spearman and MAE of predicted vs measured over all held-out runs. Per held-out
    (model, dataset, shots) group with at least two methods measured (seeds averaged): top-1
    accuracy and regret of the recommended method, for the ``gain`` and ``balanced`` objectives.
    """
    rows = list(rows)
    folds = lodo_folds(rows)
    if len(folds) < 2:
        raise PredictorError(
            f"leave-one-dataset-out needs runs on at least 2 datasets (the history has {len(folds)})"
        )
    from sklearn.base import clone

    from .estimator import AdvisorPredictor

    base = estimator if estimator is not None else AdvisorPredictor()
    Y = targets_matrix(rows)
    pred = {name: np.full((len(rows), len(TARGETS)), np.nan) for name in ("predictor", "iimm-linear", "knn")}
    folds_out = []
    for d, train_idx, test_idx in folds:
        if progress:
            progress(d)
        train = [rows[i] for i in train_idx]
        test = [rows[i] for i in test_idx]
        folds_out.append({"dataset": d, "n_train": len(train), "n_test": len(test)})
        if len({row_dataset(r) for r in train}) < 1 or len(train) < 2:
            continue
        est = clone(base).fit_rows(train)
        pred["predictor"][test_idx] = est.predict(est.rows_matrix(test))
        lin = IIMMLinear().fit(train)
        knn = SignalKNN(knn_k).fit(train)
        for i, r in zip(test_idx, test):
            for name, bl in (("iimm-linear", lin), ("knn", knn)):
                p = bl.predict_row(r, row_method(r))
                pred[name][i, 0], pred[name][i, 1] = p["id_gain"], p["ood_change"]

    targets = {
        t: {
            "spearman": spearman(pred["predictor"][:, j], Y[:, j]),
            "mae": mae(pred["predictor"][:, j], Y[:, j]),
            "n": int(np.sum(np.isfinite(Y[:, j]) & np.isfinite(pred["predictor"][:, j]))),
        }
        for j, t in enumerate(TARGETS)
    }
    groups = _groups(rows, Y, pred)
    baselines = []
    for name in ("predictor", "iimm-linear", "knn", "always-lora", "always-full", "random"):
        entry: dict[str, Any] = {"name": name}
        if name in pred:
            for j, t in enumerate(("id_gain", "ood_change")):
                entry[f"{t}spearman"] = spearman(pred[name][:, j], Y[:, j])
                entry[f"{t}mae"] = mae(pred[name][:, j], Y[:, j])
        for objective in ("gain", "balanced"):
            entry.update(_choice_scores(groups, name, objective))
        baselines.append(entry)
    predictions = [
        {
            "dataset": row_dataset(r),
            "model": row_model(r),
            "method": row_method(r),
            "shots": row_shots(r),
            "seed": r.get("seed"),
            **{f"measured_{t}": _none(Y[i, j]) for j, t in enumerate(TARGETS)},
            **{f"predicted_{t}": _none(pred["predictor"][i, j]) for j, t in enumerate(TARGETS)},
        }
        for i, r in enumerate(rows)
    ]
    return clean_json({
        "n_runs": len(rows),
        "n_datasets": len(folds),
        "folds": folds_out,
        "targets": targets,
        "baselines": baselines,
        "n_groups": {o: sum(1 for g in groups if g["valid"][o]) for o in ("gain", "balanced")},
        "predictions": predictions,
    })


def clean_json(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python numbers, recursively: valid JSON for storage."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _groups(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per (model, dataset, shots): measured and predicted (gain, ood) per method, seeds averaged."""
    keys: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        keys.setdefault((row_model(r), row_dataset(r), row_shots(r)), {}).setdefault(row_method(r), []).append(i)
    out = []
    for key, methods in keys.items():
        g: dict[str, Any] = {"key": key, "measured": {}, "pred": {n: {} for n in pred}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for m, idx in methods.items():
                g["measured"][m] = (float(np.nanmean(Y[idx, 0])), float(np.nanmean(Y[idx, 1])))
                for n, P in pred.items():
                    g["pred"][n][m] = (float(np.nanmean(P[idx, 0])), float(np.nanmean(P[idx, 1])))
        g["valid"] = {
            o: sum(1 for v in g["measured"].values() if math.isfinite(objective_value(*v, o))) >= 2
            for o in ("gain", "balanced")
        }
        out.append(g)
    return out


def method_order(methods: Iterable[str]) -> list[str]:
    known = [m for m in KNOWN_METHODS if m in methods]
    return known + sorted(m for m in methods if m not in KNOWN_METHODS)


def _choice_scores(groups: list[dict[str, Any]], name: str, objective: str) -> dict[str, Any]:
    """Top-1 accuracy and mean regret of one recommender over the valid groups."""
    hits, regrets = [], []
    for g in groups:
        if not g["valid"][objective]:
            continue
        measured = {m: objective_value(*v, objective) for m, v in g["measured"].items()}
        measured = {m: v for m, v in measured.items() if math.isfinite(v)}
        best = max(measured.values())
        cands = method_order(measured)
        if name == "random":  # exact expectation over a uniform choice: no seed needed
            hits.append(sum(1 for v in measured.values() if v == best) / len(measured))
            regrets.append(float(np.mean([best - v for v in measured.values()])))
            continue
        if name.startswith("always-"):
            want = name.split("-", 1)[1]
            order = [want] + [m for m in _FALLBACK if m != want] + cands
            choice = next(m for m in order if m in measured)
        else:
            scores = {m: objective_value(*g["pred"][name].get(m, (math.nan, math.nan)), objective) for m in cands}
            finite = {m: s for m, s in scores.items() if math.isfinite(s)}
            if not finite:
                continue
            choice = max(cands, key=lambda m: finite.get(m, -math.inf))  # ties: known order
        hits.append(1.0 if measured[choice] == best else 0.0)
        regrets.append(best - measured[choice])
    return {
        f"top1_{objective}": float(np.mean(hits)) if hits else None,
        f"regret_{objective}": float(np.mean(regrets)) if regrets else None,
        f"groups_{objective}": len(hits),
    }
