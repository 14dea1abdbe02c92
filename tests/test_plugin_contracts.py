"""The contracts ``advisor.testing`` offers plugin authors hold for every plugin there is: the
metric contract agrees with the engine's own validation, and every registered tuner (the
example third-party tuner included, registered in-process) passes the tuner contract on the
tiny model, as peft tests every method over its list of cases."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from conftest import REPO

from advisor.plugins import list_tuners
from advisor.signals import metric_outputs
from advisor.specs import Embeddings, Metric, Tuner
from advisor.testing import assert_metric_contract, assert_tuner_contract, registered_plugin

EXAMPLE = REPO / "examples" / "advisor-example-tuner"


def _example_plugin():
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    import advisor_example_tuner

    return advisor_example_tuner


def _tuner_names() -> list[str]:
    with registered_plugin(_example_plugin(), "example_tuner"):
        return [t.name for t in list_tuners()]


TUNERS = _tuner_names()


@pytest.fixture
def with_example_tuner():
    with registered_plugin(_example_plugin(), "example_tuner"):
        yield


@pytest.fixture(scope="module")
def tiny():
    import torch

    from advisor.embed import load_model
    from advisor.specs import ModelSpec

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops on a busy machine: one thread is faster
    yield load_model(ModelSpec("tiny-vit"), "cpu")
    torch.set_num_threads(before)


def test_the_example_tuner_is_among_the_cases():
    assert "clip_adapter" in TUNERS and {"full", "lora", "coop"} <= set(TUNERS)


@pytest.mark.parametrize("name", TUNERS)
def test_every_registered_tuner_meets_the_contract(name, tiny, with_example_tuner):
    tuner = next(t for t in list_tuners() if t.name == name)
    result = assert_tuner_contract(tuner, tiny)
    assert result.trainable_params > 0


def test_the_tuner_contract_refuses_a_tuner_without_a_train_result(tiny):
    broken = Tuner(name="broken", train=lambda ctx: {"losses": [1.0]}, description="returns a dict")
    with pytest.raises(AssertionError, match="TrainResult"):
        assert_tuner_contract(broken, tiny)


def _emb() -> Embeddings:
    rng = np.random.default_rng(0)
    return Embeddings(image=rng.normal(size=(6, 4)).astype(np.float32), text=rng.normal(size=(2, 4)).astype(np.float32),
                      labels=np.array([0, 1] * 3), class_names=["a", "b"])


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.25), 3, 0.5, {"x": np.float32(1.0)}])
def test_metric_contract_accepts_what_the_engine_accepts(value):
    metric = Metric(name="m", compute=lambda emb: value, needs=frozenset({"image"}), version="1")
    assert assert_metric_contract(metric, _emb()) == metric_outputs(metric, value)


@pytest.mark.parametrize("value", [True, np.bool_(False), float("nan"), "0.5", 1j, {}])
def test_metric_contract_refuses_what_the_engine_refuses(value):
    metric = Metric(name="m", compute=lambda emb: value, needs=frozenset({"image"}), version="1")
    with pytest.raises(ValueError):
        metric_outputs(metric, value)
    with pytest.raises(AssertionError):
        assert_metric_contract(metric, _emb())
