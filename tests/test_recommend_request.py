"""``RecommendRequest``: what ``advisor recommend`` is asked, checked once when it is built;
``advisor.recommend`` shows its real parameters."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import advisor
from advisor.decision import OBJECTIVES
from advisor.errors import RecommendError
from advisor.specs import DatasetSpec, ModelSpec, RecommendRequest


def test_build_turns_names_into_specs_and_the_request_is_frozen():
    req = RecommendRequest.build("tiny-vit", "digits", objective="gain", device="cuda:1")
    assert req.model == ModelSpec("tiny-vit") and req.dataset == DatasetSpec("digits")
    assert req.device == "cuda:1" and req.device_kind == "cuda"
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.shots = 4  # type: ignore[misc]


@pytest.mark.parametrize("device", [None, "", "auto", " auto "])
def test_auto_device_means_none(device):
    req = RecommendRequest.build("tiny-vit", "digits", device=device)
    assert req.device is None and req.device_kind is None


@pytest.mark.parametrize("terms, message", [
    ({"objective": "fastest"}, "unknown objective 'fastest'"),
    ({"max_forgetting": -1.0}, "--max-forgetting must be a finite number >= 0"),
    ({"max_forgetting": float("nan")}, "--max-forgetting"),
    ({"budget": 0.0}, "--budget must be a positive number of seconds"),
    ({"budget": float("inf")}, "--budget"),
    ({"shots": 0}, "--shots must be at least 1"),
    ({"device": "tpu"}, "--device 'tpu' is not a device"),
    ({"device": "cuda:x"}, "--device 'cuda:x' is not a device"),
])
def test_bad_terms_are_one_line_errors_when_the_request_is_built(terms, message):
    with pytest.raises(RecommendError, match=message.replace("(", r"\(").replace("+", r"\+")) as info:
        RecommendRequest.build("tiny-vit", "digits", **terms)
    assert "\n" not in str(info.value)


def test_every_objective_is_accepted_and_the_cli_offers_the_same():
    from advisor.cli.recommend import recommend_command

    for objective in OBJECTIVES:
        assert RecommendRequest.build("tiny-vit", "digits", objective=objective).objective == objective
    choice = next(p for p in recommend_command.params if p.name == "objective").type
    assert tuple(choice.choices) == OBJECTIVES


def test_public_recommend_shows_its_parameters_and_takes_no_seed():
    params = inspect.signature(advisor.recommend).parameters
    assert {"model_spec", "dataset_spec", "db", "objective", "max_forgetting", "budget", "shots", "device",
            "embeddings", "allow_random_weights"} <= set(params)
    assert "seed" not in params
    assert set(RecommendRequest.__dataclass_fields__) - {"model", "dataset"} <= set(params)
