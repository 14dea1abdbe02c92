"""Held-out evaluation of the predictor and of every baseline, in one loop.

``evaluate(rows, holdout=...)`` leaves one group out at a time: a dataset (``dataset``), the
source of its images (``source``; a row without a ``source`` descriptor counts by its dataset
name) or the model's image tower (``tower``; without an ``image_tower`` descriptor, the model
family). The feature schema, the history support, the predictor (and its conformal
calibration) and every baseline are fitted on the other groups' runs only, then asked about
the held-out runs (all shots and seeds).

Reported per recommender and target: Spearman and MAE over the held-out runs; per held-out
(model, dataset, shots) group with at least two methods measured (seeds averaged): top-1 and
regret of the recommended method, for the ``gain`` (ID gain) and ``balanced`` (ID gain + OOD
change) objectives. For the predictor also the empirical coverage of its intervals at the
nominal level and at ``CALIBRATION_LEVELS`` (the calibration curve). Beside them the history's
seed-to-seed noise (``rows.seed_noise``): the MAE no predictor can beat.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import PredictorError
from .baselines import AnchorOffset, BestSingleMethod, IIMMLinear, SignalKNN, ZeroShotLinear
from .intervals import coverage
from .rows import (
    HOLDOUT_KEYS,
    TARGETS,
    row_dataset,
    row_method,
    row_model,
    row_shots,
    seed_noise,
    targets_matrix,
)

#: Interval levels at which coverage is measured for the calibration curve.
CALIBRATION_LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: Recommenders in the order they are reported; ``random`` is an exact expectation.
RECOMMENDERS: tuple[str, ...] = ("predictor", "anchor-only", "best-single-method", "zero-shot-only", "iimm-linear",
                                 "knn", "random")
#: Hold-out modes: one group out at a time (``rows.HOLDOUT_KEYS``), and ``headroom``: one fold
#: that trains on the pairs with the least headroom and tests on the top ``HEADROOM_TEST_SHARE``.
HOLDOUT_MODES: tuple[str, ...] = (*HOLDOUT_KEYS, "headroom")
HEADROOM_TEST_SHARE = 0.2
OBJECTIVES: tuple[str, ...] = ("gain", "balanced")


class EvaluationError(PredictorError):
    """The history cannot be evaluated this way (too few groups, unknown holdout)."""


def holdout_folds(rows: Sequence[Mapping[str, Any]], holdout: str = "dataset") -> list[tuple[str, list[int], list[int]]]:
    """(held-out group, train indices, test indices): every row of the group is in test, none
    in train."""
    if holdout == "headroom":
        return headroom_folds(rows)
    if holdout not in HOLDOUT_KEYS:
        raise EvaluationError(f"unknown holdout {holdout!r} (choose from {', '.join(HOLDOUT_MODES)})")
    key = HOLDOUT_KEYS[holdout]
    names = [key(r) for r in rows]
    return [
        (d, [i for i, n in enumerate(names) if n != d], [i for i, n in enumerate(names) if n == d])
        for d in sorted(set(names))
    ]


def pair_headroom(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """Per (model, dataset) pair: 1 - its mean zero-shot accuracy over the pair's runs."""
    from .rows import row_zero_shot

    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        z = row_zero_shot(r)
        if math.isfinite(z):
            acc.setdefault((row_model(r), row_dataset(r)), []).append(z)
    return {k: 1.0 - float(np.mean(v)) for k, v in acc.items()}


def headroom_folds(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int], list[int]]]:
    """One fold: the pairs with the most headroom (the top ``HEADROOM_TEST_SHARE`` of pairs, at
    least one) are tested, after training on the others, the situation a new user meets with
    image sets the history's models do not know. A pair without zero-shot accuracy stays in
    training."""
    room = pair_headroom(rows)
    ranked = sorted(room, key=lambda k: (-room[k], k))
    n_test = max(1, int(round(len(ranked) * HEADROOM_TEST_SHARE))) if len(ranked) >= 2 else 0
    test_pairs = set(ranked[:n_test])
    keys = [(row_model(r), row_dataset(r)) for r in rows]
    test = [i for i, k in enumerate(keys) if k in test_pairs]
    train = [i for i, k in enumerate(keys) if k not in test_pairs]
    cut = min((room[k] for k in test_pairs), default=math.nan)
    return [(f"headroom >= {cut:.2f}", train, test)] if test and train else []


def lodo_folds(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int], list[int]]]:
    """Leave-one-dataset-out folds (``holdout_folds(rows, "dataset")``)."""
    return holdout_folds(rows, "dataset")


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


