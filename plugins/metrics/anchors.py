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
  unpenalised), minimised with L-BFGS. Averaged over ``DRAWS`` seeded draws;
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
PROBE_MAX_ITER = 200
KNN_MAX = 5
SEED = 20261207


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, c: float = PROBE_C,
              max_iter: int = PROBE_MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, scikit-learn's objective: ``c * sum CE + 0.5 ||W||^2``
    (no penalty on the intercept), by L-BFGS. Returns (W (C, d), b (C,))."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: n_classes * d].reshape(n_classes, d)
        b = theta[n_classes * d:]
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        loss = -c * float((onehot * logp).sum()) + 0.5 * float((w * w).sum())
        r = c * (p - onehot)
        gw = r.T @ x + w
        gb = r.sum(axis=0)
        return loss, np.concatenate([gw.ravel(), gb])

    theta0 = np.zeros(n_classes * (d + 1))
    res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-6})
    theta = res.x
    return theta[: n_classes * d].reshape(n_classes, d), theta[n_classes * d:]


def _knn(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    sims = test @ train.T
    k = min(k, train.shape[0])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((test.shape[0], n_classes))
    rank_bonus = np.zeros((test.shape[0], n_classes))
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


def anchors(emb: Embeddings) -> dict[str, float]:
    x = _unit(to_numpy(emb.image))
    t = _unit(to_numpy(emb.text))
    y = np.asarray(to_numpy(emb.labels)).astype(np.int64)
    n_classes = int(t.shape[0])
    zs_pred = np.argmax(x @ t.T, axis=1)
    out: dict[str, float] = {}
    for k in SHOTS:
        probe, proto, knn, zs, capped = [], [], [], [], 0.0
        for d in range(DRAWS):
            tr, te, capped = draw(y, k, d)
            if len(tr) == 0 or len(te) == 0 or len(np.unique(y[tr])) < 2:
                break
            w, b = fit_probe(x[tr], y[tr], n_classes)
            probe.append(float(np.mean(np.argmax(x[te] @ w.T + b, axis=1) == y[te])))
            means = np.zeros((n_classes, x.shape[1]))
            np.add.at(means, y[tr], x[tr])
            present = np.bincount(y[tr], minlength=n_classes) > 0
            protos = _unit(means)
            scores = x[te] @ protos.T
            scores[:, ~present] = -np.inf
            proto.append(float(np.mean(np.argmax(scores, axis=1) == y[te])))
            knn.append(float(np.mean(_knn(x[tr], y[tr], x[te], min(k, KNN_MAX), n_classes) == y[te])))
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
        version="1",
        # Accepts torch tensors (on any device) too: the small probe problems are solved on the
        # host in float64 either way, so both paths give the same values.
        array_api=True,
        description="Few-shot linear probe, prototype, kNN and zero-shot accuracy of the frozen features at 1, 4, 16 and 64 shots",
        higher_is="more accuracy within reach of the frozen features",
    ))
