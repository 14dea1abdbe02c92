"""Shared numerics for the metric plugins: normalisation, paired text, covariances, Fréchet.

One Fréchet routine serves both the distribution gap (modality_gap) and MIR, so the two signals
cannot drift apart. The matrix square root goes through symmetric eigendecompositions
(``eigh``) with negative eigenvalues clipped to zero, which keeps rank-deficient covariances
(fewer samples than dimensions) real and finite; MIR's official code instead uses
Newton-Schulz ("fast") or ``scipy.linalg.sqrtm`` ("accurate"), which can return NaN or complex
values on singular inputs. For positive semi-definite A, B the two agree:
``tr sqrtm(A B) = tr (A^1/2 B A^1/2)^1/2`` (same non-negative eigenvalues).

Every routine here is written once against an array namespace (``xp``, from
``array_api_compat``): numpy arrays are computed in numpy, torch tensors in torch on their own
device (CUDA when the embeddings are there, ``advisor.signals.signal_device``), in float64 either
way. The few operations the array API lacks (class sums, partial sorts, bincount, einsum) dispatch
on the array type in ``class_sums``, ``bincount``, ``top_k``, ``kth_smallest`` and ``einsum``.
Random draws are made with numpy's seeded generator on both paths and then indexed into the
array, so a torch run uses the same samples as a numpy run.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np
from array_api_compat import array_namespace, device, is_torch_array

from advisor.specs import Embeddings

_SHARED: dict[int, dict[str, Any]] = {}


def namespace(*arrays: Any) -> Any:
    """The array namespace of ``arrays`` (``array_api_compat``'s numpy or torch wrapper)."""
    return array_namespace(*arrays)


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy (or view) of a numpy array or torch tensor."""
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_array(values: Any, like: Any, dtype: Any = None) -> Any:
    """``values`` (numpy, e.g. seeded random indices) as an array of ``like``'s kind and device."""
    xp = namespace(like)
    return xp.asarray(np.asarray(values), dtype=dtype, device=device(like))


def einsum(subscripts: str, *operands: Any) -> Any:
    """``np.einsum`` or ``torch.einsum`` (the array API has none; it saves an (N, d) temporary)."""
    if is_torch_array(operands[0]):
        import torch

        return torch.einsum(subscripts, *operands)
    return np.einsum(subscripts, *operands)


def bincount(y: Any, minlength: int = 0) -> Any:
    if is_torch_array(y):
        import torch

        return torch.bincount(y, minlength=minlength)
    return np.bincount(y, minlength=minlength)


def top_k(sims: Any, k: int) -> Any:
    """(b, k) column indices of the k largest values of each row, largest first (ties in column
    order on the numpy path)."""
    if is_torch_array(sims):
        return sims.topk(k, dim=1, largest=True, sorted=True).indices
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def kth_smallest(x: Any, k: int, axis: int = 0) -> Any:
    """The k-th smallest value (0-based) along ``axis``."""
    if is_torch_array(x):  # along a contiguous last axis: about 1.6x faster on the CPU than along axis 0
        return x.movedim(axis, -1).contiguous().kthvalue(k + 1, dim=-1).values
    return np.take(np.partition(x, k, axis=axis), k, axis=axis)


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


def float64(x: Any) -> Any:
    """``x`` as float64 in its own namespace (numpy for lists and other array-likes)."""
    if not (is_torch_array(x) or isinstance(x, np.ndarray)):
        x = np.asarray(x)
    xp = namespace(x)
    return xp.asarray(x, dtype=xp.float64)


def l2_normalize(x: Any) -> Any:
    """Rows scaled to unit L2 norm, in float64 (as sklearn.preprocessing.normalize, axis=1)."""
    x = float64(x)
    xp = namespace(x)
    norms = xp.linalg.vector_norm(x, axis=1, keepdims=True)
    return x / xp.where(norms > 0, norms, 1.0)


def labels_of(emb: Embeddings) -> Any:
    if is_torch_array(emb.labels):
        import torch

        return emb.labels.to(torch.int64)
    return np.asarray(emb.labels).astype(np.int64, copy=False)


def unit_images(emb: Embeddings) -> Any:
    """L2-normalised image embeddings (float64), shared between metrics."""
    return shared(emb, "unit_images", lambda: l2_normalize(emb.image))


def unit_texts(emb: Embeddings) -> Any:
    """L2-normalised class-text embeddings (float64), shared between metrics."""
    return shared(emb, "unit_texts", lambda: l2_normalize(emb.text))


def class_sums(x: Any, labels: Any, n_classes: int) -> Any:
    """(n_classes, d) per-class sums of the rows of ``x`` (``labels`` in [0, n_classes)):
    one stable sort and ``np.add.reduceat`` (torch: ``index_add``), no Python loop and no (C, N)
    one-hot matrix."""
    x = float64(x)
    if is_torch_array(x):
        import torch

        return torch.zeros((n_classes, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, labels, x)
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

    def __init__(self, x: Any) -> None:
        self.n = x.shape[0]
        self.mean, self.cov = mean_cov(x)
        self.eigvals, self.eigvecs = namespace(self.cov).linalg.eigh(self.cov)


def image_stats(emb: Embeddings) -> ImageStats:
    return shared(emb, "image_stats", lambda: ImageStats(unit_images(emb)))


def paired_text(emb: Embeddings, normalize: bool = True) -> Any:
    """(N,d) text paired with each image: ``emb.paired_text`` when given, else the text of
    each image's true class (``text[labels]``), the classification-dataset analogue of an
    image-caption pair (methods.md section 7)."""
    if emb.paired_text is not None:
        t = float64(emb.paired_text)
        return l2_normalize(t) if normalize else t
    t = l2_normalize(emb.text) if normalize else float64(emb.text)
    return t[labels_of(emb)]


def mean_cov(x: Any, ddof: int = 1) -> tuple[Any, Any]:
    """Mean and covariance of the rows of ``x`` (unbiased by default, as MIR's code)."""
    x = float64(x)
    mu = namespace(x).mean(x, axis=0)
    xc = x - mu
    n = x.shape[0]
    cov = (xc.T @ xc) / max(n - ddof, 1)
    return mu, (cov + cov.T) / 2


def weighted_mean_cov(points: Any, counts: Any, ddof: int = 1) -> tuple[Any, Any]:
    """Mean and covariance of ``points[c]`` repeated ``counts[c]`` times, in O(C d^2) instead of
    O(N d^2): the paired-text cloud of a classification dataset is C class texts with counts."""
    points = float64(points)
    xp = namespace(points)
    w = float64(counts)
    n = float(xp.sum(w))
    mu = xp.sum(w[:, None] * points, axis=0) / n
    pc = points - mu
    cov = (pc.T * w) @ pc / max(n - ddof, 1)
    return mu, (cov + cov.T) / 2


def _clip_noise(w: Any) -> Any:
    """Eigenvalues of a PSD matrix with rounding noise removed: values below
    ``max|w| * n * machine eps`` (the numerical rank cut of ``numpy.linalg.matrix_rank``) are 0.
    Without the cut, the square roots of ~1e-16 noise eigenvalues add up (about 1e-8 each) when
    a covariance is rank-deficient."""
    xp = namespace(w)
    tol = (float(xp.max(xp.abs(w))) if w.shape[0] else 0.0) * w.shape[0] * xp.finfo(xp.float64).eps
    return xp.where(w > tol, w, 0.0)


def sqrtm_psd(a: Any, eig: tuple[Any, Any] | None = None) -> Any:
    """Symmetric square root of a symmetric PSD matrix, eigenvalues clipped at 0 (``eig``: its
    eigendecomposition when already known)."""
    xp = namespace(a)
    w, v = eig if eig is not None else xp.linalg.eigh((a + a.T) / 2)
    return (v * xp.sqrt(_clip_noise(w))) @ v.T


def trace_sqrt_product(a: Any, b: Any, eig_a: tuple[Any, Any] | None = None) -> float:
    """``tr (A^1/2 B A^1/2)^1/2`` for symmetric PSD A, B (= ``tr sqrtm(A @ B)``), always real."""
    xp = namespace(a, b)
    ra = sqrtm_psd(a, eig_a)
    m = ra @ b @ ra
    w = xp.linalg.eigvalsh((m + m.T) / 2)
    return float(xp.sum(xp.sqrt(_clip_noise(w))))


def frechet_from_stats(mu1: Any, cov1: Any, mu2: Any, cov2: Any,
                       mean_term: bool = True, eig1: tuple[Any, Any] | None = None) -> float:
    """``||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, clipped at 0.

    With ``mean_term=False`` this is the covariance part only: the squared 2-Wasserstein
    distance between the two centred Gaussians.
    """
    xp = namespace(cov1, cov2)
    cov_part = float(xp.linalg.trace(cov1) + xp.linalg.trace(cov2)) - 2.0 * trace_sqrt_product(cov1, cov2, eig1)
    mean_part = float(xp.sum((mu1 - mu2) ** 2)) if mean_term else 0.0
    return max(mean_part + cov_part, 0.0)


def frechet_distance(x: Any, y: Any, mean_term: bool = True, ddof: int = 1) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y``."""
    mu1, c1 = mean_cov(x, ddof)
    mu2, c2 = mean_cov(y, ddof)
    return frechet_from_stats(mu1, c1, mu2, c2, mean_term=mean_term)
