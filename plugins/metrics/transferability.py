"""Transferability baselines on L2-normalised image features: H-score, LogME, GBC, TransRate, kNN.

These are the label-aware scores the IIMM paper compares against (its ``get_transfer_scores.py``
computes them on the same normalised image features) plus LogME and leave-one-out kNN accuracy,
common in the field. Each follows a reference implementation; where we restructured the
computation for speed the value is mathematically the same, and the tests check that.

- ``h_score`` (Bao et al. 2019), as ``H_Score`` in mit-ll/IIMM ``transferability_metrics.py``:
  ``tr(pinv(cov(f), rcond=1e-15) cov(g))`` with g the class-conditional mean of each sample and
  unbiased covariances. cov(g) is built from the C class means (O(C d^2), same value).
- ``logme`` (You et al., ICML 2021), the fixed-point evidence maximisation of the official
  thuml/LogME ``_fit_fixed_point`` (at most 11 iterations, stop when alpha/beta changes by
  <= 1e-3 relative, 1e-5 added to the denominators), vectorised over classes. One difference,
  ours: ``log|A|`` sums over all D eigenvalues of ``F^T F`` including zero ones (the paper's
  evidence); the official code drops zero singular values, which differs only for rank-
  deficient features (N < D). Eigenvalues below ``max * D * machine eps`` count as zero.
- ``gbc`` (Pándy et al. 2022), diagonal Gaussians, as ``GBC(..., 'diagonal')`` in the IIMM repo:
  per-class mean and (population) variance floored at 1e-4, ``-sum_{c1 != c2} exp(-BD(c1, c2))``.
- ``transrate`` (Huang et al. 2022), as ``Transrate`` in the IIMM repo: features centred once,
  coding rate ``R(Z) = 0.5 logdet(I + Z^T Z / (n eps))``, eps = 1e-4, score
  ``R(Z) - mean_k R(Z_k)``. Each determinant is taken on the smaller of Z^T Z and Z Z^T
  (Sylvester's identity, same value), which keeps many small classes cheap.
- ``knn_loo``: leave-one-out k-nearest-neighbour accuracy with cosine similarity, self excluded
  (other identical points are kept), k = 1 and k = 5 (majority vote; a tie goes to the tied class
  with the nearest neighbour). Ours. At most ``KNN_MAX_QUERIES`` queries (a fixed-seed sample)
  are scored against all N points by blocked matrix products: O(min(N, 5000) * N * d), so the
  cost grows linearly in N beyond 5000 queries, never quadratically.

Classes absent from the labels are ignored by all scores (LogME and TransRate in their official
code loop over ``range(max(y)+1)``; that differs only when a class index has no sample).
"""

from __future__ import annotations

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import l2_normalize, labels_of

KNN_MAX_QUERIES = 5000
KNN_BLOCK = 256
SEED = 0


