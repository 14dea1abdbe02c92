"""IIMM, the Inter-Intra Modal Measure (Niss et al., ICCV 2025; official code mit-ll/IIMM).

Definition (methods.md section 1.1, identical to ``metrics.py`` in the official repository),
on L2-normalised image embeddings x and one L2-normalised text embedding per class t_c:

- inter-modal term: for each image, the mean cosine to the C-1 *wrong* class texts, then the
  mean over images (the official ``uniformity_image``, which the code calls ``intra_images``);
- intra-modal term: the mean cosine over distinct image pairs i<j (the official ``inter``);
- IIMM = (inter + intra) / 2.

Both terms are computed exactly in O(N*d), not O(N^2*d) (our rewrite, same value):
``sum_{i<j} x_i.x_j = (||sum_i x_i||^2 - sum_i ||x_i||^2) / 2`` and
``sum_{c != y_i} x_i.t_c = x_i.(sum_c t_c) - x_i.t_{y_i}``.
``correct_cos`` is the mean cosine of each image with its own class text (official ``cos_sim``).
numpy arrays are computed in numpy, torch tensors in torch on their device (``_linalg``).
"""

from __future__ import annotations

from typing import Any

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import einsum, labels_of, namespace, unit_images, unit_texts


def intra_modal(x: Any) -> float:
    """Mean of x_i.x_j over distinct unordered pairs, in O(N*d)."""
    xp = namespace(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError("the intra-modal term needs at least 2 images")
    s = xp.sum(x, axis=0)
    return float((s @ s - einsum("ij,ij->", x, x)) / (n * (n - 1)))


def iimm(emb: Embeddings) -> dict[str, float]:
    x = unit_images(emb)
    t = unit_texts(emb)
    y = labels_of(emb)
    xp = namespace(x)
    c = t.shape[0]
    if c < 2:
        raise ValueError("IIMM needs at least 2 classes")
    correct = einsum("ij,ij->i", x, t[y])  # cos(x_i, t_{y_i})
    wrong_mean = (x @ xp.sum(t, axis=0) - correct) / (c - 1)
    inter = float(xp.mean(wrong_mean))
    intra = intra_modal(x)
    return {
        "iimm": (inter + intra) / 2.0,
        "iimm_inter": inter,
        "iimm_intra": intra,
        "correct_cos": float(xp.mean(correct)),
    }


@hookimpl
def register_metrics(register):
    register(Metric(
        name="iimm",
        compute=iimm,
        needs=frozenset({"image", "text", "labels"}),
        version="1",
        array_api=True,
        description="Inter-Intra Modal Measure (official definition, O(N*d)); also its two terms "
                    "and the mean cosine to the correct class",
        higher_is="larger in-domain gain from fine-tuning and more forgetting (IIMM paper)",
    ))
