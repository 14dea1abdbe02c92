"""The seed papers' claims, tested on a history: each as a rank correlation or an R² with a
bootstrap confidence interval over (model, dataset) pairs, so a reader can tell a claim the
history supports from one it cannot tell apart from noise.

- IIMM predicts in-domain gain (the IIMM paper): Spearman of ``iimm`` with the ID gain;
- IIMM predicts forgetting (the IIMM paper): Spearman of ``iimm`` with the OOD drop
  (``-ood_change``), for the methods that update the towers (families ``full`` and ``low-rank``);
- the distribution gap beats the raw gap (TPC-CMA): R² of a linear fit of the zero-shot accuracy
  (cross-modal quality) on ``gap_dist_fd`` against the same on ``gap_raw``, one point per pair,
  and the difference of the two R².

Runs are those at ``SHOTS`` shots, seed 0, at each method's most common learning rate (so a
learning-rate axis does not stand in for the pair). Resampling draws pairs with replacement
(``N_BOOT`` times, fixed seed), keeping every run of a drawn pair.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .evaluation import spearman
from .rows import as_dict, row_dataset, row_method, row_model, row_shots, row_signals, row_targets, row_zero_shot

SHOTS = 16
N_BOOT = 1000
LEVEL = 0.95
SEED = 0
TOWER_FAMILIES = ("full", "low-rank")


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:
        return math.nan
    r = np.corrcoef(x[ok], y[ok])[0, 1]
    return float(r * r)


def _bootstrap(groups: list[np.ndarray], stat: Callable[[np.ndarray], float]) -> tuple[float, float, float]:
    """(statistic on all rows, CI low, CI high): resampling whole groups (pairs)."""
    everything = np.concatenate(groups) if groups else np.zeros(0, dtype=int)
    value = stat(everything)
    rng = np.random.default_rng(SEED)
    draws = []
    for _ in range(N_BOOT):
        pick = rng.integers(0, len(groups), len(groups))
        v = stat(np.concatenate([groups[i] for i in pick]))
        if math.isfinite(v):
            draws.append(v)
    if not draws:
        return value, math.nan, math.nan
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return value, float(lo), float(hi)


def _main_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    lrs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        lrs[row_method(r)][as_dict(r.get("hparams")).get("lr")] += 1
    common = {m: c.most_common(1)[0][0] for m, c in lrs.items()}
    return [r for r in rows if row_shots(r) == SHOTS and r.get("seed") == 0
            and as_dict(r.get("hparams")).get("lr") == common[row_method(r)]]


def claims(rows: Sequence[Mapping[str, Any]], families: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each claim: ``claim``, ``statistic`` (spearman / r2 / r2 difference), ``value``, ``lo``,
    ``hi``, ``n_runs`` and ``n_pairs`` (NaN where the history lacks the signals)."""
    main = _main_rows(rows)
    sig = [row_signals(r) for r in main]
    tg = [row_targets(r) for r in main]
    iimm = np.array([s.get("iimm", math.nan) for s in sig])
    gain = np.array([t["id_gain"] for t in tg])
    drop = np.array([-t["ood_change"] for t in tg])
    tower = np.array([families.get(row_method(r)) in TOWER_FAMILIES for r in main])
    pairs: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for i, r in enumerate(main):
        pairs[(row_model(r), row_dataset(r))].append(i)
    groups = [np.array(v) for v in pairs.values()]
    tower_groups = [g[tower[g]] for g in groups if tower[g].any()]

    out = []

    def add(claim: str, statistic: str, gs: list[np.ndarray], stat: Callable[[np.ndarray], float]) -> None:
        value, lo, hi = _bootstrap(gs, stat)
        n = int(sum(len(g) for g in gs))
        out.append({"claim": claim, "statistic": statistic, "value": value, "lo": lo, "hi": hi,
                    "n_runs": n, "n_pairs": len(gs)})

    add("IIMM predicts in-domain gain (all methods)", "spearman", groups, lambda i: spearman(iimm[i], gain[i]))
    add("IIMM predicts in-domain gain (full, LoRA)", "spearman", tower_groups, lambda i: spearman(iimm[i], gain[i]))
    add("IIMM predicts forgetting (full, LoRA)", "spearman", tower_groups, lambda i: spearman(iimm[i], drop[i]))

    # One point per pair for the gap claim: the pair's signals and zero-shot accuracy.
    first = [g[0] for g in groups]
    zs = np.array([row_zero_shot(main[i]) for i in first])
    raw = np.array([sig[i].get("gap_raw", math.nan) for i in first])
    dist = np.array([sig[i].get("gap_dist_fd", math.nan) for i in first])
    single = [np.array([k]) for k in range(len(first))]
    add("raw gap predicts zero-shot accuracy", "r2", single, lambda i: _r2(raw[i], zs[i]))
    add("distribution gap predicts zero-shot accuracy", "r2", single, lambda i: _r2(dist[i], zs[i]))
    add("distribution gap beats the raw gap", "r2 difference", single,
        lambda i: _r2(dist[i], zs[i]) - _r2(raw[i], zs[i]))
    return out


def claims_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one line per claim, with its 95 % bootstrap interval and whether it holds
    (interval above zero)."""
    lines = ["| claim | statistic | value | 95 % CI | runs | pairs | supported |", "|---|---|---|---|---|---|---|"]
    for c in results:
        v, lo, hi = c["value"], c["lo"], c["hi"]
        fmt = lambda x: "n/a" if x is None or not math.isfinite(x) else f"{x:+.3f}"  # noqa: E731
        held = "n/a" if not math.isfinite(lo) else ("yes" if lo > 0 else "no")
        lines.append(f"| {c['claim']} | {c['statistic']} | {fmt(v)} | [{fmt(lo)}, {fmt(hi)}] | {c['n_runs']} "
                     f"| {c['n_pairs']} | {held} |")
    return "\n".join(lines)
