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
- ``gbc`` (Pándy et al. 2022) as its official code computes it (google-research
  ``stable_transfer/transferability``: ``gbc.py`` with the experiment config's
  ``gbc.gaussian_type = 'spherical'`` and ``gbc.pca_reduction = 64``): the features are first
  reduced by PCA to 64 components (``sklearn.decomposition.PCA(64, svd_solver='full')``: centred,
  projected on the top principal directions; we take them from the shared covariance's ``eigh``,
  the same subspace); per class, the mean and the population variance per component floored at
  1e-4, averaged over components (spherical Gaussians); ``BD = sum((mu1-mu2)^2) / (8 s) +
  0.5 (log s - 0.5 log s1 - 0.5 log s2)`` with ``s = (s1+s2)/2`` (the official code sums the
  log-variance of a scalar, so the log term is not multiplied by the dimension), and
  ``GBC = -sum_{c1 != c2} exp(-BD)``. Without the reduction (version 1, diagonal Gaussians in all
  384-512 dimensions as the IIMM repo) BD is in the hundreds and GBC underflows to about 0 for
  almost every task. ``gbc_log10`` is ``log10(-GBC)`` computed in log space (log-sum-exp of
  ``-BD``), finite even where GBC itself underflows. Fewer than 64 samples or dimensions: as
  many components as there are.
- ``transrate`` (Huang et al. 2022), as ``Transrate`` in the IIMM repo: features centred once,
  coding rate ``R(Z) = 0.5 logdet(I + Z^T Z / (n eps))``, eps = 1e-4, score
  ``R(Z) - mean_k R(Z_k)``. Each determinant is taken on the smaller of Z^T Z and Z Z^T
  (Sylvester's identity, same value), which keeps many small classes cheap.
- ``knn_loo``: leave-one-out k-nearest-neighbour accuracy with cosine similarity, self excluded
  (other identical points are kept), k = 1 and k = 5 (majority vote; a tie goes to the tied class
  with the nearest neighbour). Ours. At most ``KNN_MAX_QUERIES`` queries (a fixed-seed sample;
  the accuracy is a mean over queries, so a sample estimates it, with a standard error of at
  most 0.016 at 1000 queries) are scored against all N points by blocked matrix products:
  O(min(N, 1000) * N * d), linear in N beyond 1000 queries, never quadratic.

Shared work (``_linalg.shared``): the unit image vectors, their covariance and its one
eigendecomposition serve H-score, GBC's PCA and TransRate's total coding rate (and the
distribution gap); LogME's ``F^T F`` is ``(n-1) cov + n mu mu^T`` of the same statistics.

Classes absent from the labels are ignored by all scores (LogME and TransRate in their official
code loop over ``range(max(y)+1)``; that differs only when a class index has no sample).

numpy arrays are computed in numpy, torch tensors in torch on their device (``_linalg``): every
covariance, eigendecomposition, log-determinant and kNN similarity block. kNN draws its query
sample with numpy's seeded generator on both paths and scores in float32 on both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import (ImageStats, as_array, bincount, class_sums, device, float64, image_stats, labels_of, namespace,
                      top_k, unit_images)

KNN_MAX_QUERIES = 1000
GBC_PCA_COMPONENTS = 64
GBC_VARIANCE_FLOOR = 1e-4
KNN_BLOCK = 256
SEED = 0


def _features(emb: Embeddings) -> tuple[Any, Any]:
    return unit_images(emb), labels_of(emb)


def _class_index(y: Any) -> tuple[Any, Any, Any]:
    """Present classes, each sample's index among them, and their counts."""
    xp = namespace(y)
    classes, inv = xp.unique_inverse(y)
    return classes, inv, bincount(inv)


def _class_sums(f: Any, inv: Any, n_classes: int) -> Any:
    return class_sums(f, inv, n_classes)


# ---------------------------------------------------------------------------------- H-score


def h_score(f: Any, y: Any, stats: ImageStats | None = None) -> float:
    xp = namespace(f)
    n = f.shape[0]
    _, inv, counts = _class_index(y)
    st = stats or ImageStats(f)
    mu = st.mean
    counts = float64(counts)
    means = _class_sums(f, inv, counts.shape[0]) / counts[:, None]
    mc = (means - mu) * xp.sqrt(counts)[:, None]
    # tr(pinv(cov_f) cov_g) with pinv from one eigendecomposition (numpy's cut: |w| > 1e-15 max|w|)
    # and cov_g = mc^T mc / (n-1): sum_i (1/w_i) ||(V^T mc^T)_i||^2 / (n-1).
    w, v = st.eigvals, st.eigvecs
    keep = xp.abs(w) > 1e-15 * xp.max(xp.abs(w))
    proj = v[:, keep].T @ mc.T
    return float(xp.sum(xp.sum(proj ** 2, axis=1) / w[keep]) / (n - 1))


# ---------------------------------------------------------------------------------- LogME


