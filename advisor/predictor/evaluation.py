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

Then the choices judged as Quick-Tune judges them (``config_choice``, ``model_choice``): per
held-out (model, dataset, shots) group the (method, configuration) to run, where a
configuration is the run's values of the hyper-parameters that vary among its method's runs
(``varying_hparams``), beside constant rules fitted on the training folds (``ConfigRules``);
and per held-out (dataset, shots) group with several models the model to start from. Top-1,
raw regret and normalised regret (raw / (best - worst measured) in the group).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import PredictorError
from .baselines import AnchorOffset, BestSingleMethod, IIMMLinear, SignalKNN, ZeroShotLinear
from .intervals import coverage
from .rows import (
    HOLDOUT_KEYS,
    TARGETS,
    as_dict,
    as_float,
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


def checked_folds(rows: Sequence[Mapping[str, Any]], holdout: str) -> list[tuple[str, list[int], list[int]]]:
    """``holdout_folds``, refused with one line when there are too few groups to hold out."""
    folds = holdout_folds(rows, holdout)
    if holdout == "headroom" and not folds:
        raise EvaluationError("the headroom hold-out needs runs on at least 2 (model, dataset) pairs")
    if holdout != "headroom" and len(folds) < 2:
        raise EvaluationError(
            f"leave-one-{holdout}-out needs runs on at least 2 {holdout}s (the history has {len(folds)}"
            + (f": {folds[0][0]}" if folds else "") + ")"
        )
    return folds


def _baseline_predictions(train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]],
                          test_idx: Sequence[int], pred: dict[str, np.ndarray], knn_k: int) -> None:
    """Every baseline fitted on ``train``, its predictions for ``test`` written into ``pred``."""
    baselines = [AnchorOffset().fit(train), BestSingleMethod().fit(train), ZeroShotLinear().fit(train),
                 IIMMLinear().fit(train), SignalKNN(knn_k).fit(train)]
    for i, r in zip(test_idx, test):
        for bl in baselines:
            out = bl.predict_row(r, row_method(r))
            pred[bl.name][i] = [out[t] for t in TARGETS]


def mean_signed_error(pred: np.ndarray, true: np.ndarray) -> float | None:
    """Mean of predicted - measured over the pairs both have: above zero, the predictor
    over-predicts on the whole; below, it under-predicts (what a hold-out of new kinds of data
    shows when predictions are pulled back towards the history's average)."""
    ok = np.isfinite(pred) & np.isfinite(true)
    return float(np.mean(pred[ok] - true[ok])) if ok.any() else None


def _target_scores(Y: np.ndarray, P: np.ndarray, bounds: Mapping[float, tuple[np.ndarray, np.ndarray]],
                   nominal: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per target: Spearman, MAE, mean signed error, n, coverage and median width at ``nominal``; per target: the
    coverage at every calibration level) of held-out predictions ``P``."""
    targets = {}
    for j, t in enumerate(TARGETS):
        cov, _ = coverage(Y[:, j], bounds[nominal][0][:, j], bounds[nominal][1][:, j])
        width = bounds[nominal][1][:, j] - bounds[nominal][0][:, j]
        targets[t] = {
            "spearman": spearman(P[:, j], Y[:, j]),
            "mae": mae(P[:, j], Y[:, j]),
            "bias": mean_signed_error(P[:, j], Y[:, j]),
            "n": int(np.sum(np.isfinite(Y[:, j]) & np.isfinite(P[:, j]))),
            "coverage": cov,
            "interval": nominal,
            "median_width": float(np.nanmedian(width)) if np.isfinite(width).any() else None,
        }
    calibration = {
        t: [{"level": lv, "coverage": coverage(Y[:, j], lo[:, j], hi[:, j])[0]} for lv, (lo, hi) in sorted(bounds.items())]
        for j, t in enumerate(TARGETS)
    }
    return targets, calibration


def _recommender_scores(groups: list[dict[str, Any]], pred: Mapping[str, np.ndarray], Y: np.ndarray) -> list[dict[str, Any]]:
    """Per recommender: its Spearman and MAE per target, and its choice scores per objective."""
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
    return recommenders


def _prediction_rows(rows: Sequence[Mapping[str, Any]], folds: Sequence[tuple[str, list[int], list[int]]],
                     candidates: Sequence[tuple[str, Any]], n_flags: np.ndarray, Y: np.ndarray, P: np.ndarray,
                     bounds: tuple[np.ndarray, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON row per run: what was held out, the run, measured, predicted and the interval."""
    held_out_name = [""] * len(rows)
    for group, _, test_idx in folds:
        for i in test_idx:
            held_out_name[i] = group
    return [
        {
            "held_out": held_out_name[i],
            "dataset": row_dataset(r),
            "model": row_model(r),
            "method": row_method(r),
            "configuration": config_label(candidates[i]),
            "shots": row_shots(r),
            "seed": r.get("seed"),
            "out_of_support": int(n_flags[i]),
            **{f"measured_{t}": _none(Y[i, j]) for j, t in enumerate(TARGETS)},
            **{f"predicted_{t}": _none(P[i, j]) for j, t in enumerate(TARGETS)},
            **{f"lo_{t}": _none(bounds[0][i, j]) for j, t in enumerate(TARGETS)},
            **{f"hi_{t}": _none(bounds[1][i, j]) for j, t in enumerate(TARGETS)},
        }
        for i, r in enumerate(rows)
    ]


