"""MIR, the Modality Integration Rate (Huang et al., ICCV 2025), **adapted to dual encoders**.

MIR is defined for LLaVA-style models, where vision and text tokens pass through the same LLM
layers. A CLIP-style dual encoder has two towers, so the port below is ours (methods.md 4.2).
Per layer, exactly as the official ``mir.py`` / ``mir_util.py`` (shikiw/Modality-Integration-Rate):

1. text-centric scaling: ``s = 1 / mean_i ||text_i||``; both modalities are multiplied by ``s``;
2. 3-sigma outlier rows, per modality: rows whose L2 norm differs from the median norm by more
   than 3 standard deviations (unbiased, as ``torch.std``) are *replaced* by the coordinate-wise
   median vector. Medians are the lower median, as ``torch.median`` returns. Ours: a deviation
   below 1e-6 of the median norm (float rounding) never counts, so unit-norm inputs keep all rows;
3. Fréchet distance with unbiased covariances,
   ``||mu_v - mu_t||^2 + tr S_v + tr S_t - 2 tr (S_v S_t)^1/2``;

then ``MIR = log10(sum over layers of FD)``. Lower MIR means better integration.

Our choices (the adaptation):
- **Layers.** When the embeddings carry per-layer states (``image_layers``/``text_layers``) with
  the same number of layers and equal widths layer by layer, every such pair is a layer (all
  supplied layers are used; the model plugin decides what a layer is). Otherwise, and for
  CLIP towers whose widths differ (768 vs 512 for ViT-B), the only shared space is the joint
  embedding: MIR is then the FD of the final projected embeddings (image vs paired text) as a
  single layer. ``mir_final`` always reports that final-embedding value, so that models with
  and without aligned layers stay comparable; ``mir`` equals it when no aligned layers exist.
- **Text rows.** Images are paired with their text: ``paired_text`` when given, else the true
  class text ``text[labels]``. What the per-layer text rows are is stated by the embeddings
  (``Embeddings.text_layer_rows``), never inferred from their count: ``classes`` rows are
  expanded to each image's class; ``prompts`` rows (one per (template, class) prompt, templates
  outer, as ``advisor.embed`` writes them) are first averaged over templates, then expanded;
  ``images`` rows are used as they are; ``unpaired`` rows (the default) are used as they are,
  like the official code's unpaired text tokens (the Fréchet distance compares the two
  distributions, so the row counts need not match).
- **Rotation.** Outlier *detection* uses row norms (rotation invariant); the coordinate-wise
  median that replaces outliers is not, so MIR is rotation invariant only when no row is replaced.
- **Raw features.** No L2 normalisation: MIR's text-centric scaling is its normalisation.
- **Small samples.** The square root goes through ``eigh`` with eigenvalues below the numerical
  rank cut set to 0 (``_linalg.trace_sqrt_product``), so N < d gives a real, finite value (no
  shrinkage needed; the official Newton-Schulz / ``sqrtm`` paths can give NaN or complex there).
- **Identical modalities.** FD = 0 makes log10 undefined; the metric then raises and the engine
  reports it as an error rather than storing -inf.

numpy arrays are computed in numpy, torch tensors in torch on their device (``_linalg``): the
scaling, outlier replacement, covariances and each layer's Fréchet distance.
"""

from __future__ import annotations

import math
from typing import Any

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import (bincount, device, float64, frechet_distance, frechet_from_stats, kth_smallest, labels_of,
                      mean_cov, namespace, weighted_mean_cov)


def lower_median(x: Any, axis: int | None = None) -> Any:
    """``torch.median`` semantics: the lower of the two middle values for an even count."""
    if axis is None:
        x, axis = namespace(x).reshape(x, (-1,)), 0
    k = (x.shape[axis] - 1) // 2
    return kth_smallest(x, k, axis=axis)


def _replace_rows(x: Any, outliers: Any, median: Any) -> Any:
    xp = namespace(x)
    return xp.where(outliers[:, None], median[None, :], x)


def replace_outliers_with_median(x: Any) -> Any:
    """Rows with ``|norm - median(norms)| > 3 std(norms)`` become the coordinate-wise median."""
    x = float64(x)
    xp = namespace(x)
    if x.shape[0] < 2:
        return x
    norms = xp.linalg.vector_norm(x, axis=1)
    med = float(lower_median(norms))
    # Ours: deviations within float rounding of the median norm are never outliers. Without this
    # floor, already-normalised inputs (all norms 1 up to ~1e-7) would have rows "replaced" at
    # random, because 3 std of pure rounding noise is itself rounding noise.
    outliers = xp.abs(norms - med) > max(3 * float(xp.std(norms, correction=1)), 1e-6 * abs(med))
    if bool(xp.any(outliers)):
        x = _replace_rows(x, outliers, lower_median(x, axis=0))
    return x


