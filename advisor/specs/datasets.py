"""Images and labels as dataset plugins hand them over (``ImageSet``, ``DatasetBundle``), and a dataset
plugin's registration (``DatasetSource``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .requests import DatasetSpec


#: PIL modes holding more than 8 bits per pixel; ``convert("RGB")`` clips them instead of scaling.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(im: Any) -> Any:
    """A PIL image as 8-bit RGB, with wide grey modes scaled rather than clipped.

    16-bit images (``I;16*``, and ``I`` whose values fit 16 bits, as 16-bit PNGs open) map
    0..65535 to 0..255; ``F`` images in [0, 1] map to 0..255; other ``I``/``F`` ranges are
    stretched from their minimum to their maximum. Every other mode is PIL's own conversion.
    """
    from PIL import Image

    if im.mode not in WIDE_MODES:
        return im.convert("RGB")
    a = np.asarray(im, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        scaled = a * (255.0 / 65535.0)
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255.0
    else:
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    u8 = np.floor(np.clip(scaled, 0, 255) + 0.5).astype(np.uint8)
    return Image.fromarray(u8).convert("RGB")


@dataclass
class ImageSet:
    """A labelled set of images, in memory or on disk.

    ``images`` is either a uint8 array (N,H,W) / (N,H,W,3) or a list of file paths. ``labels``
    are integers in [0, len(class_names)). ``ids`` identify each item stably (index in the
    source, or relative path) so that splits can be hashed.
    """

    images: np.ndarray | list[str]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            imgs: np.ndarray | list[str] = self.images[idx]
        else:
            imgs = [self.images[i] for i in idx]
        return ImageSet(images=imgs, labels=self.labels[idx], ids=[self.ids[i] for i in idx])

    def pil(self, i: int) -> Any:
        """Item ``i`` as an RGB PIL image. A file that cannot be read raises DatasetError naming it."""
        from PIL import Image

        from ..errors import DatasetError

        if isinstance(self.images, np.ndarray):
            arr = self.images[i]
            return Image.fromarray(arr).convert("RGB")
        path = self.images[i]
        try:
            with Image.open(path) as im:
                return to_rgb(im)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetError(f"cannot read image {path}: {exc}") from None

    def split_hash(self) -> str:
        """A short hash of the item ids and labels: identifies exactly which items were used."""
        h = hashlib.sha256()
        for i, y in zip(self.ids, self.labels.tolist()):
            h.update(f"{i}\t{y}\n".encode())
        return h.hexdigest()[:16]


@dataclass
class DatasetBundle:
    """What a dataset plugin returns: class names, prompt templates, and the source's splits.

    ``test`` is None when the source has no predefined test split (a seeded split is made).
    ``fingerprint`` changes whenever the underlying data changes (file list + sizes, or an
    array hash). ``domain`` tags ("grayscale", "digits", "texture" ...) become dataset
    descriptors for the predictor. ``source`` names the original data a derived task was made
    from ("" means the dataset is its own source), so evaluation can hold out a whole source.
    """

    name: str
    class_names: list[str]
    templates: list[str]
    train: ImageSet
    test: ImageSet | None
    fingerprint: str
    domain: tuple[str, ...] = ()
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class DatasetSource:
    """A dataset plugin's registration.

    ``load(spec)`` returns a DatasetBundle. ``prefix`` sources (``folder``, ``csv``) take an
    argument after the colon. ``offline`` says the data ships with an installed package (or is
    the user's own files): no network is needed. ``origin`` says where the data comes from (a
    package, a paper, "your files"), for ``advisor plugins`` and the docs. ``ood_reference``
    offers a named offline source as a default out-of-domain set of ``advisor run``.
    ``identity(spec)``, when given, is a cheap string that changes whenever ``load(spec)`` would
    return other data or descriptors (the source files' paths, sizes and modification times, a
    layout version, the files the options name), or None when it cannot tell: with it, advisor
    memoises the dataset's descriptors instead of loading the data (``advisor.data.describe_dataset``).
    ``options``: the ``-O KEY=VALUE`` names ``load`` understands; any other key is refused in one
    line (None: not declared, nothing checked). ``check(spec)``, when given, is a cheap test of
    the spec (the path exists) run before any model weights are looked up.
    """

    name: str
    load: Callable[[DatasetSpec], DatasetBundle]
    description: str = ""
    prefix: bool = False
    offline: bool = True
    needs: str = ""  # human hint: what must be installed ("apt-get install dataset-fashion-mnist")
    origin: str = ""
    ood_reference: bool = False
    identity: Callable[[DatasetSpec], str | None] | None = None
    options: tuple[str, ...] | None = None
    check: Callable[[DatasetSpec], None] | None = None
