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
"""

from __future__ import annotations

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import ImageStats, class_sums, image_stats, labels_of, unit_images

KNN_MAX_QUERIES = 1000
GBC_PCA_COMPONENTS = 64
GBC_VARIANCE_FLOOR = 1e-4
KNN_BLOCK = 256
SEED = 0


def _features(emb: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    return unit_images(emb), labels_of(emb)


def _class_index(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Present classes, each sample's index among them, and their counts."""
    classes, inv = np.unique(y, return_inverse=True)
    return classes, inv, np.bincount(inv)


def _class_sums(f: np.ndarray, inv: np.ndarray, n_classes: int) -> np.ndarray:
    return class_sums(f, inv, n_classes)


# ---------------------------------------------------------------------------------- H-score


def h_score(f: np.ndarray, y: np.ndarray, stats: ImageStats | None = None) -> float:
    n = len(f)
    _, inv, counts = _class_index(y)
    st = stats or ImageStats(f)
    mu = st.mean
    means = _class_sums(f, inv, len(counts)) / counts[:, None]
    mc = (means - mu) * np.sqrt(counts)[:, None]
    # tr(pinv(cov_f) cov_g) with pinv from one eigendecomposition (numpy's cut: |w| > 1e-15 max|w|)
    # and cov_g = mc^T mc / (n-1): sum_i (1/w_i) ||(V^T mc^T)_i||^2 / (n-1).
    w, v = st.eigvals, st.eigvecs
    keep = np.abs(w) > 1e-15 * np.abs(w).max()
    proj = v[:, keep].T @ mc.T
    return float(((proj ** 2).sum(axis=1) / w[keep]).sum() / (n - 1))


# ---------------------------------------------------------------------------------- LogME


def logme(f: np.ndarray, y: np.ndarray, max_iter: int = 11, tol: float = 1e-3, eps: float = 1e-5,
          stats: ImageStats | None = None) -> float:
    """Mean over classes of the per-sample log maximum evidence of a Bayesian linear model
    predicting the class indicator from the features."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    _, inv, counts = _class_index(y)
    c = len(counts)
    if n > d:
        # F^T F from the shared statistics: (n-1) cov + n mu mu^T (no second pass over F).
        gram = f.T @ f if stats is None else (n - 1) * stats.cov + n * np.outer(stats.mean, stats.mean)
        sig, v = np.linalg.eigh((gram + gram.T) / 2)
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


def gbc(f: np.ndarray, y: np.ndarray, stats: ImageStats | None = None,
        n_components: int = GBC_PCA_COMPONENTS) -> tuple[float, float]:
    """(GBC, log10(-GBC)) with PCA to ``n_components`` and spherical Gaussians (official code)."""
    st = stats or ImageStats(f)
    k = min(n_components, f.shape[0], f.shape[1])
    z = (f - st.mean) @ st.eigvecs[:, ::-1][:, :k]  # PCA scores on the top-k principal directions
    _, inv, counts = _class_index(y)
    c = len(counts)
    mu = _class_sums(z, inv, c) / counts[:, None]
    sq = _class_sums(z * z, inv, c) / counts[:, None]
    var = np.maximum(sq - mu ** 2, GBC_VARIANCE_FLOOR).mean(axis=1)  # (C,) spherical: mean variance
    d2 = ((mu[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2)  # (C, C) squared mean distances
    avg = (var[:, None] + var[None, :]) / 2
    bd = d2 / (8 * avg) + 0.5 * (np.log(avg) - 0.5 * np.log(var)[:, None] - 0.5 * np.log(var)[None, :])
    neg = -bd[~np.eye(c, dtype=bool)]  # ordered pairs c1 != c2
    top = neg.max()
    log_sum = top + np.log(np.exp(neg - top).sum())
    return float(-np.exp(neg).sum()), float(log_sum / np.log(10))


# ---------------------------------------------------------------------------------- TransRate


def coding_rate(z: np.ndarray, eps: float = 1e-4) -> float:
    n, d = z.shape
    if n == 0:
        return 0.0
    gram = z.T @ z if d <= n else z @ z.T  # det(I_d + a Z^T Z) = det(I_n + a Z Z^T)
    _, logdet = np.linalg.slogdet(np.eye(gram.shape[0]) + gram / (n * eps))
    return 0.5 * float(logdet)


def transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4, stats: ImageStats | None = None) -> float:
    n, d = f.shape
    st = stats or ImageStats(f)
    z = f - st.mean
    classes = np.unique(y)
    rzy = sum(coding_rate(z[y == k], eps) for k in classes)
    if n >= d:  # Z^T Z = (n-1) cov: the total coding rate from the shared eigenvalues
        lam = np.clip((n - 1) * st.eigvals, 0.0, None)
        total = 0.5 * float(np.log1p(lam / (n * eps)).sum())
    else:
        total = coding_rate(z, eps)
    return total - rzy / len(classes)


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
    register(Metric(name="h_score", compute=_h_score, needs=NEEDS, version="1",
                    description="H-score (Bao et al. 2019) on normalised image features, as the IIMM repo",
                    higher_is="more transferable features"))
    register(Metric(name="logme", compute=_logme, needs=NEEDS, version="1",
                    description="LogME (You et al. 2021): log maximum evidence, official fixed-point iteration",
                    higher_is="more transferable features"))
    register(Metric(name="gbc", compute=_gbc, needs=NEEDS, version="2",
                    description="GBC (Pándy et al. 2022) as its official code: PCA to 64 components, spherical "
                                "Gaussians, variance floor 1e-4; also log10(-GBC) computed in log space",
                    higher_is="gbc: classes better separated (closer to 0); gbc_log10: classes overlap more"))
    register(Metric(name="transrate", compute=_transrate, needs=NEEDS, version="1",
                    description="TransRate (Huang et al. 2022): coding-rate gain, eps 1e-4, centred, as the IIMM repo",
                    higher_is="more transferable features"))
    register(Metric(name="knn_loo", compute=_knn, needs=NEEDS, version="2",
                    description="Leave-one-out kNN accuracy (cosine, k=1 and k=5; <= 1000 fixed-seed queries)",
                    higher_is="classes already separable by neighbours"))
