"""MDS, a per-dimension Modality Dominance Score: **our reconstruction** (methods.md section 3.2).

The MDS paper (Yan et al., arXiv 2502.14888) attributes each feature to the image side, the
text side, or both, on SAE / NCL latents; its code and exact formula are not public. What this
plugin computes, on the raw dimensions of the joint embedding space (no SAE; the "cheap variant"
of methods.md), with L2-normalised image embeddings v_n and their paired texts t_n
(``paired_text`` when given, else the true class text):

    MDS_d = (1/N) sum_n |v_nd| / (|v_nd| + |t_nd| + eps),   eps = 1e-8

The activation is the absolute value ``|a|``, not ``(a)_+``: raw CLIP dimensions are signed, and
``(a)_+`` would leave about half the terms at 0/(0+0+eps), a value set by the sign convention of
each axis rather than by either modality. ``|a|`` measures each modality's share of the
magnitude on that axis. MDS_d lies in [0, 1]: 1 vision-dominant, 0 language-dominant.

Dimensions are classed with thresholds at the mean +/- one (population) standard deviation of
MDS over dimensions (the thresholds are unverified in the paper too): ``MDS_d > mu + sigma`` is
image-dominant, ``MDS_d < mu - sigma`` text-dominant, the rest cross-modal. Signals: the three
fractions and the mean ``|MDS_d - 0.5|`` (how lopsided the dimensions are on average).

MDS is tied to the coordinate axes: unlike IIMM and the gaps it is **not** invariant to a
rotation of the embedding space. It is invariant to sample order. numpy arrays are computed in numpy, torch tensors in torch on
their device (``_linalg``).
"""

from __future__ import annotations

from typing import Any

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import l2_normalize, labels_of, namespace, unit_images, unit_texts

EPS = 1e-8


def mds_scores(emb: Embeddings, block: int = 8192) -> Any:
    """(d,) per-dimension dominance scores. Row blocks are paired one at a time, so 50k x 512
    inputs never materialise several (N,d) float64 temporaries beyond the shared unit vectors."""
    n = emb.image.shape[0]
    text = unit_texts(emb) if emb.paired_text is None else None
    labels = labels_of(emb)
    images = unit_images(emb)
    xp = namespace(images)
    total = xp.zeros_like(images[0])
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        v = images[rows]
        t = text[labels[rows]] if text is not None else l2_normalize(emb.paired_text[rows])
        av, at = xp.abs(v), xp.abs(t)
        total = total + xp.sum(av / (av + at + EPS), axis=0)
    return total / n


def mds(emb: Embeddings) -> dict[str, float]:
    scores = mds_scores(emb)
    xp = namespace(scores)
    mu, sigma = xp.mean(scores), xp.std(scores)
    d = scores.shape[0]
    img = int(xp.sum(xp.astype(scores > mu + sigma, xp.int64)))
    txt = int(xp.sum(xp.astype(scores < mu - sigma, xp.int64)))
    return {
        "mds_img_frac": img / d,
        "mds_text_frac": txt / d,
        "mds_cross_frac": (d - img - txt) / d,
        "mds_mean_dev": float(xp.mean(xp.abs(scores - 0.5))),
    }


@hookimpl
def register_metrics(register):
    register(Metric(
        name="mds",
        compute=mds,
        needs=frozenset({"image", "text", "labels"}),
        version="1",
        array_api=True,
        description="Modality Dominance Score on raw embedding dimensions (|a| activations, "
                    "mu +/- sigma thresholds): fractions of image-, text- and cross-dominant "
                    "dimensions and mean |MDS-0.5| (our reconstruction)",
        higher_is="mds_mean_dev: dimensions more dominated by one modality",
        reconstructed=True,
    ))
