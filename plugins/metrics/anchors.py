"""Anchors: how far this model's frozen features take this dataset at k shots per class.

A fine-tuned model's accuracy lies close to what its frozen image features already separate
(the shipped history: at 16 shots, accuracy after TPC-CMA, LoRA and full fine-tuning is within a
few points of the frozen features' kNN accuracy), and that is what carries over to image sets
unlike the history. So, from the embedded sample the other signals use (no extra forward pass),
for every k in ``SHOTS``:

- ``anchor_probe.kK``: a few-shot linear probe. Multinomial logistic regression on the L2-normalised
  image features of k images per class, drawn from the sample, scored on the rest of the
  sample (at most ``MAX_TEST`` images, a fixed draw). The objective is scikit-learn's
  ``LogisticRegression(C=PROBE_C)``: ``C * sum(cross-entropy) + 0.5 * ||W||^2`` (intercept
  unpenalised), minimised with L-BFGS to scikit-learn's stopping rule (``fit_probe``). Averaged over ``DRAWS`` seeded draws;
  ``anchor_probe_sd.kK`` is the standard deviation over the draws.
- ``anchor_proto.kK``: nearest class prototype (the mean of the k unit features, cosine).
- ``anchor_knn.kK``: cosine kNN over the k images per class, ``min(k, 5)`` neighbours, majority
  vote (a tie goes to the tied class with the nearest neighbour).
- ``anchor_zs.kK``: zero-shot accuracy on the same test images (the anchor's own baseline).
- ``anchor_capped.kK``: the share of classes with fewer than k + 1 images in the sample. Such a
  class contributes all but one of its images to training (at least one is left to test);
  a class with a single image is left out of that draw.

Draws use numpy's generator seeded with (``SEED``, k, draw), independent of the run's seed.
The predictor reads the anchors at the shot count a run or a question asks for
(``advisor.predictor.anchors.anchor_at``: log-linear interpolation between the grid's neighbours).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import to_numpy

SHOTS = (1, 4, 16, 64)  # the history's shot counts; others are interpolated by the predictor
DRAWS = 3
MAX_TEST = 1000
PROBE_C = 1.0  # scikit-learn's default
PROBE_MAX_ITER = 100  # scikit-learn's default
PROBE_TOL = 1e-4  # scikit-learn's default
KNN_MAX = 5
SEED = 20261207


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, c: float = PROBE_C,
              max_iter: int = PROBE_MAX_ITER, tol: float = PROBE_TOL,
              start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with scikit-learn's objective and stopping rule:
    ``mean CE + ||W||^2 / (2 c n)`` (no penalty on the intercept), L-BFGS until the projected
    gradient is below ``tol`` or ``max_iter`` iterations. Returns (W (C, d), b (C,)).

    Why it is fast: the features are centred on the training mean first. With an unpenalised
    intercept that is the same problem (``W x + b = W (x - m) + (b + W m)``), but CLIP-style
    features share a large common direction and centring removes it, so L-BFGS needs fewer
    steps. ``start`` (a previous draw's solution) only changes where the search begins."""
    n, d = x.shape
    m = x.mean(axis=0)
    xc = x - m
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    penalty = 1.0 / (c * n)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: n_classes * d].reshape(n_classes, d)
        b = theta[n_classes * d:]
        z = xc @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        r = (np.exp(logp) - onehot) / n
        loss = -float((onehot * logp).sum()) / n + 0.5 * penalty * float((w * w).sum())
        return loss, np.concatenate([(r.T @ xc + penalty * w).ravel(), r.sum(axis=0)])

    if start is None:
        theta0 = np.zeros(n_classes * (d + 1))
    else:  # a solution in uncentred form -> this problem's centred intercept
        theta0 = np.concatenate([start[0].ravel(), start[1] + start[0] @ m])
    theta = lbfgs(loss_grad, theta0, tol=tol, max_iter=max_iter)
    w = theta[: n_classes * d].reshape(n_classes, d)
    return w, theta[n_classes * d:] - w @ m


