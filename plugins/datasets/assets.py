"""Offline sources rendered from Debian asset packages: font glyphs, desktop icons, game
sprites and clip art.

The five built-ins are grey photos and scans with 2-10 classes; these add line art, colour and
many classes, still with no network (Debian packages, listed in each source's ``needs``):

| name             | from (Debian)                                  | classes | images          | size          |
|------------------|------------------------------------------------|---------|-----------------|---------------|
| font-letters     | fonts-urw-base35, -dejavu, -liberation, -freefont | 26   | 2 per font      | 64x64 grey    |
| oxygen-icons     | oxygen-icon-theme                              | 6       | 50-200 per class | 64x64 RGB    |
| wesnoth-units    | wesnoth-1.16-data (units/<race>/)              | 17      | 59-120 per class | 72x72 RGB    |
| tuxpaint-clipart | tuxpaint-stamps-default (+ PyPI cairosvg)      | 6       | 51-154 per class | 96x96 RGB    |

Each source lists its files in a fixed order, renders them at one size over white (a cached
``.npz`` after the first load, ``render.py``) and is then split exactly like the built-ins
(``offline.parts``: 20 % reserve per class, the rest 80/20). A class keeps at most a fixed number
of images, taken evenly over its sorted files, so no class dwarfs the others. The sources are not
out-of-domain references of ``advisor run`` (``ood_reference=False``): runs stay comparable with
the history made on the five built-ins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from advisor.atomic import atomic_write
from advisor.errors import DatasetError
from advisor.hookspecs import hookimpl
from advisor.specs import DatasetSource

from . import offline
from .render import Item, cached_render, glyph, image_file


def _evenly(items: list, cap: int) -> list:
    """At most ``cap`` of ``items``, spread evenly over the list (first and last kept)."""
    if len(items) <= cap:
        return items
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, cap).round().astype(int))]


def _raw(tag: str, items: list[Item], render: Callable[[Item], np.ndarray], settings: dict,
         n_classes: int) -> offline.Raw:
    counts = np.bincount([it.label for it in items], minlength=n_classes)
    if len(items) == 0 or (counts == 0).any():
        missing = int(np.argmin(counts))
        raise DatasetError(f"{tag}: no images for class {missing} (is its package installed?)")
    images, labels = cached_render(tag, items, render, settings)
    return offline.Raw.of_arrays(images, labels, [it.id for it in items])


def _files(list_items: Callable[[], list[Item]]) -> Callable[[str | None], list[Path] | None]:
    """A source's ``files(root)`` for ``identity``: the distinct files its listing names."""

    def files(root: str | None) -> list[Path] | None:
        try:
            items = list_items()
        except DatasetError:
            return None
        return list(dict.fromkeys(it.path for it in items)) or None

    return files


def _declare(name: str, class_names: Sequence[str], items: Callable[[], list[Item]],
             render: Callable[[Item], np.ndarray], settings: dict, *,
             order: Callable[[Item], Any] | None = None, **about: str) -> offline.OfflineSource:
    """Declare an asset source and make it known to ``offline``: ``items()`` lists its images
    (a DatasetError when its package is missing), ``render`` draws one, ``settings`` (sizes,
    margins, caps) key its render cache, ``order`` sorts the listing before rendering; ``about``
    holds the rest of its ``OfflineSource`` (template, domain, description, needs, origin).
    Its ``raw()`` is decoded once per process (``raw.cache_clear()`` forgets it)."""

    @functools.lru_cache(maxsize=1)
    def raw() -> offline.Raw:
        listed = items()
        return _raw(name, sorted(listed, key=order) if order else listed, render, settings, len(class_names))

    return offline.add_source(offline.OfflineSource(name=name, class_names=tuple(class_names), raw=raw,
                                                    files=_files(items), **about))


# --------------------------------------------------------------------------------------------
# font-letters: the 26 Latin letters in every installed font of four Debian font packages
# --------------------------------------------------------------------------------------------

FONT_DIRS = ("/usr/share/fonts/opentype/urw-base35", "/usr/share/fonts/truetype/dejavu",
             "/usr/share/fonts/truetype/liberation", "/usr/share/fonts/truetype/freefont")
LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
GLYPH_SIDE, GLYPH_MARGIN, GLYPH_PT = 64, 6, 96