def _features(emb: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    return l2_normalize(emb.image), labels_of(emb)


def _class_index(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Present classes, each sample's index among them, and their counts."""
    classes, inv = np.unique(y, return_inverse=True)
    return classes, inv, np.bincount(inv)


def _class_sums(f: np.ndarray, inv: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, d) per-class sums through a sparse one-hot product (much faster than ``np.add.at``)."""
    from scipy.sparse import csr_matrix

    onehot = csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(n_classes, len(inv)))
    return np.asarray(onehot @ np.asarray(f, dtype=np.float64))


# ---------------------------------------------------------------------------------- H-score


def h_score(f: np.ndarray, y: np.ndarray) -> float:
    n = len(f)
    _, inv, counts = _class_index(y)
    mu = f.mean(axis=0)
    fc = f - mu
    cov_f = fc.T @ fc / (n - 1)
    means = _class_sums(f, inv, len(counts)) / counts[:, None]
    mc = (means - mu) * np.sqrt(counts)[:, None]
    # tr(pinv(cov_f) cov_g) with pinv from one eigendecomposition (numpy's cut: |w| > 1e-15 max|w|)
    # and cov_g = mc^T mc / (n-1): sum_i (1/w_i) ||(V^T mc^T)_i||^2 / (n-1).
    w, v = np.linalg.eigh((cov_f + cov_f.T) / 2)
    keep = np.abs(w) > 1e-15 * np.abs(w).max()
    proj = v[:, keep].T @ mc.T
    return float(((proj ** 2).sum(axis=1) / w[keep]).sum() / (n - 1))


# ---------------------------------------------------------------------------------- LogME


def logme(f: np.ndarray, y: np.ndarray, max_iter: int = 11, tol: float = 1e-3, eps: float = 1e-5) -> float:
    """Mean over classes of the per-sample log maximum evidence of a Bayesian linear model
    predicting the class indicator from the features."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    _, inv, counts = _class_index(y)
    c = len(counts)
    if n > d:
        sig, v = np.linalg.eigh(f.T @ f)
        keep = sig > max(sig.max(), 0.0) * d * np.finfo(np.float64).eps
        sig, v = sig[keep], v[:, keep]
        # x = u^T y with u = F V / sqrt(sigma); F^T y_c is the class sum.
        x = (v.T @ _class_sums(f, inv, c).T) / np.sqrt(sig)[:, None]
    else:
        sig, u = np.linalg.eigh(f @ f.T)
        keep = sig > max(sig.max(), 0.0) * n * np.finfo(np.float64).eps
        sig, u = sig[keep], u[:, keep]
        onehot = np.zeros((n, c))
        onehot[np.arange(n), inv] = 1.0
        x = u.T @ onehot
    k = len(sig)
    sigma = sig[:, None]  # (k, 1)
    x2 = x ** 2  # (k, C)
    res_x2 = np.maximum(counts - x2.sum(axis=0), 0.0)  # ||y||^2 - ||x||^2, y is 0/1

    alpha = np.ones(c)
    beta = np.ones(c)
    m2 = np.zeros(c)
    res2 = np.zeros(c)
    active = np.ones(c, dtype=bool)
    for _ in range(max_iter):
        a = np.flatnonzero(active)
        t = alpha[a] / beta[a]
        gamma = (sigma / (sigma + t)).sum(axis=0)
        m2[a] = (sigma * x2[:, a] / (t + sigma) ** 2).sum(axis=0)
        res2[a] = (x2[:, a] / (1 + sigma / t) ** 2).sum(axis=0) + res_x2[a]
        alpha[a] = gamma / (m2[a] + eps)
        beta[a] = (n - gamma) / (res2[a] + eps)
        t_new = alpha[a] / beta[a]
        active[a[np.abs(t_new - t) / t <= tol]] = False
        if not active.any():
            break
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.log(alpha[None, :] + beta[None, :] * sigma).sum(axis=0)
        - 0.5 * (d - k) * np.log(alpha)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    ) / n
    return float(evidence.mean())


# ---------------------------------------------------------------------------------- GBC


def gbc(f: np.ndarray, y: np.ndarray, block: int = 16) -> float:
    _, inv, counts = _class_index(y)
    c = len(counts)
    mu = _class_sums(f, inv, c) / counts[:, None]
    sq = _class_sums(f * f, inv, c) / counts[:, None]
    var = np.maximum(sq - mu ** 2, 1e-4)  # population variance, floored as the reference
    logvar_sum = np.log(var).sum(axis=1)
    total = 0.0
    # BD is symmetric: each unordered pair once (classes after the block's first), counted twice.
    for start in range(0, c, block):
        stop = min(start + block, c)
        idx = np.arange(start, stop)
        other = slice(start, c)
        avg = (var[idx, None, :] + var[None, other, :]) / 2  # (b, C - start, d)
        first = (((mu[idx, None, :] - mu[None, other, :]) ** 2) / avg).sum(axis=2) / 8
        second = np.log(avg).sum(axis=2) - 0.5 * logvar_sum[idx, None] - 0.5 * logvar_sum[None, other]
        bc = np.exp(-(first + 0.5 * second))
        total += np.triu(bc, k=1).sum()  # column j is class start + j: keep c2 > c1 only
    return float(-2.0 * total)


# ---------------------------------------------------------------------------------- TransRate


def coding_rate(z: np.ndarray, eps: float = 1e-4) -> float:
    n, d = z.shape
    if n == 0:
        return 0.0
    gram = z.T @ z if d <= n else z @ z.T  # det(I_d + a Z^T Z) = det(I_n + a Z Z^T)
    _, logdet = np.linalg.slogdet(np.eye(gram.shape[0]) + gram / (n * eps))
    return 0.5 * float(logdet)


def transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    z = f - f.mean(axis=0, keepdims=True)
    classes = np.unique(y)
    rzy = sum(coding_rate(z[y == k], eps) for k in classes)
    return coding_rate(z, eps) - rzy / len(classes)


# ---------------------------------------------------------------------------------- kNN


def knn_loo(f: np.ndarray, y: np.ndarray, ks: tuple[int, ...] = (1, 5),
            max_queries: int = KNN_MAX_QUERIES, seed: int = SEED) -> dict[int, float]:
    n = len(f)
    kmax = min(max(ks), n - 1)
    if kmax < 1:
        raise ValueError("leave-one-out kNN needs at least 2 images")
    queries = np.arange(n) if n <= max_queries else np.sort(
        np.random.default_rng(seed).choice(n, size=max_queries, replace=False))
    base = f.astype(np.float32)
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), KNN_BLOCK):
        q = queries[start:start + KNN_BLOCK]
        sims = base[q] @ base.T  # (b, N)
        sims[np.arange(len(q)), q] = -np.inf  # leave the query itself out
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]  # kmax <= n-1: self (-inf) never chosen
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        neigh = y[np.take_along_axis(top, order, axis=1)]  # (b, kmax) labels, nearest first
        for k in ks:
            kk = min(k, kmax)
            lab = neigh[:, :kk]
            votes = (lab[:, :, None] == lab[:, None, :]).sum(axis=2)  # votes for each neighbour's class
            winner = lab[np.arange(len(q)), np.argmax(votes == votes.max(axis=1, keepdims=True), axis=1)]
            hits[k] += int((winner == y[q]).sum())
    return {k: hits[k] / len(queries) for k in ks}