def logme(f: Any, y: Any, max_iter: int = 11, tol: float = 1e-3, eps: float = 1e-5,
          stats: ImageStats | None = None) -> float:
    """Mean over classes of the per-sample log maximum evidence of a Bayesian linear model
    predicting the class indicator from the features."""
    f = float64(f)
    xp = namespace(f)
    dev = device(f)
    n, d = f.shape
    _, inv, counts = _class_index(y)
    c = counts.shape[0]
    counts = float64(counts)
    eps64 = xp.finfo(xp.float64).eps
    if n > d:
        # F^T F from the shared statistics: (n-1) cov + n mu mu^T (no second pass over F).
        gram = f.T @ f if stats is None else (n - 1) * stats.cov + n * (stats.mean[:, None] * stats.mean[None, :])
        sig, v = xp.linalg.eigh((gram + gram.T) / 2)
        keep = sig > max(float(xp.max(sig)), 0.0) * d * eps64
        sig, v = sig[keep], v[:, keep]
        # x = u^T y with u = F V / sqrt(sigma); F^T y_c is the class sum.
        x = (v.T @ _class_sums(f, inv, c).T) / xp.sqrt(sig)[:, None]
    else:
        sig, u = xp.linalg.eigh(f @ f.T)
        keep = sig > max(float(xp.max(sig)), 0.0) * n * eps64
        sig, u = sig[keep], u[:, keep]
        onehot = xp.astype(inv[:, None] == xp.arange(c, dtype=inv.dtype, device=dev)[None, :], xp.float64)
        x = u.T @ onehot
    k = sig.shape[0]
    sigma = sig[:, None]  # (k, 1)
    x2 = x ** 2  # (k, C)
    res_x2 = xp.clip(counts - xp.sum(x2, axis=0), min=0.0)  # ||y||^2 - ||x||^2, y is 0/1

    alpha = xp.ones(c, dtype=xp.float64, device=dev)
    beta = xp.ones(c, dtype=xp.float64, device=dev)
    m2 = xp.zeros(c, dtype=xp.float64, device=dev)
    res2 = xp.zeros(c, dtype=xp.float64, device=dev)
    active = xp.ones(c, dtype=xp.bool, device=dev)
    for _ in range(max_iter):
        a = xp.nonzero(active)[0]
        t = alpha[a] / beta[a]
        gamma = xp.sum(sigma / (sigma + t), axis=0)
        m2[a] = xp.sum(sigma * x2[:, a] / (t + sigma) ** 2, axis=0)
        res2[a] = xp.sum(x2[:, a] / (1 + sigma / t) ** 2, axis=0) + res_x2[a]
        alpha[a] = gamma / (m2[a] + eps)
        beta[a] = (n - gamma) / (res2[a] + eps)
        t_new = alpha[a] / beta[a]
        active[a[xp.abs(t_new - t) / t <= tol]] = False
        if not bool(xp.any(active)):
            break
    evidence = (
        d / 2.0 * xp.log(alpha)
        + n / 2.0 * xp.log(beta)
        - 0.5 * xp.sum(xp.log(alpha[None, :] + beta[None, :] * sigma), axis=0)
        - 0.5 * (d - k) * xp.log(alpha)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * math.log(2 * math.pi)
    ) / n
    return float(xp.mean(evidence))


# ---------------------------------------------------------------------------------- GBC


def gbc(f: Any, y: Any, stats: ImageStats | None = None,
        n_components: int = GBC_PCA_COMPONENTS) -> tuple[float, float]:
    """(GBC, log10(-GBC)) with PCA to ``n_components`` and spherical Gaussians (official code)."""
    xp = namespace(f)
    st = stats or ImageStats(f)
    k = min(n_components, f.shape[0], f.shape[1])
    z = (f - st.mean) @ xp.flip(st.eigvecs, axis=1)[:, :k]  # PCA scores on the top-k principal directions
    _, inv, counts = _class_index(y)
    c = counts.shape[0]
    counts = float64(counts)
    mu = _class_sums(z, inv, c) / counts[:, None]
    sq = _class_sums(z * z, inv, c) / counts[:, None]
    var = xp.mean(xp.clip(sq - mu ** 2, min=GBC_VARIANCE_FLOOR), axis=1)  # (C,) spherical: mean variance
    d2 = xp.sum((mu[:, None, :] - mu[None, :, :]) ** 2, axis=2)  # (C, C) squared mean distances
    avg = (var[:, None] + var[None, :]) / 2
    bd = d2 / (8 * avg) + 0.5 * (xp.log(avg) - 0.5 * xp.log(var)[:, None] - 0.5 * xp.log(var)[None, :])
    ar = xp.arange(c, device=device(bd))
    neg = -bd[ar[:, None] != ar[None, :]]  # ordered pairs c1 != c2
    top = xp.max(neg)
    log_sum = top + xp.log(xp.sum(xp.exp(neg - top)))
    return float(-xp.sum(xp.exp(neg))), float(log_sum) / math.log(10)


# ---------------------------------------------------------------------------------- TransRate