def evaluate(
    rows: Sequence[Mapping[str, Any]],
    *,
    holdout: str = "dataset",
    estimator: Any = None,
    knn_k: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Scores of the predictor and of every baseline with one ``holdout`` group left out at a
    time (see the module docstring). Plain JSON (NaN -> None)."""
    rows = list(rows)
    folds = holdout_folds(rows, holdout)
    if holdout == "headroom" and not folds:
        raise EvaluationError("the headroom hold-out needs runs on at least 2 (model, dataset) pairs")
    if holdout != "headroom" and len(folds) < 2:
        raise EvaluationError(
            f"leave-one-{holdout}-out needs runs on at least 2 {holdout}s (the history has {len(folds)}"
            + (f": {folds[0][0]}" if folds else "") + ")"
        )
    from sklearn.base import clone

    from .estimator import AdvisorPredictor

    base = estimator if estimator is not None else AdvisorPredictor()
    nominal = float(base.get_params().get("interval", 0.8))
    levels = sorted(set(CALIBRATION_LEVELS) | {nominal})
    Y = targets_matrix(rows)
    n, k = len(rows), len(TARGETS)
    pred = {name: np.full((n, k), np.nan) for name in RECOMMENDERS if name != "random"}
    bounds = {lv: (np.full((n, k), np.nan), np.full((n, k), np.nan)) for lv in levels}
    n_flags = np.zeros(n, dtype=int)
    folds_out = []
    conformal_by = "dataset" if holdout == "headroom" else holdout
    from ..terminal import progress_bar

    bar = progress_bar(len(folds), f"held-out {holdout}s", "fold")  # on stderr, where progress shows
    for group, train_idx, test_idx in folds:
        bar.set_postfix_str(str(group), refresh=False)
        bar.update(1)
        if progress:
            progress(group)
        train = [rows[i] for i in train_idx]
        test = [rows[i] for i in test_idx]
        folds_out.append({"held_out": group, "n_train": len(train), "n_test": len(test)})
        if len(train) < 2:
            continue
        fitted = clone(base).fit_rows(train, group_by=conformal_by).model_
        for lv in levels:
            p = fitted.predict_rows(test, level=lv)
            bounds[lv][0][test_idx], bounds[lv][1][test_idx] = p["lo"], p["hi"]
        pred["predictor"][test_idx] = p["mean"]
        n_flags[test_idx] = [len(f) for f in p["flags"]]
        baselines = [AnchorOffset().fit(train), BestSingleMethod().fit(train), ZeroShotLinear().fit(train),
                     IIMMLinear().fit(train), SignalKNN(knn_k).fit(train)]
        for i, r in zip(test_idx, test):
            for bl in baselines:
                out = bl.predict_row(r, row_method(r))
                pred[bl.name][i] = [out[t] for t in TARGETS]
    bar.close()

    targets = {}
    for j, t in enumerate(TARGETS):
        cov, n_cov = coverage(Y[:, j], bounds[nominal][0][:, j], bounds[nominal][1][:, j])
        width = bounds[nominal][1][:, j] - bounds[nominal][0][:, j]
        targets[t] = {
            "spearman": spearman(pred["predictor"][:, j], Y[:, j]),
            "mae": mae(pred["predictor"][:, j], Y[:, j]),
            "n": int(np.sum(np.isfinite(Y[:, j]) & np.isfinite(pred["predictor"][:, j]))),
            "coverage": cov,
            "interval": nominal,
            "median_width": float(np.nanmedian(width)) if np.isfinite(width).any() else None,
        }
    calibration = {
        t: [{"level": lv, "coverage": coverage(Y[:, j], bounds[lv][0][:, j], bounds[lv][1][:, j])[0]} for lv in levels]
        for j, t in enumerate(TARGETS)
    }
    groups = _groups(rows, Y, pred)
    recommenders = []
    for name in RECOMMENDERS:
        entry: dict[str, Any] = {"name": name}
        if name in pred:
            for j, t in enumerate(TARGETS):
                entry[f"{t}_spearman"] = spearman(pred[name][:, j], Y[:, j])
                entry[f"{t}_mae"] = mae(pred[name][:, j], Y[:, j])
        for objective in OBJECTIVES:
            entry.update(_choice_scores(groups, name, objective))
        recommenders.append(entry)
    held_out_name = [""] * n
    for group, _, test_idx in folds:
        for i in test_idx:
            held_out_name[i] = group
    predictions = [
        {
            "held_out": held_out_name[i],
            "dataset": row_dataset(r),
            "model": row_model(r),
            "method": row_method(r),
            "shots": row_shots(r),
            "seed": r.get("seed"),
            "out_of_support": int(n_flags[i]),
            **{f"measured_{t}": _none(Y[i, j]) for j, t in enumerate(TARGETS)},
            **{f"predicted_{t}": _none(pred["predictor"][i, j]) for j, t in enumerate(TARGETS)},
            **{f"lo_{t}": _none(bounds[nominal][0][i, j]) for j, t in enumerate(TARGETS)},
            **{f"hi_{t}": _none(bounds[nominal][1][i, j]) for j, t in enumerate(TARGETS)},
        }
        for i, r in enumerate(rows)
    ]
    return clean_json({
        "holdout": holdout,
        "estimator": {k: v for k, v in base.get_params().items()
                      if k in ("gain_target", "feature_set", "linear_tree", "cost_target")},
        "n_runs": len(rows),
        "n_held_out": len(folds),
        "n_datasets": len({row_dataset(r) for r in rows}),
        "folds": folds_out,
        "targets": targets,
        "calibration": calibration,
        "seed_noise": seed_noise(rows),
        "baselines": recommenders,
        "n_groups": {o: sum(1 for g in groups if g["valid"][o]) for o in OBJECTIVES},
        "predictions": predictions,
    })


#: The scores an ablation compares (keys of the predictor's entry in ``baselines``).
ABLATION_SCORES: tuple[str, ...] = ("id_gain_mae", "id_gain_spearman", "ood_change_mae", "ood_change_spearman",
                                    "top1_gain", "regret_gain", "top1_balanced", "regret_balanced")


def ablation(rows: Sequence[Mapping[str, Any]], *, holdout: str = "dataset", estimator: Any = None,
             feature_sets: Sequence[str] | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The predictor evaluated with each feature set of ``features.FEATURE_SETS`` (every feature,
    without the seed papers' signals, without the anchors, the anchors alone) on the same folds,
    beside the anchor-only baseline: does a group of inputs still add anything?"""
    from sklearn.base import clone

    from .estimator import AdvisorPredictor
    from .features import FEATURE_SETS

    base = estimator if estimator is not None else AdvisorPredictor()
    out: list[dict[str, Any]] = []
    anchor_only: dict[str, Any] | None = None
    for fs in feature_sets or FEATURE_SETS:
        if progress:
            progress(f"feature set {fs}")
        ev = evaluate(rows, holdout=holdout, estimator=clone(base).set_params(feature_set=fs))
        by = {b["name"]: b for b in ev["baselines"]}
        out.append({"feature_set": fs, **{k: by["predictor"].get(k) for k in ABLATION_SCORES},
                    "coverage_id_gain": ev["targets"]["id_gain"]["coverage"]})
        anchor_only = anchor_only or {"feature_set": "anchor-only baseline",
                                      **{k: by["anchor-only"].get(k) for k in ABLATION_SCORES}}
    return clean_json({"holdout": holdout, "n_runs": len(rows), "ablation": out + ([anchor_only] if anchor_only else []),
                       "estimator": {k: v for k, v in base.get_params().items() if k in ("gain_target", "linear_tree")}})


def evaluate_lodo(rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Leave-one-dataset-out: ``evaluate(rows, holdout="dataset", ...)``."""
    return evaluate(rows, holdout="dataset", **kwargs)


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
            for o in OBJECTIVES
        }
        out.append(g)
    return out


def _choice_scores(groups: list[dict[str, Any]], name: str, objective: str) -> dict[str, Any]:
    """Top-1 accuracy and mean regret of one recommender over the valid groups. A recommender
    without a prediction for any measured method of a group is scored on the groups it answers."""
    hits, regrets = [], []
    for g in groups:
        if not g["valid"][objective]:
            continue
        measured = {m: objective_value(*v, objective) for m, v in g["measured"].items()}
        measured = {m: v for m, v in measured.items() if math.isfinite(v)}
        best = max(measured.values())
        if name == "random":  # exact expectation over a uniform choice: no seed needed
            hits.append(sum(1 for v in measured.values() if v == best) / len(measured))
            regrets.append(float(np.mean([best - v for v in measured.values()])))
            continue
        scores = {m: objective_value(*g["pred"][name].get(m, (math.nan, math.nan)), objective) for m in measured}
        finite = {m: s for m, s in scores.items() if math.isfinite(s)}
        if not finite:
            continue
        choice = max(sorted(finite), key=lambda m: finite[m])  # ties: first by name
        hits.append(1.0 if measured[choice] == best else 0.0)
        regrets.append(best - measured[choice])
    return {
        f"top1_{objective}": float(np.mean(hits)) if hits else None,
        f"regret_{objective}": float(np.mean(regrets)) if regrets else None,
        f"groups_{objective}": len(hits),
    }
