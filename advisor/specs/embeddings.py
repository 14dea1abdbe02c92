"""One forward pass of a (model, dataset split) pair (``Embeddings``), and a metric plugin's
registration (``Metric``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np


@dataclass
class Embeddings:
    """One forward pass of a (model, dataset split) pair.

    ``image`` (N,d) and ``text`` (C,d) are post-projection joint-space embeddings, not
    necessarily normalised (each metric normalises as its method specifies). ``labels`` (N,)
    are ints in [0,C). ``paired_text`` (N,d) is the text embedding of each image's true-class
    prompt when the caller has it (else metrics use ``text[labels]``). ``image_layers`` is a
    list of L arrays (N, w_l) and ``text_layers`` a list of L' arrays (M, w'_l) of pooled
    per-layer states, when the model exposes them.

    ``text_layer_rows`` says what the M rows of ``text_layers`` are, so no metric guesses it from
    their count: ``"prompts"`` (one per (template, class) prompt, templates outer: M = T*C),
    ``"classes"`` (one per class), ``"images"`` (one per image, paired row by row) or
    ``"unpaired"`` (text not paired with the images; the default, as MIR's official code treats
    its text tokens).
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_layers: list[np.ndarray] | None = None
    text_layers: list[np.ndarray] | None = None
    paired_text: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    text_layer_rows: str = "unpaired"

    @property
    def available(self) -> frozenset[str]:
        have = {"image", "text", "labels"}
        if self.image_layers is not None and self.text_layers is not None:
            have.add("layers")
        return frozenset(have)


@dataclass(frozen=True)
class Metric:
    """A metric plugin's registration.

    ``compute(embeddings)`` returns one float, or a mapping of signal name -> float when the
    metric reports several related values (IIMM and its two terms). A single float is stored
    under ``name``. ``needs`` is a subset of {"image", "text", "labels", "layers"}; metrics
    whose needs are not met are skipped. Bump ``version`` when the definition changes: signal
    values are stored with it. ``reconstructed`` marks a metric (or some of its values) that is
    this project's reconstruction of a paper's unpublished formula (``advisor plugins`` says so).
    ``array_api=True`` declares that ``compute`` also accepts Embeddings whose arrays are torch
    tensors (on any device, e.g. CUDA) and computes on them there; a metric without it always
    receives numpy arrays (``advisor.signals`` converts).
    """

    name: str
    compute: Callable[[Embeddings], float | Mapping[str, float]]
    needs: frozenset[str] = frozenset({"image", "text", "labels"})
    version: str = "1"
    description: str = ""
    higher_is: str = ""  # free text: what a higher value means
    reconstructed: bool = False
    array_api: bool = False
