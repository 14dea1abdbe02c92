"""Zero-shot accuracy: top-1 of argmax cosine(image, class text) against the labels.

This is the accuracy before any fine-tuning on the embedded split, the baseline every gain is
measured from. Ties (exactly equal cosines) go to the lowest class index, as ``np.argmax``.
"""

from __future__ import annotations

import numpy as np

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import l2_normalize, labels_of

BLOCK = 4096


def zero_shot_accuracy(emb: Embeddings) -> float:
    # Normalising the image rows does not change the argmax; normalising the texts does.
    t = l2_normalize(emb.text).T
    y = labels_of(emb)
    image = emb.image
    correct = 0
    for start in range(0, len(y), BLOCK):  # blocks keep the (N, C) score matrix small
        scores = np.asarray(image[start:start + BLOCK], dtype=np.float64) @ t
        correct += int((scores.argmax(axis=1) == y[start:start + BLOCK]).sum())
    return correct / len(y)


@hookimpl
def register_metrics(register):
    register(Metric(
        name="zero_shot_acc",
        compute=zero_shot_accuracy,
        needs=frozenset({"image", "text", "labels"}),
        version="1",
        description="Top-1 zero-shot accuracy: argmax cosine to the class prompts",
        higher_is="better before fine-tuning",
    ))
