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

import weakref
from typing import Any, Callable

import numpy as np

from advisor.specs import Embeddings

_SHARED: dict[int, dict[str, Any]] = {}


def shared(emb: Embeddings, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per Embeddings object and key: the work several metrics need (unit
    vectors, the image covariance and its eigendecomposition) is done once per signal run.

    Held until ``emb`` is garbage-collected, and recomputed when one of its arrays is replaced
    (``emb.image = ...``). Metrics must treat the results as read-only; arrays modified in place
    between metric runs are not noticed.
    """
    store = _SHARED.get(id(emb))
    if store is None:
        store = _SHARED[id(emb)] = {}
        weakref.finalize(emb, _SHARED.pop, id(emb), None)
    arrays = (id(emb.image), id(emb.text), id(emb.labels), id(emb.paired_text))
    if store.get("_arrays") != arrays:
        store.clear()
        store["_arrays"] = arrays
    if key not in store:
        store[key] = compute()
    return store[key]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (as sklearn.preprocessing.normalize, axis=1)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def labels_of(emb: Embeddings) -> np.ndarray:
    return np.asarray(emb.labels).astype(np.int64, copy=False)


def unit_images(emb: Embeddings) -> np.ndarray:
    """L2-normalised image embeddings (float64), shared between metrics."""
    return shared(emb, "unit_images", lambda: l2_normalize(emb.image))


def unit_texts(emb: Embeddings) -> np.ndarray:
    """L2-normalised class-text embeddings (float64), shared between metrics."""
    return shared(emb, "unit_texts", lambda: l2_normalize(emb.text))


def class_sums(x: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, d) per-class sums of the rows of ``x`` (``labels`` in [0, n_classes)):
    one stable sort and ``np.add.reduceat``, no Python loop and no (C, N) one-hot matrix."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=n_classes)
    out = np.zeros((n_classes, x.shape[1]))
    present = np.flatnonzero(counts)
    if len(present):
        starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
        out[present] = np.add.reduceat(x[order], starts, axis=0)
    return out


class ImageStats:
    """Mean, unbiased covariance and its eigendecomposition (ascending) of the unit image
    embeddings: H-score, GBC's PCA, TransRate's total coding rate and the distribution gap all
    use this one covariance and this one ``eigh``."""

    def __init__(self, x: np.ndarray) -> None:
        self.n = x.shape[0]
        self.mean, self.cov = mean_cov(x)
        self.eigvals, self.eigvecs = np.linalg.eigh(self.cov)


def image_stats(emb: Embeddings) -> ImageStats:
    return shared(emb, "image_stats", lambda: ImageStats(unit_images(emb)))


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


def weighted_mean_cov(points: np.ndarray, counts: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``points[c]`` repeated ``counts[c]`` times, in O(C d^2) instead of
    O(N d^2): the paired-text cloud of a classification dataset is C class texts with counts."""
    points = np.asarray(points, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64)
    n = w.sum()
    mu = (w[:, None] * points).sum(axis=0) / n
    pc = points - mu
    cov = (pc.T * w) @ pc / max(n - ddof, 1)
    return mu, (cov + cov.T) / 2


def _clip_noise(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise removed: values below
    ``max|w| * n * machine eps`` (the numerical rank cut of ``numpy.linalg.matrix_rank``) are 0.
    Without the cut, the square roots of ~1e-16 noise eigenvalues add up (about 1e-8 each) when
    a covariance is rank-deficient."""
    tol = np.max(np.abs(w), initial=0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def sqrtm_psd(a: np.ndarray, eig: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix, eigenvalues clipped at 0 (``eig``: its
    eigendecomposition when already known)."""
    w, v = eig if eig is not None else np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_clip_noise(w))) @ v.T


def trace_sqrt_product(a: np.ndarray, b: np.ndarray, eig_a: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """``tr (A^1/2 B A^1/2)^1/2`` for symmetric PSD A, B (= ``tr sqrtm(A @ B)``), always real."""
    ra = sqrtm_psd(a, eig_a)
    m = ra @ b @ ra
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_clip_noise(w)).sum())


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                       mean_term: bool = True, eig1: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """``||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, clipped at 0.

    With ``mean_term=False`` this is the covariance part only: the squared 2-Wasserstein
    distance between the two centred Gaussians.
    """
    cov_part = float(np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2, eig1))
    mean_part = float(np.sum((mu1 - mu2) ** 2)) if mean_term else 0.0
    return max(mean_part + cov_part, 0.0)


def frechet_distance(x: np.ndarray, y: np.ndarray, mean_term: bool = True, ddof: int = 1) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y``."""
    mu1, c1 = mean_cov(x, ddof)
    mu2, c2 = mean_cov(y, ddof)
    return frechet_from_stats(mu1, c1, mu2, c2, mean_term=mean_term)
