"""pytest fixtures for plugin authors (loaded through the ``pytest11`` entry point).

A third-party metric, tuner, dataset or model plugin can test itself against the same small,
real pieces the advisor's own suite uses::

    def test_my_metric(advisor_embeddings):
        assert_metric_contract(my_metric, advisor_embeddings)

    def test_my_tuner(advisor_tiny_model):
        assert_tuner_contract(my_tuner, advisor_tiny_model)

Heavy imports happen inside the fixtures, so merely having advisor installed costs pytest
nothing.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import pytest


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str) -> Iterator[Any]:
    """Register an in-process plugin object for the ``with`` block (or a fixture's ``yield``);
    unregister it and forget its load errors after, so no other test sees it."""
    from advisor import plugins

    pm = plugins.load_plugins()
    pm.register(plugin, name=name)
    plugins.reset_cache()
    try:
        yield plugin
    finally:
        pm.unregister(name=name)
        plugins.load_errors.pop(name, None)
        plugins.reset_cache()


@pytest.fixture
def advisor_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A private user directory (history copy, cache, adapters) for one test."""
    home = tmp_path / "advisor-home"
    monkeypatch.setenv("ADVISOR_HOME", str(home))
    monkeypatch.setenv("ADVISOR_CACHE", str(home / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def advisor_history(tmp_path: Any) -> Any:
    """A fresh, migrated SQLite history in a temporary file."""
    from advisor.history import open_history

    return open_history(str(tmp_path / "history.db"))


@pytest.fixture
def advisor_tiny_model() -> Any:
    """A tiny random-init open_clip model (CPU), implementing ``VisionLanguageModel``."""
    from advisor.embed import load_model
    from advisor.specs import ModelSpec

    return load_model(ModelSpec("tiny-vit"), "cpu")


@pytest.fixture
def advisor_embeddings(advisor_home: Any) -> Any:
    """Embeddings of 200 real scikit-learn digits with the tiny model: a small, real input for metrics."""
    from advisor.embed import embed
    from advisor.specs import DatasetSpec, ModelSpec

    return embed(ModelSpec("tiny-vit"), DatasetSpec("digits"), max_images=200, device="cpu", quiet=True)


def assert_metric_contract(metric: Any, embeddings: Any) -> dict[str, float]:
    """Check what the advisor requires of a metric: a name, a version, known needs, and output
    the engine accepts on real embeddings (``advisor.signals.metric_outputs``: finite real
    numbers, numpy and torch scalars included, bools refused). Returns the values."""
    from advisor.signals import metric_outputs

    assert isinstance(metric.name, str) and metric.name, "a metric needs a non-empty name"
    assert isinstance(metric.version, str) and metric.version, "a metric needs a version string"
    assert set(metric.needs) <= {"image", "text", "labels", "layers"}, f"unknown needs {set(metric.needs)}"
    try:
        return metric_outputs(metric, metric.compute(embeddings))
    except ValueError as exc:
        raise AssertionError(f"metric {metric.name!r} {exc}") from None


#: Class names and template of the tuner contract's real images (scikit-learn digits).
_DIGIT_NAMES = ["zero", "one", "two"]
_DIGIT_TEMPLATE = 'a photo of the number "{}".'


def digit_pixels(model: Any, shots: int = 2, classes: int = 3) -> tuple[Any, Any]:
    """``shots`` real scikit-learn digit images of each of the first ``classes`` digits,
    preprocessed for ``model`` (pixels, labels): a small, real training set for tuners."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx = np.concatenate([np.where(d.target == c)[0][:shots] for c in range(classes)])
    return model.preprocess_batch(torch.from_numpy(images[idx])), torch.as_tensor(d.target[idx], dtype=torch.long)


def assert_tuner_contract(tuner: Any, model: Any, *, epochs: int = 1, shots: int = 2) -> Any:
    """Check what the advisor requires of a tuner registration (``advisor.specs.Tuner``): a plain
    name, a description, declared hyper-parameters whose defaults pass the tuner's own
    ``check_hparams``, ``defaults(shots)`` for any shots, and a ``train`` that, on a copy of
    ``model`` and a few real images, returns a ``TrainResult`` whose adapted model encodes images
    and gives text features for class names it never saw. Returns the ``TrainResult``."""
    import copy
    import re

    import torch

    from advisor.specs import TUNER_FAMILIES, Adapted, HParam, TrainContext, TrainResult, Tuner

    assert isinstance(tuner, Tuner), f"register a advisor.specs.Tuner, not a {type(tuner).__name__}"
    assert re.fullmatch(r"[a-z][a-z0-9_\-]*", tuner.name), f"tuner name {tuner.name!r} is not plain lowercase"
    assert isinstance(tuner.description, str) and tuner.description, f"{tuner.name}: a tuner needs a description"
    assert tuner.family in TUNER_FAMILIES or tuner.family == "other", f"{tuner.name}: unknown family {tuner.family!r}"
    assert isinstance(tuner.order, int), f"{tuner.name}: order must be an int"
    assert tuner.colour is None or re.fullmatch(r"#[0-9a-fA-F]{6}", tuner.colour), f"{tuner.name}: colour {tuner.colour!r}"
    assert all(isinstance(h, HParam) for h in tuner.hparams), f"{tuner.name}: hparams must be HParam declarations"
    tuner.check_hparams({k: v for k, v in tuner.declared_defaults().items() if v is not None})
    specs = tuner.hparam_specs()
    for n in (1, shots, 16, None):
        defaults = tuner.defaults(n)
        assert isinstance(defaults, dict), f"{tuner.name}: defaults({n}) must return a dict"
        tuner.check_hparams({k: v for k, v in defaults.items() if k in specs and v is not None})

    pixels, labels = digit_pixels(model, shots, len(_DIGIT_NAMES))
    ctx = TrainContext(model=copy.deepcopy(model), class_names=list(_DIGIT_NAMES), template=_DIGIT_TEMPLATE,
                       train_pixels=pixels, train_labels=labels, device="cpu", seed=0, epochs=epochs,
                       batch_size=len(labels), shots=shots)
    result = tuner.train(ctx)
    assert isinstance(result, TrainResult), f"{tuner.name}: train must return a TrainResult"
    assert isinstance(result.adapted, Adapted), f"{tuner.name}: the adapted model lacks encode_image/class_text_features"
    assert isinstance(result.trainable_params, int) and result.trainable_params > 0, f"{tuner.name}: trainable_params"
    assert result.losses and all(math.isfinite(v) for v in result.losses), f"{tuner.name}: losses must be finite"
    assert isinstance(result.hparams, dict), f"{tuner.name}: the resolved hyper-parameters must be a dict"
    with torch.no_grad():
        image = result.adapted.encode_image(pixels)
        text = result.adapted.class_text_features(["seven", "eight"], _DIGIT_TEMPLATE)
    assert tuple(image.shape)[0] == len(labels) and tuple(text.shape)[0] == 2, f"{tuner.name}: feature shapes"
    assert image.shape[-1] == text.shape[-1], f"{tuner.name}: image and text features differ in width"
    assert torch.isfinite(image).all() and torch.isfinite(text).all(), f"{tuner.name}: non-finite features"
    return result
