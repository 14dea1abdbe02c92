"""What the user asks for: which model (``ModelSpec``) and which dataset (``DatasetSpec``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load.

    ``name`` is a registered model name (``lit-offline``, ``tiny-vit``), an open_clip
    architecture (``ViT-B-32``), an ``hf-hub:org/repo`` id, or a path to a checkpoint.
    ``pretrained`` is an open_clip pretrained tag or a checkpoint path. ``image_size`` is the
    working resolution (None: the model's own default) and is part of the model's identity,
    because embeddings at 64 px and 224 px differ.
    """

    name: str
    pretrained: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None

    def key(self) -> str:
        return f"{self.name}|{self.pretrained or ''}|{self.image_size or ''}"

    def label(self) -> str:
        """``ViT-B-32/openai@224``: the name with the pretrained tag and size when given."""
        return self.name + (f"/{self.pretrained}" if self.pretrained else "") + (f"@{self.image_size}" if self.image_size else "")

    def cli_args(self) -> list[str]:
        """The ``--model/--pretrained/--image-size`` arguments that name this model."""
        return (["--model", self.name] + (["--pretrained", self.pretrained] if self.pretrained else [])
                + (["--image-size", str(self.image_size)] if self.image_size else []))


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset to load: a registered name (``fashion-mnist``) or ``prefix:argument``
    (``folder:./images``, ``csv:data.csv``), plus free-form options
    (``label_column``, ``classnames_file``, ``max_per_class`` ...)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def prefix(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else self.name

    @property
    def argument(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)
