"""Whether a model spec means randomly initialised weights, and the refusal that follows.

Signals of a randomly initialised model describe the initialisation, not the model a user has
in mind (a ViT without ``--pretrained``), and the history holds no run that could say what
fine-tuning it would give. ``recommend`` and ``signals`` therefore refuse such a model unless
``--allow-random-weights`` is given; then its descriptors carry ``random_weights: true``, so the
stored signals are marked as those of a random model.

A model plugin tells by its loader's ``fingerprint(spec)`` (cheap: it never builds the model),
which names random initialisations ``random-seed...``; a loaded model says so in
``describe()["random_weights"]``. The caller hands over the model source the spec resolved to
(``advisor.embed.model_source``, once per session): nothing here resolves a name.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ModelLoadError
from .specs import ModelSource, ModelSpec

RANDOM_MARK = "random-seed"


class RandomWeightsError(ModelLoadError):
    """The model would run with random weights and ``--allow-random-weights`` was not given."""


def weights_are_random(spec: ModelSpec, source: ModelSource, model_desc: Mapping[str, Any] | None = None) -> bool:
    """True when the spec loads randomly initialised weights (known descriptors win);
    ``source``: the model source the spec resolved to (``advisor.embed.model_source``)."""
    if model_desc is not None and "random_weights" in model_desc:
        return bool(model_desc["random_weights"])
    fingerprint = getattr(source.load, "fingerprint", None)
    if fingerprint is None:
        return False
    return RANDOM_MARK in str(fingerprint(spec))


def check_weights(spec: ModelSpec, source: ModelSource, allow_random: bool,
                  model_desc: Mapping[str, Any] | None = None) -> bool:
    """Refuse random weights unless allowed (one line, before any model is loaded); returns
    whether the weights are random."""
    random = weights_are_random(spec, source, model_desc)
    if random and not allow_random:
        hint = "" if spec.pretrained else " (no --pretrained given)"
        raise RandomWeightsError(
            f"model {spec.name!r} would run with randomly initialised weights{hint}: its signals would "
            "describe the initialisation, not a trained model; give --pretrained, or --allow-random-weights "
            "to go on anyway (the signals are then stored marked as random)"
        )
    return random


def mark(model_desc: Mapping[str, Any], random: bool) -> dict[str, Any]:
    """The descriptors with ``random_weights`` set when the weights are random."""
    out = dict(model_desc)
    if random:
        out["random_weights"] = True
    return out