def coding_rate(z: Any, eps: float = 1e-4) -> float:
    n, d = z.shape
    if n == 0:
        return 0.0
    xp = namespace(z)
    gram = z.T @ z if d <= n else z @ z.T  # det(I_d + a Z^T Z) = det(I_n + a Z Z^T)
    _, logdet = xp.linalg.slogdet(xp.eye(gram.shape[0], dtype=gram.dtype, device=device(gram)) + gram / (n * eps))
    return 0.5 * float(logdet)


def transrate(f: Any, y: Any, eps: float = 1e-4, stats: ImageStats | None = None) -> float:
    xp = namespace(f)
    n, d = f.shape
    st = stats or ImageStats(f)
    z = f - st.mean
    classes = xp.unique_values(y)
    rzy = sum(coding_rate(z[y == k], eps) for k in classes)
    if n >= d:  # Z^T Z = (n-1) cov: the total coding rate from the shared eigenvalues
        lam = xp.clip((n - 1) * st.eigvals, min=0.0)
        total = 0.5 * float(xp.sum(xp.log1p(lam / (n * eps))))
    else:
        total = coding_rate(z, eps)
    return total - rzy / classes.shape[0]


# ---------------------------------------------------------------------------------- kNN


def knn_loo(f: Any, y: Any, ks: tuple[int, ...] = (1, 5),
            max_queries: int = KNN_MAX_QUERIES, seed: int = SEED) -> dict[int, float]:
    xp = namespace(f)
    n = f.shape[0]
    kmax = min(max(ks), n - 1)
    if kmax < 1:
        raise ValueError("leave-one-out kNN needs at least 2 images")
    queries = np.arange(n) if n <= max_queries else np.sort(
        np.random.default_rng(seed).choice(n, size=max_queries, replace=False))
    queries = as_array(queries, y)
    base = xp.astype(f, xp.float32)
    hits = {k: 0 for k in ks}
    for start in range(0, queries.shape[0], KNN_BLOCK):
        q = queries[start:start + KNN_BLOCK]
        rows = xp.arange(q.shape[0], device=device(q))
        sims = base[q] @ base.T  # (b, N)
        sims[rows, q] = -math.inf  # leave the query itself out
        neigh = y[top_k(sims, kmax)]  # (b, kmax) labels, nearest first; kmax <= n-1: self (-inf) never chosen
        for k in ks:
            kk = min(k, kmax)
            lab = neigh[:, :kk]
            votes = xp.sum(xp.astype(lab[:, :, None] == lab[:, None, :], xp.int64), axis=2)  # votes for each neighbour's class
            top = xp.astype(votes == xp.max(votes, axis=1, keepdims=True), xp.int8)
            winner = lab[rows, xp.argmax(top, axis=1)]
            hits[k] += int(xp.sum(xp.astype(winner == y[q], xp.int64)))
    return {k: hits[k] / queries.shape[0] for k in ks}


# ---------------------------------------------------------------------------------- metrics


def _h_score(emb: Embeddings) -> float:
    return h_score(*_features(emb), stats=image_stats(emb))


def _logme(emb: Embeddings) -> float:
    return logme(*_features(emb), stats=image_stats(emb))


def _gbc(emb: Embeddings) -> dict[str, float]:
    value, log10 = gbc(*_features(emb), stats=image_stats(emb))
    return {"gbc": value, "gbc_log10": log10}


def _transrate(emb: Embeddings) -> float:
    return transrate(*_features(emb), stats=image_stats(emb))


def _knn(emb: Embeddings) -> dict[str, float]:
    acc = knn_loo(*_features(emb))
    return {"knn1_acc": acc[1], "knn5_acc": acc[5]}


NEEDS = frozenset({"image", "labels"})


@hookimpl
def register_metrics(register):
    register(Metric(name="h_score", compute=_h_score, needs=NEEDS, version="1", array_api=True,
                    description="H-score (Bao et al. 2019) on normalised image features, as the IIMM repo",
                    higher_is="more transferable features"))
    register(Metric(name="logme", compute=_logme, needs=NEEDS, version="1", array_api=True,
                    description="LogME (You et al. 2021): log maximum evidence, official fixed-point iteration",
                    higher_is="more transferable features"))
    register(Metric(name="gbc", compute=_gbc, needs=NEEDS, version="2", array_api=True,
                    description="GBC (Pándy et al. 2022) as its official code: PCA to 64 components, spherical "
                                "Gaussians, variance floor 1e-4; also log10(-GBC) computed in log space",
                    higher_is="gbc: classes better separated (closer to 0); gbc_log10: classes overlap more"))
    register(Metric(name="transrate", compute=_transrate, needs=NEEDS, version="1", array_api=True,
                    description="TransRate (Huang et al. 2022): coding-rate gain, eps 1e-4, centred, as the IIMM repo",
                    higher_is="more transferable features"))
    register(Metric(name="knn_loo", compute=_knn, needs=NEEDS, version="2", array_api=True,
                    description="Leave-one-out kNN accuracy (cosine, k=1 and k=5; <= 1000 fixed-seed queries)",
                    higher_is="classes already separable by neighbours"))