# ---------------------------------------------------------------------------------- metrics


def _h_score(emb: Embeddings) -> float:
    return h_score(*_features(emb))


def _logme(emb: Embeddings) -> float:
    return logme(*_features(emb))


def _gbc(emb: Embeddings) -> float:
    return gbc(*_features(emb))


def _transrate(emb: Embeddings) -> float:
    return transrate(*_features(emb))


def _knn(emb: Embeddings) -> dict[str, float]:
    acc = knn_loo(*_features(emb))
    return {"knn1_acc": acc[1], "knn5_acc": acc[5]}


NEEDS = frozenset({"image", "labels"})


@hookimpl
def register_metrics(register):
    register(Metric(name="h_score", compute=_h_score, needs=NEEDS, version="1",
                    description="H-score (Bao et al. 2019) on normalised image features, as the IIMM repo",
                    higher_is="more transferable features"))
    register(Metric(name="logme", compute=_logme, needs=NEEDS, version="1",
                    description="LogME (You et al. 2021): log maximum evidence, official fixed-point iteration",
                    higher_is="more transferable features"))
    register(Metric(name="gbc", compute=_gbc, needs=NEEDS, version="1",
                    description="GBC (Pándy et al. 2022), diagonal Gaussians, variance floor 1e-4, as the IIMM repo",
                    higher_is="classes better separated (closer to 0)"))
    register(Metric(name="transrate", compute=_transrate, needs=NEEDS, version="1",
                    description="TransRate (Huang et al. 2022): coding-rate gain, eps 1e-4, centred, as the IIMM repo",
                    higher_is="more transferable features"))
    register(Metric(name="knn_loo", compute=_knn, needs=NEEDS, version="1",
                    description="Leave-one-out kNN accuracy (cosine, k=1 and k=5; <= 5000 fixed-seed queries)",
                    higher_is="classes already separable by neighbours"))