def _has_letters(path: Path) -> bool:
    """Whether the font maps all 52 upper- and lower-case letters (symbol and dingbat fonts do not)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(str(path), lazy=True) as f:
            cmap = f.getBestCmap() or {}
    except Exception:  # fontTools raises many kinds on a file it cannot parse: not a letter font
        return False
    return all(ord(c) in cmap and ord(c.lower()) in cmap for c in LETTERS)


@functools.lru_cache(maxsize=1)
def _font_files() -> tuple[Path, ...]:
    """The letter fonts of ``FONT_DIRS``, sorted. Reading 85 cmaps costs 0.75 s, so the verdicts
    are kept in the advisor cache, keyed by each file's size and modification time."""
    import json

    from advisor.config import cache_dir

    fonts = [p for d in FONT_DIRS if Path(d).is_dir() for p in sorted(Path(d).iterdir())
             if p.suffix.lower() in (".ttf", ".otf") and p.is_file()]
    memo_path = cache_dir() / "datasets" / "font-letters-cmaps.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    verdicts, changed = {}, False
    for p in fonts:
        st = p.stat()
        key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
        if not isinstance(memo.get(key), bool):
            memo[key], changed = _has_letters(p), True
        verdicts[p] = memo[key]
    if changed:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(memo_path, lambda f: f.write(json.dumps(memo, sort_keys=True)), fsync=False)
        except OSError:  # FileWriteError included
            pass  # a read-only cache only costs the next load the cmap reads
    return tuple(p for p in fonts if verdicts[p])


def _font_items() -> list[Item]:
    fonts = _font_files()
    if not fonts:
        raise DatasetError("font-letters: no fonts found; " + FONT_LETTERS.needs)
    return [Item(k, f"{p.parent.name}/{p.stem}/{ch}", p, ch)
            for k, upper in enumerate(LETTERS) for p in fonts for ch in (upper, upper.lower())]


@functools.lru_cache(maxsize=8)
def _font(path: Path) -> object:
    from PIL import ImageFont

    return ImageFont.truetype(str(path), GLYPH_PT)


def _render_glyph(it: Item) -> np.ndarray:
    return glyph(_font(it.path), it.what, GLYPH_SIDE, GLYPH_MARGIN)


FONT_LETTERS = _declare(
    "font-letters", LETTERS, _font_items, _render_glyph, {"side": GLYPH_SIDE, "margin": GLYPH_MARGIN, "pt": GLYPH_PT},
    order=lambda it: (str(it.path), it.label, it.what),  # one font open at a time
    template='the letter "{}" printed in a font.',
    domain=("grayscale", "rendered", "line-art", "letters", "fonts"),
    description="The 26 Latin letters, upper and lower case, in each font of four Debian font packages "
                "(URW base35, DejaVu, Liberation, FreeFont): 64x64 grey, black on white",
    needs="apt-get install fonts-urw-base35 fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf",
    origin="Debian packages fonts-urw-base35, fonts-dejavu, fonts-liberation, fonts-freefont-ttf",
)


# --------------------------------------------------------------------------------------------
# Folder-per-class image sources (icons, sprites, clip art)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderClass:
    """A class of a folder source: its prompt name and the sub-folders (of the source's root)
    whose images belong to it, searched recursively."""

    name: str
    folders: tuple[str, ...]


def _folder_source(name: str, root: Path, classes: Sequence[FolderClass], pick: Callable[[Path, str], list[Path]],
                   side: int, cap: int, margin: int | None = None, **about: str) -> offline.OfflineSource:
    """Declare a folder-per-class source (``_declare``): ``pick(root, folder)`` lists a class
    folder's images in a fixed order; a class keeps at most ``cap`` of them, spread evenly;
    each is fitted into a white ``side`` square (``margin`` pixels inside its edge)."""

    def items() -> list[Item]:
        if not root.is_dir():
            raise DatasetError(f"{name} needs `{about['needs']}` (missing {root})")
        listed: list[Item] = []
        for k, cls in enumerate(classes):
            paths = [p for f in cls.folders for p in pick(root, f)]
            listed += [Item(k, str(p.relative_to(root)), p) for p in _evenly(paths, cap)]
        return listed

    settings = {"side": side, "cap": cap} if margin is None else {"side": side, "margin": margin, "cap": cap}
    return _declare(name, [c.name for c in classes], items, lambda it: image_file(it.path, side, margin or 0),
                    settings, **about)


# ---------------------------------------------------------------- oxygen-icons

OXYGEN_ROOT = Path("/usr/share/icons/oxygen/base")
#: Icon sizes in order of preference: an icon drawn at 64 px is used as is, else the next larger.
OXYGEN_SIZES = ("64x64", "128x128", "256x256", "48x48", "32x32", "22x22", "16x16")
OXYGEN_CLASSES = (
    FolderClass("toolbar action", ("actions",)),
    FolderClass("program", ("apps",)),
    FolderClass("hardware device", ("devices",)),
    FolderClass("file type", ("mimetypes",)),
    FolderClass("folder", ("places",)),
    FolderClass("status", ("status",)),
)
ICON_SIDE, ICON_CAP = 64, 200


def _oxygen_pick(root: Path, folder: str) -> list[Path]:
    """One file per icon name (symlinked aliases skipped), at the preferred size, sorted by name."""
    best: dict[str, Path] = {}
    for size in OXYGEN_SIZES:
        d = root / size / folder
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.suffix == ".png" and not p.is_symlink():
                    best.setdefault(p.name, p)
    return [best[n] for n in sorted(best)]


