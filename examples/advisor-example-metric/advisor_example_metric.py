"""An example advisor plugin: the class-centroid margin of the image embeddings.

For L2-normalised image embeddings x_i with labels y_i and class centroids c_k (the normalised
mean of class k's embeddings), the margin is

    mean_i [ cos(x_i, c_{y_i}) - max_{k != y_i} cos(x_i, c_k) ]

Positive: images already sit nearer their own class than any other, so a linear head (or a
light adapter) has less to learn; near zero or negative: classes overlap in the frozen space.
It needs only the image tower (``needs={"image", "labels"}``), so it is as cheap as signals get.
"""

from __future__ import annotations

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

__version__ = "0.1.0"


def centroid_margin(emb: Embeddings) -> float:
    x = np.asarray(emb.image, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(emb.labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("centroid_margin needs at least two classes")
    centroids = np.stack([x[labels == k].mean(axis=0) for k in classes])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    sims = x @ centroids.T  # (N, K)
    own_index = np.searchsorted(classes, labels)
    own = sims[np.arange(len(x)), own_index]
    sims[np.arange(len(x)), own_index] = -np.inf
    return float(np.mean(own - sims.max(axis=1)))


@hookimpl
def register_metrics(register):
    register(
        Metric(
            name="centroid_margin",
            compute=centroid_margin,
            needs=frozenset({"image", "labels"}),
            version="1",
            description="Mean margin between an image's own class centroid and the nearest other one (cosine).",
            higher_is="classes already separated in the frozen image space",
        )
    )
