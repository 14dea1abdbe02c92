"""Shared numerics for the metric plugins: normalisation, paired text, covariances, Fréchet.

One Fréchet routine serves both the distribution gap (modality_gap) and MIR, so the two signals
cannot drift apart. The matrix square root goes through symmetric eigendecompositions
(``eigh``) with negative eigenvalues clipped to zero, which keeps rank-deficient covariances
(fewer samples than dimensions) real and finite; MIR's official code instead uses
Newton-Schulz ("fast") or ``scipy.linalg.sqrtm`` ("accurate"), which can return NaN or complex
values on singular inputs. For positive semi-definite A, B the two agree:
``tr sqrtm(A B) = tr (A^1/2 B A^1/2)^1/2`` (same non-negative eigenvalues).
"""

from __future__ import annotations

import numpy as np

from advisor.specs import Embeddings


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (as sklearn.preprocessing.normalize, axis=1)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def labels_of(emb: Embeddings) -> np.ndarray:
    return np.asarray(emb.labels).astype(np.int64, copy=False)


def paired_text(emb: Embeddings, normalize: bool = True) -> np.ndarray:
    """(N,d) text paired with each image: ``emb.paired_text`` when given, else the text of
    each image's true class (``text[labels]``), the classification-dataset analogue of an
    image-caption pair (methods.md section 7)."""
    if emb.paired_text is not None:
        t = np.asarray(emb.paired_text, dtype=np.float64)
        return l2_normalize(t) if normalize else t
    t = l2_normalize(emb.text) if normalize else np.asarray(emb.text, dtype=np.float64)
    return t[labels_of(emb)]


def mean_cov(x: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the rows of ``x`` (unbiased by default, as MIR's code)."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    n = x.shape[0]
    cov = (xc.T @ xc) / max(n - ddof, 1)
    return mu, (cov + cov.T) / 2


def _clip_noise(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise removed: values below
    ``max|w| * n * machine eps`` (the numerical rank cut of ``numpy.linalg.matrix_rank``) are 0.
    Without the cut, the square roots of ~1e-16 noise eigenvalues add up (about 1e-8 each) when
    a covariance is rank-deficient."""
    tol = np.max(np.abs(w), initial=0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix, eigenvalues clipped at 0."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_clip_noise(w))) @ v.T


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """``tr (A^1/2 B A^1/2)^1/2`` for symmetric PSD A, B (= ``tr sqrtm(A @ B)``), always real."""
    ra = sqrtm_psd(a)
    m = ra @ b @ ra
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_clip_noise(w)).sum())


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                       mean_term: bool = True) -> float:
    """``||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, clipped at 0.

    With ``mean_term=False`` this is the covariance part only: the squared 2-Wasserstein
    distance between the two centred Gaussians.
    """
    cov_part = float(np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2))
    mean_part = float(np.sum((mu1 - mu2) ** 2)) if mean_term else 0.0
    return max(mean_part + cov_part, 0.0)


def frechet_distance(x: np.ndarray, y: np.ndarray, mean_term: bool = True, ddof: int = 1) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y``."""
    mu1, c1 = mean_cov(x, ddof)
    mu2, c2 = mean_cov(y, ddof)
    return frechet_from_stats(mu1, c1, mu2, c2, mean_term=mean_term)