OXYGEN_ICONS = _folder_source(
    "oxygen-icons", OXYGEN_ROOT, OXYGEN_CLASSES, _oxygen_pick, ICON_SIDE, ICON_CAP,
    template="a {} icon from a desktop icon theme.",
    domain=("colour", "icons", "rendered"),
    description="KDE Oxygen desktop icons by category (actions, apps, devices, mimetypes, places, status), "
                "at most 200 per class, 64x64 colour over white (Debian oxygen-icon-theme)",
    needs="apt-get install oxygen-icon-theme",
    origin="Debian package oxygen-icon-theme",
)


# ---------------------------------------------------------------- wesnoth-units

WESNOTH_ROOT = Path("/usr/share/games/wesnoth/1.16/data/core/images/units")
WESNOTH_CLASSES = (
    FolderClass("drake", ("drakes",)),
    FolderClass("dwarf", ("dwarves",)),
    FolderClass("elf", ("elves-wood",)),
    FolderClass("goblin", ("goblins",)),
    FolderClass("human soldier", ("human-loyalists",)),
    FolderClass("mage", ("human-magi",)),
    FolderClass("outlaw", ("human-outlaws",)),
    FolderClass("peasant", ("human-peasants",)),
    FolderClass("merfolk", ("merfolk",)),
    FolderClass("naga", ("nagas",)),
    FolderClass("orc", ("orcs",)),
    FolderClass("lizardman", ("saurians",)),
    FolderClass("troll", ("trolls",)),
    FolderClass("necromancer", ("undead-necromancers",)),
    FolderClass("skeleton", ("undead-skeletal",)),
    FolderClass("zombie", ("undead",)),
    FolderClass("tree creature", ("woses",)),
)
SPRITE_SIDE, SPRITE_CAP = 72, 120


def _png_tree(root: Path, folder: str) -> list[Path]:
    d = root / folder
    return sorted((p for p in d.rglob("*.png") if p.is_file()), key=lambda p: str(p.relative_to(d))) if d.is_dir() else []


WESNOTH_UNITS = _folder_source(
    "wesnoth-units", WESNOTH_ROOT, WESNOTH_CLASSES, _png_tree, SPRITE_SIDE, SPRITE_CAP,
    template="a fantasy game sprite of a {}.",
    domain=("colour", "game-sprites", "rendered", "fantasy"),
    description="Battle for Wesnoth unit sprites and animation frames by race (17 classes), at most 120 per "
                "class, 72x72 colour over white (Debian wesnoth-1.16-data)",
    needs="apt-get install wesnoth-1.16-data",
    origin="Debian package wesnoth-1.16-data",
)


# ---------------------------------------------------------------- tuxpaint-clipart

TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_CLASSES = (
    FolderClass("animal", ("animals",)),
    FolderClass("food", ("food",)),
    FolderClass("household object", ("household",)),
    FolderClass("vehicle", ("vehicles", "military/vehicles")),
    FolderClass("building", ("town/houses", "town/monuments", "town/cartoon")),
    FolderClass("holiday decoration", ("seasonal",)),
)
CLIPART_SIDE, CLIPART_MARGIN, CLIPART_CAP = 96, 4, 200


def _stamp_tree(root: Path, folder: str) -> list[Path]:
    """One file per stamp: its PNG, or its SVG when it has no PNG (Tux Paint ships many stamps
    in both); mirrored copies (``*_mirror``) skipped."""
    d = root / folder
    if not d.is_dir():
        return []
    stamps: dict[tuple[str, str], Path] = {}
    for p in sorted(d.rglob("*")):
        if p.suffix.lower() in (".png", ".svg") and p.is_file() and not p.stem.endswith("_mirror"):
            key = (str(p.parent.relative_to(d)), p.stem)
            if key not in stamps or p.suffix.lower() == ".png":
                stamps[key] = p
    return [stamps[k] for k in sorted(stamps)]


TUXPAINT_CLIPART = _folder_source(
    "tuxpaint-clipart", TUXPAINT_ROOT, TUXPAINT_CLASSES, _stamp_tree, CLIPART_SIDE, CLIPART_CAP, CLIPART_MARGIN,
    template="a clip art drawing of a {}.",
    domain=("colour", "clip-art", "rendered", "objects"),
    description="Tux Paint stamps (clip art of real-world things) in 6 categories, 96x96 colour over white "
                "(Debian tuxpaint-stamps-default; SVG-only stamps need PyPI cairosvg)",
    needs="apt-get install tuxpaint-stamps-default && pip install cairosvg",
    origin="Debian package tuxpaint-stamps-default",
)

SOURCES: tuple[offline.OfflineSource, ...] = (FONT_LETTERS, OXYGEN_ICONS, WESNOTH_UNITS, TUXPAINT_CLIPART)


@hookimpl
def register_datasets(register: Callable[[DatasetSource], None]) -> None:
    for src in SOURCES:
        register(offline.dataset_source(src))
