"""Optimal transport for the distribution gap, in numpy: exact OT onto a few atoms, sliced W2.

POT (``import ot``) takes 3-12 s to import (it imports torch and scikit-learn), which is longer
than every signal together on a cached pair; the two cases ``modality_gap`` needs without
captions are small enough to solve exactly here:

- ``exact_ot_to_atoms``: N image points of mass 1/N each against C text atoms with *integer*
  multiplicities (class texts weighted by their image counts). With integer capacities the
  transportation problem has an integral optimal plan (total unimodularity), i.e. it is a
  capacitated assignment, solved exactly by successive shortest paths: sources are added one at
  a time; a source whose cheapest sink (under the current sink prices ``v``) has room goes
  there; otherwise Dijkstra over the C sinks (an edge c -> c' moves one source from c to c') finds
  the cheapest chain of moves, and the prices become ``v + min(dist, dist_target)``, which keeps
  every source at a cheapest sink (the optimality condition). O(N C) per Dijkstra, C small.
  Tested equal to POT's network simplex (``ot.emd2``).
- ``sliced_w2``: the mean over random unit directions of the squared 1-D W2 distance, each 1-D
  distance exact from the two quantile functions (uniform points against weighted atoms).

Device: ``exact_ot_to_atoms`` is sequential (one source at a time, a Dijkstra per displaced
source) and stays in numpy on the CPU, also when the embeddings are on a GPU (callers copy the
small cost matrix to the host). ``sliced_w2`` is dense and runs where its inputs are (numpy, or
torch on their device); its directions are drawn with numpy's seeded generator on both paths.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Above this many atoms the Dijkstra over sinks gets slow (O(N C) per chain); callers use POT.
MAX_ATOMS = 16


def exact_ot_to_atoms(cost: np.ndarray, capacity: np.ndarray) -> float:
    """min over plans of ``sum_ij P_ij cost_ij`` for N sources of mass 1/N and C sinks of mass
    ``capacity / N`` (``capacity``: non-negative integers summing to N)."""
    cost = np.asarray(cost, dtype=np.float64)
    n, c = cost.shape
    cap = np.asarray(capacity, dtype=np.int64)
    if cap.shape != (c,) or cap.sum() != n or (cap < 0).any():
        raise ValueError("capacities must be C non-negative integers summing to the number of sources")
    v = np.zeros(c)  # sink prices
    assign = np.full(n, -1, dtype=np.int64)
    load = np.zeros(c, dtype=np.int64)
    for s in range(n):
        e = cost[s] - v
        best = int(np.argmin(e))
        if load[best] < cap[best]:
            assign[s], load[best] = best, load[best] + 1
            continue
        _augment(s, cost, v, assign, load, cap)
    return float(cost[np.arange(n), assign].sum() / n)


def _augment(s: int, cost: np.ndarray, v: np.ndarray, assign: np.ndarray, load: np.ndarray, cap: np.ndarray) -> None:
    """Dijkstra from new source ``s`` over the sinks, then move sources along the shortest chain."""
    c = len(v)
    done = np.flatnonzero(assign >= 0)
    a = assign[done]
    # Reduced cost of moving assigned source j (at sink a_j) to sink c': >= 0 by the invariant.
    red = (cost[done] - v) - (cost[done, a] - v[a])[:, None]
    # move[c, c']: cheapest source to move from c to c', and its reduced cost.
    order = np.argsort(a, kind="stable")
    counts = np.bincount(a, minlength=c)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    weight = np.full((c, c), np.inf)
    who = np.full((c, c), -1, dtype=np.int64)
    sorted_red = red[order]
    for k in np.flatnonzero(counts):
        block = sorted_red[starts[k]:starts[k] + counts[k]]
        arg = block.argmin(axis=0)
        weight[k] = block[arg, np.arange(c)]
        who[k] = done[order[starts[k] + arg]]
    e = cost[s] - v
    dist = e - e.min()
    prev = np.full(c, -1, dtype=np.int64)  # -1: reached directly from s
    final = np.zeros(c, dtype=bool)
    while True:
        open_ = np.where(final, np.inf, dist)
        k = int(np.argmin(open_))
        final[k] = True
        if load[k] < cap[k]:
            target = k
            break
        relax = dist[k] + weight[k]
        better = (relax < dist) & ~final
        dist[better] = relax[better]
        prev[better] = k
    d_t = dist[target]
    v += np.minimum(dist, d_t)
    # Walk back: each sink on the chain takes one source from its predecessor; s enters the first.
    k = target
    load[k] += 1
    while prev[k] >= 0:
        p = prev[k]
        j = who[p, k]
        assign[j] = k
        k = p
    assign[s] = k


def sliced_w2(x: Any, atoms: Any, counts: Any, n_projections: int, seed: int) -> float:
    """Mean over ``n_projections`` random unit directions (fixed ``seed``) of the squared 1-D W2
    distance between the N points ``x`` (mass 1/N each) and ``atoms`` (M,d) of integer
    multiplicities ``counts`` (summing to N). Integer multiplicities make the two quantile
    functions step at the same points i/N, so each 1-D distance is the mean squared difference
    of the sorted projections of ``x`` and of the atoms repeated ``counts`` times: exact."""
    from array_api_compat import array_namespace, device

    xp = array_namespace(x, atoms)
    dev = device(x)
    n, d = x.shape
    counts = xp.asarray(counts, dtype=xp.int64, device=dev)
    if int(xp.sum(counts)) != n:
        raise ValueError("atom multiplicities must sum to the number of points")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((d, n_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    dirs = xp.asarray(dirs, dtype=x.dtype, device=dev)
    px = xp.sort(x @ dirs, axis=0, stable=False)  # (N, K); the array API's default stable sort is slower
    pa = atoms @ dirs  # (M, K)
    order = xp.argsort(pa.T, axis=1, stable=True)  # (K, M)
    ends = xp.cumulative_sum(counts[order], axis=1)  # (K, M): cumulative multiplicity in sorted order
    total = 0.0
    ranks = xp.arange(n, dtype=ends.dtype, device=dev)
    for k in range(n_projections):
        which = order[k, xp.searchsorted(ends[k], ranks, side="right")]  # atom of the i-th quantile step
        total = total + xp.mean((px[:, k] - pa[which, k]) ** 2)  # float64 scalar: no device sync per direction
    return float(total) / n_projections
