"""Zero-shot accuracy: top-1 of argmax cosine(image, class text) against the labels.

This is the accuracy before any fine-tuning on the embedded split, the baseline every gain is
measured from. Ties (exactly equal cosines) go to the lowest class index, as ``np.argmax`` (and
``torch.argmax``: torch tensors are scored in torch on their device).
"""

from __future__ import annotations

from advisor.hookspecs import hookimpl
from advisor.specs import Embeddings, Metric

from ._linalg import float64, l2_normalize, labels_of, namespace

BLOCK = 4096


def zero_shot_accuracy(emb: Embeddings) -> float:
    # Normalising the image rows does not change the argmax; normalising the texts does.
    t = l2_normalize(emb.text).T
    y = labels_of(emb)
    xp = namespace(t)
    image = emb.image
    n = y.shape[0]
    correct = 0
    for start in range(0, n, BLOCK):  # blocks keep the (N, C) score matrix small
        scores = float64(image[start:start + BLOCK]) @ t
        correct += int(xp.sum(xp.astype(xp.argmax(scores, axis=1) == y[start:start + BLOCK], xp.int64)))
    return correct / n


@hookimpl
def register_metrics(register):
    register(Metric(
        name="zero_shot_acc",
        compute=zero_shot_accuracy,
        needs=frozenset({"image", "text", "labels"}),
        version="1",
        array_api=True,
        description="Top-1 zero-shot accuracy: argmax cosine to the class prompts",
        higher_is="better before fine-tuning",
    ))