def lbfgs(loss_grad: Any, x: np.ndarray, tol: float, max_iter: int, memory: int = 10) -> np.ndarray:
    """Unconstrained L-BFGS (two-loop recursion, Armijo backtracking) until ``max |gradient| <=
    tol`` (scipy's ``gtol`` test) or ``max_iter`` iterations.

    Why not scipy's L-BFGS-B: on these small problems (a few thousand parameters, a gradient in
    well under a millisecond) its bound-handling bookkeeping cost several times the objective
    itself; the plain method reaches the same optimum for a fraction of the time."""
    f, g = loss_grad(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if float(np.max(np.abs(g))) <= tol:
            break
        q = g.copy()
        alphas = []
        for s, yv, rho in reversed(pairs):
            a = rho * float(s @ q)
            q -= a * yv
            alphas.append(a)
        if pairs:
            s, yv, _ = pairs[-1]
            q *= float(s @ yv) / float(yv @ yv)
        else:
            q /= max(float(np.linalg.norm(g)), 1e-12)
        for (s, yv, rho), a in zip(pairs, reversed(alphas)):
            q += s * (a - rho * float(yv @ q))
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            pairs.clear()
            direction = -g / max(float(np.linalg.norm(g)), 1e-12)
            slope = float(g @ direction)
        step = 1.0
        while True:
            x_new = x + step * direction
            f_new, g_new = loss_grad(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, yv = x_new - x, g_new - g
        sy = float(s @ yv)
        if sy > 1e-12:
            pairs.append((s, yv, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        x, f, g = x_new, f_new, g_new
    return x


def _knn(sims: np.ndarray, y_train: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Predicted classes of the test rows of ``sims`` (test x train cosine similarities)."""
    k = min(k, sims.shape[1])
    if k < sims.shape[1]:  # only the k nearest are ordered (ties resolved as a full stable sort would)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        key = np.lexsort((top, -np.take_along_axis(sims, top, axis=1)), axis=1)
        order = np.take_along_axis(top, key, axis=1)
    else:
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((sims.shape[0], n_classes))
    rank_bonus = np.zeros((sims.shape[0], n_classes))
    for j in range(k):
        lab = y_train[order[:, j]]
        votes[np.arange(len(lab)), lab] += 1.0
        # the nearest neighbour of each class breaks ties: a smaller rank scores higher
        first = rank_bonus[np.arange(len(lab)), lab] == 0
        rank_bonus[np.arange(len(lab))[first], lab[first]] = (k - j) / (k + 1.0)
    return np.argmax(votes + rank_bonus * 0.5, axis=1)


def draw(y: np.ndarray, k: int, d: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(train indices, test indices, share of capped classes) of draw ``d`` at ``k`` shots."""
    rng = np.random.default_rng([SEED, k, d])
    train, capped, classes = [], 0, np.unique(y)
    for c in classes:
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            capped += 1
            continue
        take = min(k, len(idx) - 1)
        capped += take < k
        train.append(rng.permutation(idx)[:take])
    tr = np.sort(np.concatenate(train)) if train else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(y)), tr)
    if len(rest) > MAX_TEST:
        rest = np.sort(rng.permutation(rest)[:MAX_TEST])
    return tr, rest, capped / max(len(classes), 1)


def _scores(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, k: int, n_classes: int,
            start: tuple[np.ndarray, np.ndarray] | None) -> tuple[tuple[float, float, float], tuple[np.ndarray, np.ndarray]]:
    """(probe, prototype, kNN) accuracy of one draw, and the probe's solution (the next draw's start)."""
    w, b = fit_probe(x_tr, y_tr, n_classes, start=start)
    probe = float(np.mean(np.argmax(x_te @ w.T + b, axis=1) == y_te))
    members = np.zeros((n_classes, len(y_tr)))
    members[y_tr, np.arange(len(y_tr))] = 1.0
    scores = x_te @ _unit(members @ x_tr).T
    scores[:, members.sum(axis=1) == 0] = -np.inf
    proto = float(np.mean(np.argmax(scores, axis=1) == y_te))
    knn = float(np.mean(_knn(x_te @ x_tr.T, y_tr, min(k, KNN_MAX), n_classes) == y_te))
    return (probe, proto, knn), (w, b)


def anchors(emb: Embeddings) -> dict[str, float]:
    x = _unit(to_numpy(emb.image))
    t = _unit(to_numpy(emb.text))
    y = np.asarray(to_numpy(emb.labels)).astype(np.int64)
    n_classes = int(t.shape[0])
    zs_pred = np.argmax(x @ t.T, axis=1)
    out: dict[str, float] = {}
    for k in SHOTS:
        probe, proto, knn, zs, capped = [], [], [], [], 0.0
        solution = None
        for d in range(DRAWS):
            tr, te, capped = draw(y, k, d)
            if len(tr) == 0 or len(te) == 0 or len(np.unique(y[tr])) < 2:
                break
            scores_d, solution = _scores(x[tr], y[tr], x[te], y[te], k, n_classes, solution)
            for store, value in zip((probe, proto, knn), scores_d):
                store.append(value)
            zs.append(float(np.mean(zs_pred[te] == y[te])))
        if not probe:
            continue
        out[f"anchor_probe.k{k}"] = float(np.mean(probe))
        out[f"anchor_probe_sd.k{k}"] = float(np.std(probe))
        out[f"anchor_proto.k{k}"] = float(np.mean(proto))
        out[f"anchor_knn.k{k}"] = float(np.mean(knn))
        out[f"anchor_zs.k{k}"] = float(np.mean(zs))
        out[f"anchor_capped.k{k}"] = float(capped)
    return out


@hookimpl
def register_metrics(register: Any) -> None:
    register(Metric(
        name="anchor",
        compute=anchors,
        needs=frozenset({"image", "text", "labels"}),
        version="2",  # 2: scikit-learn's stopping rule, centred features, warm-started draws
        # Accepts torch tensors (on any device) too: the small probe problems are solved on the
        # host in float64 either way, so both paths give the same values.
        array_api=True,
        description="Few-shot linear probe, prototype, kNN and zero-shot accuracy of the frozen features at 1, 4, 16 and 64 shots",
        higher_is="more accuracy within reach of the frozen features",
    ))
