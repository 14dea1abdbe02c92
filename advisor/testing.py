"""pytest fixtures for plugin authors (loaded through the ``pytest11`` entry point).

A third-party metric, tuner, dataset or model plugin can test itself against the same small,
real pieces the advisor's own suite uses::

    def test_my_metric(advisor_embeddings):
        assert_metric_contract(my_metric, advisor_embeddings)

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
    """Check what the advisor requires of a metric: a name, a version, known needs, and
    finite float output(s) on real embeddings. Returns the values."""
    assert isinstance(metric.name, str) and metric.name, "a metric needs a non-empty name"
    assert isinstance(metric.version, str) and metric.version, "a metric needs a version string"
    assert set(metric.needs) <= {"image", "text", "labels", "layers"}, f"unknown needs {set(metric.needs)}"
    out = metric.compute(embeddings)
    values = {metric.name: out} if not isinstance(out, dict) else dict(out)
    for name, value in values.items():
        assert isinstance(value, (int, float)) and math.isfinite(float(value)), f"{name} = {value!r} is not a finite float"
    return {k: float(v) for k, v in values.items()}