@dataclass
class HeldOut:
    """Held-out predictions of the predictor and of every baseline (``held_out_predictions``):
    per row of ``rows``, the measured targets ``Y``, each recommender's predictions ``pred``,
    the predictor's interval ``bounds`` per level and its out-of-support flags ``n_flags``;
    ``fold_of`` the fold whose test part holds the row (-1: not predicted), ``rules`` the
    constant rules of each fold, ``candidates`` the rows' (method, configuration); ``spread``
    the seed spread of ID gain over every row (``config_seed_noise``; a subset keeps it)."""

    rows: list[Mapping[str, Any]]
    folds: list[tuple[str, list[int], list[int]]]
    folds_out: list[dict[str, Any]]
    Y: np.ndarray
    pred: dict[str, np.ndarray]
    bounds: dict[float, tuple[np.ndarray, np.ndarray]]
    n_flags: np.ndarray
    fold_of: np.ndarray
    rules: list[ConfigRules | None]
    candidates: list[Candidate]
    varying: dict[str, tuple[str, ...]]
    spread: float | None = None

    def subset(self, keep: Sequence[int]) -> "HeldOut":
        """The same predictions for the rows ``keep`` only (indices into ``rows``, in order);
        the folds keep their training parts and rules, their test parts shrink to ``keep``."""
        keep = list(keep)
        pos = {i: j for j, i in enumerate(keep)}
        folds = [(g, tr, [pos[i] for i in te if i in pos]) for g, tr, te in self.folds]
        return replace(
            self, rows=[self.rows[i] for i in keep], folds=folds,
            folds_out=[dict(f, n_test=len(te)) for f, (_, _, te) in zip(self.folds_out, folds)],
            Y=self.Y[keep], pred={n: P[keep] for n, P in self.pred.items()},
            bounds={lv: (lo[keep], hi[keep]) for lv, (lo, hi) in self.bounds.items()},
            n_flags=self.n_flags[keep], fold_of=self.fold_of[keep], candidates=[self.candidates[i] for i in keep])


def held_out_predictions(
    rows: Sequence[Mapping[str, Any]],
    *,
    holdout: str = "dataset",
    estimator: Any = None,
    knn_k: int = 3,
    progress: Callable[[str], None] | None = None,
    defaults: Callable[[str, int | None], Mapping[str, Any]] | None = None,
    scored: Callable[[Mapping[str, Any]], bool] | None = None,
) -> HeldOut:
    """The predictor, its calibration, the constant rules and every baseline fitted on the
    training part of each ``holdout`` fold (all its rows), and asked about the fold's test
    part: every held-out row, or only those ``scored`` accepts (the others are not predicted:
    ``fold_of`` -1). See ``evaluate``."""
    rows = list(rows)
    folds = checked_folds(rows, holdout)
    if scored is not None:
        folds = [(g, tr, [i for i in te if scored(rows[i])]) for g, tr, te in folds]
    from sklearn.base import clone

    from .estimator import AdvisorPredictor

    base = estimator if estimator is not None else AdvisorPredictor()
    nominal = float(base.get_params().get("interval", 0.8))
    levels = sorted(set(CALIBRATION_LEVELS) | {nominal})
    n, k = len(rows), len(TARGETS)
    varying = varying_hparams(rows)
    held = HeldOut(rows, folds, [], targets_matrix(rows),
                   {name: np.full((n, k), np.nan) for name in RECOMMENDERS if name != "random"},
                   {lv: (np.full((n, k), np.nan), np.full((n, k), np.nan)) for lv in levels},
                   np.zeros(n, dtype=int), np.full(n, -1), [], [(row_method(r), config_of(r, varying)) for r in rows],
                   varying)
    held.spread = (config_seed_noise(rows, held.candidates).get("id_gain") or {}).get("sd")
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
        held.folds_out.append({"held_out": group, "n_train": len(train), "n_test": len(test)})
        held.rules.append(None)
        if len(train) < 2 or not test:
            continue
        held.fold_of[test_idx] = len(held.rules) - 1
        held.rules[-1] = ConfigRules([held.candidates[i] for i in train_idx], held.Y[train_idx], defaults)
        fitted = clone(base).fit_rows(train, group_by=conformal_by).model_
        for lv in levels:
            p = fitted.predict_rows(test, level=lv)
            held.bounds[lv][0][test_idx], held.bounds[lv][1][test_idx] = p["lo"], p["hi"]
        held.pred["predictor"][test_idx] = p["mean"]
        held.n_flags[test_idx] = [len(f) for f in p["flags"]]
        _baseline_predictions(train, test, test_idx, held.pred, knn_k)
    bar.close()
    return held


