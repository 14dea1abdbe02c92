"""Modality-gap decomposition: raw gap, paired distance, centroid gap and distribution gap.

The decomposition into a centroid gap and a distribution gap is TPC-CMA's (Liu et al., arXiv
2604.00279), but its formulas were not available: every formula below except ``gap_raw`` is
**our reconstruction** (methods.md section 2.2), not the paper's method.

All on L2-normalised embeddings. "Paired text" is ``Embeddings.paired_text`` when given, else
the text of each image's true class, ``text[labels]`` (methods.md section 7).

- ``gap_raw``: ``||mean(images) - mean(class texts)||``, one text per *class*: the Liang et al.
  (2022) gap exactly as ``gap`` in the IIMM repository's ``metrics.py``.
- ``gap_paired``: mean paired distance ``E||x_i - t_i||`` (the paper's "Raw Gap" may be this one;
  methods.md says to record both).
- ``gap_centroid``: ``||mu_I - mu_T||`` between the image cloud and the paired-text cloud
  (classes weighted by their image counts, unlike ``gap_raw``).
- Distribution gap, on the centred clouds ``x - mu_I`` and ``t - mu_T``:
  - ``gap_dist_fd``: covariance part of the Fréchet / W2-Gaussian distance,
    ``tr(S_I + S_T - 2 (S_I^1/2 S_T S_I^1/2)^1/2)`` (unbiased covariances; the same routine as MIR);
  - ``gap_dist_ot``: exact squared 2-Wasserstein distance (squared Euclidean cost) between the
    centred empirical clouds: onto at most ``MAX_ATOMS`` class-text atoms by our exact solver
    (``_transport.exact_ot_to_atoms``, tested equal to POT's ``ot.emd2``), else (captions, many
    classes) POT's ``ot.emd2``. Above ``OT_MAX_POINTS`` images a fixed-seed subsample of
    image/text pairs is used (centred with the full-sample means);
  - ``gap_dist_sw``: squared sliced 2-Wasserstein distance, the mean over ``SW_PROJECTIONS``
    random unit directions (numpy generator, seed 0) of the exact 1-D squared W2
    (``_transport.sliced_w2``), on at most ``SW_MAX_POINTS`` pairs (fixed-seed subsample);
  - ``gap_dist_paired``: mean paired distance after centring, ``E||x~_i - t~_i||``.
  The three optimal-transport style distances are squared. ``gap_dist_fd`` and ``gap_dist_ot``
  share a scale: for Gaussian clouds they are equal, and in general ``gap_dist_ot`` is at least
  ``gap_dist_fd`` (Gelbrich bound), up to subsampling. ``gap_dist_sw`` averages 1-D projections,
  so it is roughly ``gap_dist_ot / d``.

Invariances: all values are invariant to a shared orthogonal rotation of both modalities and
(below the subsampling thresholds) to sample order; ``gap_dist_sw`` is rotation invariant only
in expectation (its random directions are fixed by the seed, not by the data).

Device: numpy arrays are computed in numpy, torch tensors in torch on their device (CUDA when
the embeddings are there): everything dense (means, covariances, the Fréchet term, the OT cost
matrix, the sliced-W2 projections and sorts). The exact OT solver itself is a sequential
augmenting-path algorithm and runs on the CPU in numpy (its (min(N, 2000), C) cost matrix is
copied to the host); POT's ``ot.emd2`` likewise. Subsamples and projection directions are drawn
with numpy's seeded generator on both paths, so both compute on the same points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import (as_array, bincount, frechet_from_stats, image_stats, l2_normalize, labels_of, mean_cov,
                      namespace, to_numpy, unit_images, unit_texts, weighted_mean_cov)
from ._transport import MAX_ATOMS, exact_ot_to_atoms, sliced_w2

OT_MAX_POINTS = 2000
SW_MAX_POINTS = 10000
SW_PROJECTIONS = 128
SEED = 0


def _text_cloud(emb: Embeddings, idx: Any = None) -> tuple[Any, Any]:
    """The paired-text cloud (optionally restricted to image indices ``idx``) as atoms with
    integer multiplicities.

    Without captions the N paired texts are copies of C class texts, so the cloud is C atoms
    counted by label: the same distribution, much cheaper for optimal transport.
    """
    if emb.paired_text is not None:
        t = l2_normalize(emb.paired_text)
        t = t if idx is None else t[idx]
        return t, as_array(np.ones(t.shape[0], dtype=np.int64), t)
    t = unit_texts(emb)
    y = labels_of(emb) if idx is None else labels_of(emb)[idx]
    counts = bincount(y, minlength=t.shape[0])
    keep = counts > 0
    return t[keep], counts[keep]


def _exact_ot(xs: Any, ts: Any, counts: Any) -> float:
    """Exact squared-Euclidean OT cost between the uniform points and the counted atoms. The cost
    matrix is computed where the points are; the solver runs on the CPU (numpy)."""
    xp = namespace(xs, ts)
    cost = xp.sum(xs ** 2, axis=1)[:, None] + xp.sum(ts ** 2, axis=1)[None, :] - 2.0 * xs @ ts.T
    cost = to_numpy(xp.clip(cost, min=0.0))
    counts = to_numpy(counts)
    if len(counts) <= MAX_ATOMS:
        return exact_ot_to_atoms(cost, counts)
    import ot  # many atoms (captions, or many classes): POT's network simplex; slow to import

    n = cost.shape[0]
    return float(ot.emd2(np.full(n, 1.0 / n), counts / counts.sum(), cost, numItermax=10_000_000))


def _subsample(n: int, cap: int, like: Any) -> Any:
    """Sorted fixed-seed indices (numpy's generator on both paths) as an index array of ``like``'s
    kind and device, or None when all ``n`` are used."""
    if n <= cap:
        return None
    return as_array(np.sort(np.random.default_rng(SEED).choice(n, size=cap, replace=False)), like)


def modality_gap(emb: Embeddings) -> dict[str, float]:
    x = unit_images(emb)
    xp = namespace(x)
    y = labels_of(emb)
    t_class = unit_texts(emb)
    t_pair = l2_normalize(emb.paired_text) if emb.paired_text is not None else t_class[y]

    st = image_stats(emb)  # shared with the transferability scores: one covariance, one eigh
    mu_i, cov_i = st.mean, st.cov
    if emb.paired_text is not None:
        mu_t, cov_t = mean_cov(t_pair)
    else:  # C class texts with their image counts: O(C d^2), not O(N d^2)
        mu_t, cov_t = weighted_mean_cov(t_class, bincount(y, minlength=t_class.shape[0]))
    norm = xp.linalg.vector_norm
    out = {
        "gap_raw": float(norm(mu_i - xp.mean(t_class, axis=0))),
        "gap_paired": float(xp.mean(norm(x - t_pair, axis=1))),
        "gap_centroid": float(norm(mu_i - mu_t)),
        "gap_dist_fd": frechet_from_stats(mu_i, cov_i, mu_t, cov_t, mean_term=False, eig1=(st.eigvals, st.eigvecs)),
        "gap_dist_paired": float(xp.mean(norm((x - mu_i) - (t_pair - mu_t), axis=1))),
    }

    # Exact optimal transport on (a subsample of) the centred clouds.
    idx = _subsample(x.shape[0], OT_MAX_POINTS, y)
    xs = (x if idx is None else x[idx]) - mu_i
    ts, counts = _text_cloud(emb, idx)
    out["gap_dist_ot"] = float(max(_exact_ot(xs, ts - mu_t, counts), 0.0))

    # Sliced Wasserstein on (a larger subsample of) the same clouds.
    idx = _subsample(x.shape[0], SW_MAX_POINTS, y)
    xs = (x if idx is None else x[idx]) - mu_i
    ts, counts = _text_cloud(emb, idx)
    out["gap_dist_sw"] = sliced_w2(xs, ts - mu_t, counts, SW_PROJECTIONS, SEED)
    return out


@hookimpl
def register_metrics(register):
    register(Metric(
        name="modality_gap",
        compute=modality_gap,
        needs=frozenset({"image", "text", "labels"}),
        version="2",
        array_api=True,
        description="Modality gap: raw (Liang et al.), paired, centroid, and distribution gap "
                    "(Fréchet covariance term, exact OT, sliced W2) on centred clouds "
                    "(decomposition formulas are our reconstruction of TPC-CMA)",
        higher_is="images and texts further apart in the joint space",
        reconstructed=True,  # the centroid/distribution decomposition (gap_raw is Liang et al.'s)
    ))