def weighted_lower_median(values: Any, counts: Any) -> Any:
    """``lower_median`` (axis 0) of ``values`` (M,) or (M,w) with row m repeated ``counts[m]``
    times, without repeating anything."""
    values = float64(values)
    xp = namespace(values)
    flat = values.ndim == 1
    v = values[:, None] if flat else values
    k = (int(xp.sum(counts)) - 1) // 2  # index of the lower middle value among sum(counts)
    order = xp.argsort(v, axis=0, stable=True)
    ends = xp.cumulative_sum(counts[order], axis=0)  # (M, w)
    pick = xp.sum(xp.astype(ends <= k, xp.int64), axis=0)  # (w,) first sorted position whose cumulative count exceeds k
    cols = xp.arange(v.shape[1], device=device(pick))
    out = v[order[pick, cols], cols]
    return out[0] if flat else out


def replace_outliers_counted(x: Any, counts: Any) -> Any:
    """``replace_outliers_with_median`` of the rows of ``x`` repeated ``counts`` times, on the
    distinct rows only (the paired class texts of a classification dataset)."""
    x = float64(x)
    xp = namespace(x)
    w = float64(counts)
    n = float(xp.sum(w))
    if n < 2:
        return x
    norms = xp.linalg.vector_norm(x, axis=1)
    med = float(weighted_lower_median(norms, counts))
    mean = xp.sum(w * norms) / n
    std = float(xp.sqrt(xp.sum(w * (norms - mean) ** 2) / (n - 1)))
    outliers = xp.abs(norms - med) > max(3 * std, 1e-6 * abs(med))
    if bool(xp.any(outliers)):
        x = _replace_rows(x, outliers, weighted_lower_median(x, counts))
    return x


def layer_fd(vision: Any, text: Any, text_counts: Any = None) -> float:
    """One layer of MIR: text-centric scaling, outlier replacement, Fréchet distance.

    ``text_counts``: ``text`` holds distinct rows, row m standing for ``text_counts[m]`` rows
    (the same value as passing the repeated rows, in O(C d^2) instead of O(N d^2))."""
    vision = float64(vision)
    text = float64(text)
    xp = namespace(vision, text)
    norms = xp.linalg.vector_norm(text, axis=1)
    mean_norm = float(xp.mean(norms) if text_counts is None else xp.sum(text_counts * norms) / xp.sum(text_counts))
    if not mean_norm > 0:
        raise ValueError("text features have zero norm")
    s = 1.0 / mean_norm
    v = replace_outliers_with_median(vision * s)
    if text_counts is None:
        return frechet_distance(v, replace_outliers_with_median(text * s), mean_term=True, ddof=1)
    t = replace_outliers_counted(text * s, text_counts)
    mu_v, cov_v = mean_cov(v)
    mu_t, cov_t = weighted_mean_cov(t, text_counts)
    return frechet_from_stats(mu_v, cov_v, mu_t, cov_t, mean_term=True)


def aligned_layers(emb: Embeddings) -> list[tuple[Any, Any]]:
    """(image, text) layer pairs usable for per-layer MIR, or [] when the towers do not align."""
    il, tl = emb.image_layers, emb.text_layers
    if not il or not tl or len(il) != len(tl):
        return []
    if any(a.shape[1] != b.shape[1] for a, b in zip(il, tl)):
        return []
    rows = getattr(emb, "text_layer_rows", "unpaired")
    y = labels_of(emb)
    c = emb.text.shape[0]
    pairs = []
    for a, b in zip(il, tl):
        b = float64(b)
        if rows == "prompts":  # templates outer: (T*C, w) -> mean over templates per class
            if b.shape[0] % c:
                raise ValueError(f"{b.shape[0]} prompt rows are not a whole number of templates x {c} classes")
            xp = namespace(b)
            b = xp.mean(xp.reshape(b, (b.shape[0] // c, c, b.shape[1])), axis=0)
        if rows in ("prompts", "classes"):
            if b.shape[0] != c:
                raise ValueError(f"text layer has {b.shape[0]} rows, not one per class ({c})")
            b = b[y]  # one row per class -> the text paired with each image
        pairs.append((a, b))
    return pairs


def mir(emb: Embeddings) -> dict[str, float]:
    if emb.paired_text is not None:
        final = layer_fd(emb.image, emb.paired_text)
    else:  # the paired text of image i is its class text: C distinct rows with label counts
        counts = bincount(labels_of(emb), minlength=emb.text.shape[0])
        keep = counts > 0
        final = layer_fd(emb.image, emb.text[keep], counts[keep])
    pairs = aligned_layers(emb)
    total = sum(layer_fd(a, b) for a, b in pairs) if pairs else final
    if final <= 0 or total <= 0:
        raise ValueError("Fréchet distance is zero: MIR (a log10) is undefined for identical modalities")
    return {"mir": math.log10(total), "mir_final": math.log10(final)}


@hookimpl
def register_metrics(register):
    register(Metric(
        name="mir",
        compute=mir,
        needs=frozenset({"image", "text", "labels"}),
        version="2",
        array_api=True,
        description="Modality Integration Rate adapted to dual encoders: log10 of summed per-layer "
                    "Fréchet distances (aligned tower layers, else final embeddings)",
        higher_is="worse integration of the two modalities (lower is better)",
    ))