def evaluate(
    rows: Sequence[Mapping[str, Any]],
    *,
    holdout: str = "dataset",
    estimator: Any = None,
    knn_k: int = 3,
    progress: Callable[[str], None] | None = None,
    defaults: Callable[[str, int | None], Mapping[str, Any]] | None = None,
    scored: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Scores of the predictor and of every baseline with one ``holdout`` group left out at a
    time (see the module docstring). ``defaults(method, shots)`` gives a method's default
    hyper-parameters for the ``default-lr-of-best-method`` rule (default: the installed tuners'
    ``defaults``). ``scored(row)``: only the held-out rows it accepts are predicted and scored,
    while every fold still trains on all its training rows (``n_runs`` counts the scored rows,
    ``n_history`` all). Plain JSON (NaN -> None)."""
    held = held_out_predictions(rows, holdout=holdout, estimator=estimator, knn_k=knn_k, progress=progress,
                                defaults=defaults, scored=scored)
    if scored is not None:
        held = held.subset(np.flatnonzero(held.fold_of >= 0))
        if not held.rows:
            raise EvaluationError("no held-out run to score")
    return scores(held, holdout, estimator, n_history=len(rows))


def scores(held: HeldOut, holdout: str, estimator: Any = None, n_history: int | None = None) -> dict[str, Any]:
    """The evaluation document (``evaluate``) of the held-out predictions ``held``."""
    from .estimator import AdvisorPredictor

    base = estimator if estimator is not None else AdvisorPredictor()
    nominal = float(base.get_params().get("interval", 0.8))
    rows, Y, pred = held.rows, held.Y, held.pred
    targets, calibration = _target_scores(Y, pred["predictor"], held.bounds, nominal)
    groups = _groups(rows, Y, pred, held.spread)
    names = [f[0] for f in held.folds]
    return clean_json({
        "holdout": holdout,
        "estimator": {k: v for k, v in base.get_params().items()
                      if k in ("gain_target", "feature_set", "linear_tree", "cost_target")},
        "n_runs": len(rows),
        "n_history": n_history if n_history is not None else len(rows),
        "n_held_out": sum(1 for _, _, te in held.folds if te),
        "n_datasets": len({row_dataset(r) for r in rows}),
        "folds": held.folds_out,
        "targets": targets,
        "calibration": calibration,
        "seed_noise": seed_noise(rows),
        "baselines": _recommender_scores(groups, pred, Y),
        "n_groups": {o: sum(1 for g in groups if g["valid"][o]) for o in OBJECTIVES},
        "method_spread": held.spread,
        "config_choice": config_choice(rows, Y, pred, held.candidates, held.fold_of, held.rules, held.varying, names),
        "model_choice": model_choice(rows, Y, pred, held.candidates, held.fold_of),
        "predictions": _prediction_rows(rows, held.folds, held.candidates, held.n_flags, Y, pred["predictor"],
                                        held.bounds[nominal]),
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


def _groups(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: dict[str, np.ndarray],
            spread: float | None = None) -> list[dict[str, Any]]:
    """Per (model, dataset, shots): measured and predicted (gain, ood) per method, seeds averaged;
    ``resolved``: its best and second-best methods' measured ID gains differ by more than
    ``spread`` (the seed spread; None: no group is)."""
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
        top = sorted((v[0] for v in g["measured"].values() if math.isfinite(v[0])), reverse=True)
        g["resolved"] = spread is not None and len(top) >= 2 and top[0] - top[1] > spread
        out.append(g)
    return out


def _choice_scores(groups: list[dict[str, Any]], name: str, objective: str) -> dict[str, Any]:
    """Top-1 accuracy and mean regret of one recommender over the valid groups, and (``_resolved``
    keys) over those of them whose best method is known beyond the seed spread. A recommender
    without a prediction for any measured method of a group is scored on the groups it answers."""
    hits, regrets, resolved = [], [], []
    for g in groups:
        if not g["valid"][objective]:
            continue
        measured = {m: objective_value(*v, objective) for m, v in g["measured"].items()}
        measured = {m: v for m, v in measured.items() if math.isfinite(v)}
        best = max(measured.values())
        if name == "random":  # exact expectation over a uniform choice: no seed needed
            hits.append(sum(1 for v in measured.values() if v == best) / len(measured))
            regrets.append(float(np.mean([best - v for v in measured.values()])))
        else:
            scores = {m: objective_value(*g["pred"][name].get(m, (math.nan, math.nan)), objective) for m in measured}
            finite = {m: s for m, s in scores.items() if math.isfinite(s)}
            if not finite:
                continue
            choice = max(sorted(finite), key=lambda m: finite[m])  # ties: first by name
            hits.append(1.0 if measured[choice] == best else 0.0)
            regrets.append(best - measured[choice])
        if g.get("resolved"):
            resolved.append(len(hits) - 1)
    return {
        f"top1_{objective}": float(np.mean(hits)) if hits else None,
        f"regret_{objective}": float(np.mean(regrets)) if regrets else None,
        f"groups_{objective}": len(hits),
        f"top1_{objective}_resolved": float(np.mean([hits[i] for i in resolved])) if resolved else None,
        f"regret_{objective}_resolved": float(np.mean([regrets[i] for i in resolved])) if resolved else None,
        f"groups_{objective}_resolved": len(resolved),
    }


# ------------------------------------------------------------------------------------------
# Choosing a configuration and a model, judged as Quick-Tune is (top-1, raw and normalised regret)
# ------------------------------------------------------------------------------------------

#: A candidate of the configuration choice: (method, configuration key of ``config_of``).
Candidate = tuple[str, str]
#: Constant configuration rules, fitted on the training folds (``ConfigRules``); one
#: ``always-<method>`` rule per method of the training folds follows them.
CONFIG_RULES: tuple[str, ...] = ("best-single-config", "default-lr-of-best-method")
#: Predicted scores within this of the best tie; a tie is scored as a uniform draw among the
#: tied candidates (a recommender blind to a hyper-parameter predicts the same for its values).
TIE = 1e-12
_ABSENT = "\0absent"


def varying_hparams(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Per method, the names of the hyper-parameters (``row["hparams"]``) whose values differ
    among its runs in ``rows``; a name some of its runs lack counts as differing."""
    by_m: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_m.setdefault(row_method(r), []).append(as_dict(r.get("hparams")))
    out = {}
    for m, hps in by_m.items():
        names = set().union(*hps)
        out[m] = tuple(sorted(k for k in names if len({_text(hp[k]) if k in hp else _ABSENT for hp in hps}) > 1))
    return out


def config_of(row: Mapping[str, Any], varying: Mapping[str, Sequence[str]]) -> str:
    """The run's configuration: JSON of its values of the hyper-parameters that vary among its
    method's runs (``varying_hparams``), keys sorted; ``{}`` for a method run one way only."""
    hp = as_dict(row.get("hparams"))
    return json.dumps({k: hp.get(k) for k in varying.get(row_method(row), ())}, sort_keys=True, default=str)


def config_label(candidate: Candidate) -> str:
    """``lora lr=0.02`` for (``lora``, ``{"lr": 0.02}``); the method alone for ``{}``."""
    method, config = candidate
    values = json.loads(config)
    shown = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return f"{method} {shown}" if shown else method


def tuner_defaults(method: str, shots: int | None) -> Mapping[str, Any]:
    """The installed tuner's default hyper-parameters at ``shots`` ({} for a method whose
    plugin is not installed)."""
    from ..plugins import find_tuner

    tuner = find_tuner(method)
    return tuner.defaults(shots) if tuner is not None else {}


class ConfigRules:
    """The constant configuration rules, fitted on the training runs' candidates and measured
    targets ``Y`` (rows of ``targets_matrix``). Each ranks every training candidate, the same
    for every case (``default-lr-of-best-method`` per shots); in a group it chooses the
    first-ranked candidate that was run there:

    - ``best-single-config``: candidates by their mean measured objective over the training runs
      (per target means, then the objective);
    - ``default-lr-of-best-method``: methods by the mean measured objective of all their runs;
      within a method first its configurations at its tuner's default learning rate for the
      group's shots (``defaults(method, shots)["lr"]``; without one, the method's most common
      learning rate in training; a method whose learning rate never varies matches), then its
      other configurations, most run first;
    - ``always-<method>``: that method's configurations, most run in training first, then the
      other candidates as ``best-single-config`` ranks them.
    """

    def __init__(self, candidates: Sequence[Candidate], Y: np.ndarray,
                 defaults: Callable[[str, int | None], Mapping[str, Any]] | None = None) -> None:
        idx: dict[Candidate, list[int]] = {}
        by_m: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            idx.setdefault(c, []).append(i)
            by_m.setdefault(c[0], []).append(i)
        self.means_ = {c: _mean_pair(Y, ix) for c, ix in idx.items()}
        self.method_means_ = {m: _mean_pair(Y, ix) for m, ix in by_m.items()}
        self.counts_ = {c: len(ix) for c, ix in idx.items()}
        self.methods_ = sorted(by_m)
        self.defaults = defaults or tuner_defaults
        self._ranked: dict[tuple[str, str, int | None], list[Candidate]] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return (*CONFIG_RULES, *(f"always-{m}" for m in self.methods_))

    def default_lr(self, method: str, shots: int | None) -> float:
        """The tuner's default learning rate at ``shots``, else the most common one among the
        method's training runs (NaN when neither exists)."""
        lr = as_float((self.defaults(method, shots) or {}).get("lr"))
        if math.isfinite(lr):
            return lr
        counts: dict[float, int] = {}
        for (m, config), n in self.counts_.items():
            v = as_float(json.loads(config).get("lr")) if m == method else math.nan
            if math.isfinite(v):
                counts[v] = counts.get(v, 0) + n
        return max(sorted(counts), key=counts.__getitem__) if counts else math.nan

    def ranking(self, name: str, objective: str, shots: int | None = None) -> list[Candidate]:
        """Every training candidate, the rule's first choice first."""
        key = (name, objective, shots if name == "default-lr-of-best-method" else None)
        if key not in self._ranked:
            self._ranked[key] = self._rank(name, objective, shots)
        return self._ranked[key]

    def _rank(self, name: str, objective: str, shots: int | None) -> list[Candidate]:
        def worse(v: tuple[float, float]) -> float:
            s = objective_value(*v, objective)
            return -s if math.isfinite(s) else math.inf

        by_mean = sorted(self.means_, key=lambda c: (worse(self.means_[c]), c))
        if name == "best-single-config":
            return by_mean
        if name == "default-lr-of-best-method":
            out: list[Candidate] = []
            for m in sorted(self.method_means_, key=lambda m: (worse(self.method_means_[m]), m)):
                lr = self.default_lr(m, shots)
                out += sorted((c for c in self.means_ if c[0] == m),
                              key=lambda c: (not _lr_matches(c[1], lr), -self.counts_[c], c[1]))
            return out
        if name.startswith("always-") and name[len("always-"):] in self.method_means_:
            m = name[len("always-"):]
            mine = sorted((c for c in self.means_ if c[0] == m), key=lambda c: (-self.counts_[c], c[1]))
            return mine + [c for c in by_mean if c[0] != m]
        raise ValueError(f"unknown configuration rule {name!r}")

    def choose(self, name: str, present: Sequence[Candidate], objective: str, shots: int | None) -> Candidate | None:
        """The rule's choice among the candidates ``present`` in a group (None: it ranks none)."""
        if name not in self.names:
            return None
        there = set(present)
        return next((c for c in self.ranking(name, objective, shots) if c in there), None)


def config_choice(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: Mapping[str, np.ndarray],
                  candidates: Sequence[Candidate], fold_of: np.ndarray, rules: Sequence[ConfigRules | None],
                  varying: Mapping[str, Sequence[str]], fold_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Choosing a configuration per held-out (model, dataset, shots) group: the candidates are
    the (method, configuration) pairs measured there (seeds averaged); each recommender picks
    the candidate with the best predicted objective (its held-out predictions averaged over the
    candidate's runs), each constant rule as ``ConfigRules`` says, ``random`` uniformly (exact
    expectation). Per objective, over the groups with at least two candidates measured: top-1
    (the choice is the best measured candidate), raw regret (best measured - the choice's
    measured) and normalised regret (raw / (best - worst measured); groups where best == worst
    are left out of it); ``_hp`` keys: the same over the groups where some method was measured
    with several configurations (the hyper-parameter choice matters)."""
    groups = _candidate_groups(rows, Y, pred, candidates, fold_of,
                               lambda r: (row_model(r), row_dataset(r), row_shots(r)))
    rule_names = list(CONFIG_RULES) + sorted({n for r in rules if r is not None for n in r.names} - set(CONFIG_RULES))
    names = [*pred, *rule_names, "random"]
    scores: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    n_groups = {o: 0 for o in OBJECTIVES}
    n_hp = {o: 0 for o in OBJECTIVES}
    for g in groups:
        for o in OBJECTIVES:
            measured = _measured(g, o)
            if len(measured) < 2:
                continue
            methods = [m for m, _ in measured]
            hp = len(set(methods)) < len(methods)
            n_groups[o] += 1
            n_hp[o] += hp
            rule = rules[g["fold"]]
            for name in names:
                if name == "random":
                    chosen = list(measured)
                elif name in pred:
                    chosen = _argmax(g["pred"][name], measured, o)
                else:
                    c = rule.choose(name, list(measured), o, g["key"][-1]) if rule is not None else None
                    chosen = [c] if c is not None else []
                if not chosen:
                    continue
                s = _score(measured, chosen)
                scores.setdefault((name, o, ""), []).append(s)
                if hp:
                    scores.setdefault((name, o, "_hp"), []).append(s)
    return {
        "varying_hparams": {m: list(v) for m, v in sorted(varying.items())},
        "n_groups": n_groups,
        "n_groups_hp": n_hp,
        "recommenders": [{"name": n, **_summary(scores, n, ("", "_hp"))} for n in names],
        "rule_choices": [
            {"held_out": fold_names[i] if fold_names else i, **{o: {"best-single-config": config_label(r.ranking("best-single-config", o)[0]),
                               "best-method": r.ranking("default-lr-of-best-method", o)[0][0]} for o in OBJECTIVES}}
            for i, r in enumerate(rules) if r is not None and r.means_
        ],
    }


def config_seed_noise(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate]) -> dict[str, Any]:
    """``rows.seed_noise`` per configuration (method and the hyper-parameters that vary), not
    per method: runs of one method at two learning rates are not seeds of one configuration."""
    return seed_noise([{**r, "method": f"{c[0]} {c[1]}"} for r, c in zip(rows, candidates)])


def model_choice(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: Mapping[str, np.ndarray],
                 candidates: Sequence[Candidate], fold_of: np.ndarray) -> dict[str, Any]:
    """Choosing the model per held-out (dataset, shots) group where at least two models were
    measured: the candidates are (model, method, configuration); the recommended model is the
    model of the best predicted candidate; a model's measured value is its best measured
    candidate (seeds averaged). Per objective: top-1 (the recommended model is the best
    measured model) and regret (best model's value - the recommended model's value); ``random``
    picks a model uniformly (exact expectation). ``_resolved`` keys: the same over the groups
    whose best and second-best models' values differ by more than the seed spread: the pooled
    seed standard deviation of ID gain over configurations run with several seeds
    (``config_seed_noise``; the same groups for both objectives). NaN spread: not reported."""
    spread = (config_seed_noise(rows, candidates).get("id_gain") or {}).get("sd")
    keyed = [(row_model(r), c) for r, c in zip(rows, candidates)]
    groups = _candidate_groups(rows, Y, pred, keyed, fold_of, lambda r: (row_dataset(r), row_shots(r)))
    names = [*pred, "random"]
    scores: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    n_groups = {o: 0 for o in OBJECTIVES}
    n_resolved = 0
    for g in groups:
        best_gain = _model_best(_measured(g, "gain"))
        top = sorted(best_gain.values(), reverse=True)
        resolved = spread is not None and len(top) >= 2 and top[0] - top[1] > spread
        n_resolved += resolved
        for o in OBJECTIVES:
            measured = _measured(g, o)
            best_of = _model_best(measured)
            if len(best_of) < 2:
                continue
            n_groups[o] += 1
            for name in names:
                chosen = list(best_of) if name == "random" else [m for m, _ in _argmax(g["pred"][name], measured, o)]
                if not chosen:
                    continue
                s = _score(best_of, chosen)
                scores.setdefault((name, o, ""), []).append(s)
                if resolved:
                    scores.setdefault((name, o, "_resolved"), []).append(s)
    return {
        "spread": spread,
        "spread_of": "id_gain sd over configurations run with several seeds",
        "n_groups": n_groups,
        "n_resolved": n_resolved,
        "recommenders": [{"name": n, **_summary(scores, n, ("", "_resolved"), normalised=False)} for n in names],
    }


def has_curve_point(row: Mapping[str, Any], epochs: int) -> bool:
    """Whether the run's learning curve (``row["curve"]``, a list of dicts with ``epoch``, or its
    JSON) has a point at ``epochs``."""
    curve = row.get("curve")
    if isinstance(curve, str):
        try:
            curve = json.loads(curve)
        except ValueError:
            curve = None
    return isinstance(curve, list) and any(isinstance(p, Mapping) and as_float(p.get("epoch")) == epochs
                                           for p in curve)


def probe_rows(rows: Sequence[Mapping[str, Any]], epochs: int) -> list[Mapping[str, Any]]:
    """The runs whose learning curve has a point at ``epochs`` (``has_curve_point``): the rows a
    probe of that many epochs can be evaluated on."""
    return [r for r in rows if has_curve_point(r, epochs)]


def _text(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _lr_matches(config: str, lr: float) -> bool:
    values = json.loads(config)
    if "lr" not in values:
        return True
    v = as_float(values["lr"])
    return math.isfinite(v) and math.isfinite(lr) and math.isclose(v, lr, rel_tol=1e-6)


def _mean_pair(A: np.ndarray, idx: Sequence[int]) -> tuple[float, float]:
    """Mean (ID gain, OOD change) over ``idx`` (NaN skipped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(A[idx, 0])), float(np.nanmean(A[idx, 1]))


def _candidate_groups(rows: Sequence[Mapping[str, Any]], Y: np.ndarray, pred: Mapping[str, np.ndarray],
                      candidates: Sequence[Any], fold_of: np.ndarray,
                      key: Callable[[Mapping[str, Any]], tuple]) -> list[dict[str, Any]]:
    """Held-out rows (``fold_of >= 0``) grouped by ``key``, then by candidate: measured and
    predicted (gain, OOD change) per candidate, seeds averaged. ``fold``: the fold of the
    group's first row (a (model, dataset, shots) group lies in one fold in every hold-out)."""
    by: dict[tuple, dict[Any, list[int]]] = {}
    for i, r in enumerate(rows):
        if fold_of[i] >= 0:
            by.setdefault(key(r), {}).setdefault(candidates[i], []).append(i)
    return [{"key": k, "fold": int(fold_of[next(iter(cands.values()))[0]]),
             "measured": {c: _mean_pair(Y, ix) for c, ix in cands.items()},
             "pred": {n: {c: _mean_pair(P, ix) for c, ix in cands.items()} for n, P in pred.items()}}
            for k, cands in by.items()]


def _measured(g: Mapping[str, Any], objective: str) -> dict[Any, float]:
    out = {c: objective_value(*v, objective) for c, v in g["measured"].items()}
    return {c: v for c, v in out.items() if math.isfinite(v)}


def _argmax(predicted: Mapping[Any, tuple[float, float]], measured: Mapping[Any, float], objective: str) -> list:
    """The measured candidates with the best finite predicted objective (all of them on a tie)."""
    scores = {c: objective_value(*predicted[c], objective) for c in measured}
    finite = {c: s for c, s in scores.items() if math.isfinite(s)}
    if not finite:
        return []
    top = max(finite.values())
    return sorted(c for c, s in finite.items() if s >= top - TIE)


def _model_best(measured: Mapping[tuple[str, Candidate], float]) -> dict[str, float]:
    """Per model, its best measured candidate's value."""
    out: dict[str, float] = {}
    for (model, _), v in measured.items():
        out[model] = max(out.get(model, -math.inf), v)
    return out


def _score(measured: Mapping[Any, float], chosen: Sequence[Any]) -> tuple[float, float, float]:
    """(top-1, raw regret, normalised regret) of a uniform draw among ``chosen``; normalised
    regret NaN where the best and worst measured values are equal."""
    best, worst = max(measured.values()), min(measured.values())
    vals = [measured[c] for c in chosen]
    raw = float(np.mean([best - v for v in vals]))
    return (float(np.mean([v == best for v in vals])), raw, raw / (best - worst) if best > worst else math.nan)


def _summary(scores: Mapping[tuple[str, str, str], list[tuple[float, float, float]]], name: str,
             subsets: Sequence[str], normalised: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in OBJECTIVES:
        for sub in subsets:
            s = np.array(scores.get((name, o, sub), []), dtype=float).reshape(-1, 3)
            out[f"top1_{o}{sub}"] = float(s[:, 0].mean()) if len(s) else None
            out[f"regret_{o}{sub}"] = float(s[:, 1].mean()) if len(s) else None
            out[f"groups_{o}{sub}"] = len(s)
            if normalised:
                ok = np.isfinite(s[:, 2])
                out[f"nregret_{o}{sub}"] = float(s[ok, 2].mean()) if ok.any() else None
                out[f"groups_nregret_{o}{sub}"] = int(ok.sum())
    return out


def probe_comparison(rows: Sequence[Mapping[str, Any]], probe_epochs: Sequence[int], *, holdout: str = "dataset",
                     estimator: Any = None, defaults: Callable[[str, int | None], Mapping[str, Any]] | None = None
                     ) -> dict[str, Any]:
    """Per probe length K: the predictor without the probe (``probe_epochs=None``) and with it
    (``probe_epochs=K``), each as ``advisor recommend`` uses it: trained, in each fold, on every
    training run (with the probe, a run without a curve point at K has NaN probe features, as
    ``load_or_train_probe_predictor`` trains ``probe-K``), and both scored on the same held-out
    runs: those with a curve point at K (``probe_rows``; what a probe measures). The baselines
    and the constant rules are fitted on the same training folds and scored on the same rows.
    ``cheapest_method``: the method of the lowest mean cost target over ``rows`` (its
    ``always-`` rule is the cheapest constant rule). One-line error when the estimator has no
    ``probe_epochs`` parameter, or no run has a point at some K."""
    from sklearn.base import clone

    from .estimator import AdvisorPredictor

    rows = list(rows)
    base = estimator if estimator is not None else AdvisorPredictor()
    if "probe_epochs" not in base.get_params():
        raise EvaluationError("this predictor has no probe features yet")
    at = {k: {id(r) for r in probe_rows(rows, k)} for k in probe_epochs}
    for k, ids in at.items():
        if not ids:
            raise EvaluationError(f"no run in the history has a learning-curve point at epoch {k}")
    union = set().union(*at.values())
    # without the probe the predictor is the same for every K: fitted once, scored per K
    without = held_out_predictions(rows, holdout=holdout, estimator=clone(base).set_params(probe_epochs=None),
                                   defaults=defaults, scored=lambda r: id(r) in union)
    out = []
    for k in probe_epochs:
        est = clone(base).set_params(probe_epochs=k)
        held = held_out_predictions(rows, holdout=holdout, estimator=est, defaults=defaults,
                                    scored=lambda r, ids=at[k]: id(r) in ids)
        keep = np.flatnonzero(held.fold_of >= 0)
        if not len(keep):
            raise EvaluationError(f"no held-out run with a learning-curve point at epoch {k} could be scored")
        out.append({"probe_epochs": k, "n_runs": int(len(keep)), "n_history": len(rows),
                    "without": scores(without.subset(keep), holdout, base, len(rows)),
                    "with": scores(held.subset(keep), holdout, est, len(rows))})
    return {"holdout": holdout, "n_runs": len(rows), "cheapest_method": cheapest_method(rows), "probe": out}


def cheapest_method(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The method with the lowest mean cost target (``targets_matrix``) over ``rows``."""
    Y = targets_matrix(rows)
    j = TARGETS.index("cost")
    by: dict[str, list[float]] = {}
    for r, y in zip(rows, Y[:, j]):
        if math.isfinite(y):
            by.setdefault(row_method(r), []).append(float(y))
    return min(sorted(by), key=lambda m: float(np.mean(by[m]))) if by else None
