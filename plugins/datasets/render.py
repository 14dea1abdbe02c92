"""Rasterising packaged assets (PNG, SVG, font glyphs) into fixed-size uint8 arrays, cached.

Asset sources (``assets.py``) hold hundreds to thousands of small files in many sizes and
formats; a model wants one array of one size. Decoding them costs seconds, so the arrays are
kept as ``.npz`` in the advisor cache, keyed by the files' paths, sizes and modification times,
the render version and Pillow's version (a new resampler may change pixels): a second load
reads one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from advisor.atomic import npz_cached
from advisor.errors import DatasetError
from advisor.specs import stable_hash

#: Bump when a renderer changes its pixels: part of every cache key.
RENDER_VERSION = "1"


@dataclass(frozen=True)
class Item:
    """One image to render: its class, stable id, the file it comes from, and what to draw
    from that file ("" for the whole image; a character for a font)."""

    label: int
    id: str
    path: Path
    what: str = ""


def _white_rgb(im: "object") -> "object":
    """An image as RGB over a white background (icons and sprites are mostly transparent)."""
    from PIL import Image

    rgba = im.convert("RGBA")  # type: ignore[attr-defined]
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def fit(im: "object", side: int, margin: int = 0) -> np.ndarray:
    """An RGB(A) PIL image scaled (aspect kept, Lanczos) into a white ``side`` square: (side, side, 3) uint8."""
    from PIL import Image

    rgb = _white_rgb(im)
    box = side - 2 * margin
    w, h = rgb.size  # type: ignore[attr-defined]
    scale = box / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        rgb = rgb.resize((nw, nh), Image.Resampling.LANCZOS)  # type: ignore[attr-defined]
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(rgb, ((side - nw) // 2, (side - nh) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def image_file(path: Path, side: int, margin: int = 0) -> np.ndarray:
    """A PNG (or any Pillow format) or an SVG, fitted into a white ``side`` square."""
    from PIL import Image

    try:
        if path.suffix.lower() == ".svg":
            import io

            try:
                import cairosvg
            except ImportError:
                raise DatasetError(f"{path} is an SVG: rendering it needs `pip install cairosvg`") from None
            # unsafe: many packaged SVGs (Illustrator exports) declare XML entities, which
            # cairosvg refuses otherwise; these are files of an installed package, not uploads.
            png = cairosvg.svg2png(url=str(path), output_width=4 * side, unsafe=True)
            with Image.open(io.BytesIO(png)) as im:
                return fit(im, side, margin)
        with Image.open(path) as im:
            return fit(im, side, margin)
    except DatasetError:
        raise
    except Exception as exc:  # PIL and cairosvg raise many kinds; name the file
        raise DatasetError(f"cannot render {path}: {exc}") from None


def glyph(font: "object", char: str, side: int, margin: int) -> np.ndarray:
    """One character of a loaded FreeType font, black on white, its ink box scaled into the
    square's centre: (side, side) uint8 grey."""
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = font.getbbox(char)  # type: ignore[attr-defined]
    if x1 <= x0 or y1 <= y0:
        raise DatasetError(f"font {getattr(font, 'path', font)} draws nothing for {char!r}")
    ink = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(ink).text((2 - x0, 2 - y0), char, fill=255, font=font)
    bbox = ink.getbbox() or (0, 0, ink.width, ink.height)
    ink = ink.crop(bbox)
    box = side - 2 * margin
    scale = box / max(ink.width, ink.height)
    nw, nh = max(1, round(ink.width * scale)), max(1, round(ink.height * scale))
    ink = ink.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(ink, ((side - nw) // 2, (side - nh) // 2))
    return 255 - np.asarray(canvas, dtype=np.uint8)


def cached_render(tag: str, items: Sequence[Item], render: Callable[[Item], np.ndarray],
                  settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of ``items``, rendered once and then read from the advisor cache.

    The key covers every item (id, label, file path, size, mtime), ``settings`` (sizes,
    margins), ``RENDER_VERSION`` and Pillow's version.
    """
    import PIL

    from advisor.config import cache_dir

    stats = {}
    for it in items:
        if it.path not in stats:
            try:
                st = it.path.stat()
            except OSError as exc:
                raise DatasetError(f"{tag}: cannot read {it.path}: {exc}") from None
            stats[it.path] = [st.st_size, st.st_mtime_ns]
    key = stable_hash({"version": RENDER_VERSION, "pillow": PIL.__version__, "settings": settings,
                       "items": [[it.id, it.label, str(it.path), it.what, *stats[it.path]] for it in items]}, n=24)

    def build() -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([render(it) for it in items]) if items else np.zeros((0, 1, 1), dtype=np.uint8)
        return images, np.asarray([it.label for it in items], dtype=np.int64)

    images, labels = npz_cached(cache_dir() / "datasets" / f"{tag}-{key}.npz", ("images", "labels"), build)
    return images, labels
