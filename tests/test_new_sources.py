"""The asset sources (font glyphs, icons, sprites, clip art; ``advisor_plugins.datasets.assets``),
their derived tasks, and that adding them left the five built-ins bit-identical.

Real files from the installed Debian packages; a source whose package is missing is skipped
with the install line as the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from advisor import plugins
from advisor.data import class_counts, dataset_descriptors, get_split, load_dataset
from advisor.specs import DatasetSpec
from advisor_plugins.datasets import assets, derived, offline

#: (name, classes, fewest images per class, image shape after N)
EXPECTED = {
    "font-letters": (26, 100, (64, 64)),
    "oxygen-icons": (6, 50, (64, 64, 3)),
    "wesnoth-units": (17, 59, (72, 72, 3)),
    "tuxpaint-clipart": (6, 50, (96, 96, 3)),
}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    # one cache for the whole module (rendering is cached there), away from the user's
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path_factory.getbasetemp() / "new-sources-home"))
    monkeypatch.setenv("ADVISOR_BLOCK_PLUGINS", "1")


def _installed(name: str) -> bool:
    src = offline.source(name)
    return bool(src.files and src.files(None))


def _sources():
    return [pytest.param(n, marks=pytest.mark.skipif(not _installed(n), reason=offline.source(n).needs))
            for n in EXPECTED]


def _tasks():
    return [pytest.param(t.name, marks=pytest.mark.skipif(not _installed(t.source), reason=offline.source(t.source).needs))
            for t in derived.TASKS.values() if t.source in EXPECTED]


@pytest.mark.parametrize("name", _sources())
def test_asset_source_has_its_classes_shapes_and_disjoint_fixed_parts(name):
    n_classes, fewest, shape = EXPECTED[name]
    bundle = load_dataset(name)
    raw = offline.source(name).raw()
    assert len(bundle.class_names) == n_classes and len(set(bundle.class_names)) == n_classes
    assert bundle.templates[0].count("{}") == 1
    full = class_counts(raw.train, n_classes)
    assert full.min() >= fewest
    imgs = raw.train.images
    assert isinstance(imgs, np.ndarray) and imgs.dtype == np.uint8 and imgs.shape[1:] == shape
    # reserve 20 % per class, the rest 80/20, disjoint by ids and covering the source
    res, class_names, template = offline.reserve(name)
    train, test = get_split(bundle, "train"), get_split(bundle, "test")
    r, a, b = set(res.ids), set(train.ids), set(test.ids)
    assert not (r & a) and not (r & b) and not (a & b)
    assert r | a | b == set(raw.train.ids) and len(r | a | b) == len(raw.train.ids)
    expected = [max(1, round(0.2 * c)) for c in full]
    assert class_counts(res, n_classes).tolist() == expected
    # enough for 16-shot runs plus a test split in every class
    assert (full - np.array(expected)).min() >= 40
    assert class_counts(train, n_classes).min() >= 16 and class_counts(test, n_classes).min() >= 1
    # descriptors: colour sources say so; not an out-of-domain reference of `advisor run`
    desc = dataset_descriptors(bundle)
    assert desc["is_grayscale"] == (len(shape) == 2) and desc["source"] == name
    assert name not in [d.name for d in plugins.list_datasets(ood_reference=True)]
    assert plugins.get_dataset_source(name).offline and offline.identity(name, DatasetSpec(name=name))


@pytest.mark.parametrize("name", _sources())
def test_asset_source_parts_are_deterministic_across_a_fresh_render(name):
    first = load_dataset(name)
    ids = (first.train.split_hash(), first.test.split_hash(), offline.reserve(name)[0].split_hash())
    offline.parts.cache_clear()
    offline.source(name).raw.cache_clear()  # type: ignore[attr-defined]
    again = load_dataset(name)  # now read from the render cache
    assert (again.train.split_hash(), again.test.split_hash(), offline.reserve(name)[0].split_hash()) == ids
    assert again.fingerprint == first.fingerprint
    assert np.array_equal(again.train.images, first.train.images)


@pytest.mark.parametrize("name", _tasks())
def test_asset_derived_task_comes_from_its_source_splits(name):
    task = derived.TASKS[name]
    bundle = load_dataset(name)
    base = load_dataset(task.source)
    assert bundle.source == task.source and bundle.fingerprint != base.fingerprint
    assert set(bundle.train.ids) <= set(base.train.ids) and set(bundle.test.ids) <= set(base.test.ids)
    assert not set(offline.parts(task.source).reserve.ids) & (set(bundle.train.ids) | set(bundle.test.ids))
    if task.keep:
        assert bundle.class_names == list(task.keep)
        assert sorted(np.unique(bundle.train.labels).tolist()) == list(range(len(task.keep)))
    else:
        assert bundle.class_names == base.class_names
        assert bundle.train.images.dtype == np.uint8 and bundle.train.images.ndim == base.train.images.ndim
        assert not np.array_equal(bundle.train.images, base.train.subset(
            [base.train.ids.index(i) for i in bundle.train.ids]).images)  # the corruption changed pixels


def test_colour_corruptions_keep_shape_and_leave_grey_alone():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    gray = derived.grayscale(rgb, rng)
    assert gray.shape == rgb.shape and (gray[..., 0] == gray[..., 2]).all()
    red = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    red[..., 0] = 200
    cyanish = derived.hue_shift(red, rng, 180.0)[0, 0, 0]
    assert cyanish[0] < cyanish[1] and cyanish[0] < cyanish[2]  # red turns towards cyan
    assert np.array_equal(derived.hue_shift(rgb, rng, 0.0), rgb)
    grey = rng.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    assert np.array_equal(derived.grayscale(grey, rng), grey) and np.array_equal(derived.hue_shift(grey, rng, 90.0), grey)
    # blur and downsampling act per channel on colour, and equal the grey path on each channel
    assert np.array_equal(derived.gaussian_blur(rgb, rng, 1.0)[..., 1], derived.gaussian_blur(rgb[..., 1], rng, 1.0))
    assert derived.low_resolution(rgb, rng, 4.0).shape == (3, 4, 4, 3)


#: Fingerprints and split hashes of the five built-ins and their eight derived tasks, computed
#: with `advisor_plugins.datasets.offline.load` / `derived.load` (fingerprint, then the
#: `split_hash()` of reserve (built-ins only), train and test) on the code *before* the asset
#: sources were added: the shipped history depends on them, so they must never change.
OLD_FINGERPRINTS = {
    "fashion-mnist": ("eae036f2f50f9380", "9e85be141df20aa6", "ca8bc2f90c3f3e6e", "fee4df885088f91f"),
    "mnist-5k": ("be66194f91645bbf", "96ce754e5a32c439", "06b4794842fc130e", "a5bf0ae13dcd0498"),
    "digits": ("3feb20b92d3011fc", "8273b4a7a1805e9f", "4f72fb798f5ded3c", "dec83b3660061353"),
    "textile": ("b9477bef309ee0e4", "824962f04b95d9e2", "c1b7697b1193893e", "04d7e4e8df44f99c"),
    "faces": ("68eae93508fed2e4", "8bd109d955cddc27", "faa343cc30c43136", "e6337fd484848bdb"),
    "fashion-tops": ("1e4e445503224acf", "ce54210a6dce5e12", "5db2c9019e6fbd73"),
    "fashion-footwear": ("e7792fc9c964535f", "21184101817486be", "17ad970d6f018e3d"),
    "mnist-0to4": ("b3dde32ff2f15c85", "ad050f5e01a05a9d", "6333fe7c48b1ac3d"),
    "mnist-5to9": ("0e8b674d431cdbf7", "c1296046f90e445b", "5805ccbaf3b5415c"),
    "fashion-mnist-noise": ("edf2dd6ff339efae", "f72275c3c0d3d141", "a7d5e803f5753cab"),
    "fashion-mnist-lowres": ("73e112ff1475d715", "efeddd65eccee617", "a7d5e803f5753cab"),
    "mnist-5k-blur": ("e1f093f26365d592", "06b4794842fc130e", "a5bf0ae13dcd0498"),
    "digits-lowcontrast": ("056d39d61738f491", "4f72fb798f5ded3c", "dec83b3660061353"),
}
#: sha256(train pixels + test pixels)[:16] of the derived tasks, computed the same way (before).
OLD_PIXELS = {
    "mnist-0to4": "e7a3a996beef2280", "mnist-5to9": "99e20c80ab4b8707", "mnist-5k-blur": "c6aadd81de19dac8",
    "digits-lowcontrast": "7eaba85e90e35093", "fashion-tops": "da213386963035f8",
    "fashion-footwear": "f7e8029743a5f988", "fashion-mnist-noise": "c7fa71c5f51bb737",
    "fashion-mnist-lowres": "abcc3e31514773a7",
}
HAVE_FASHION = all(p.is_file() for p in offline._files_fashion(None) or [])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skipif(
    "fashion" in n and not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist")) for n in OLD_FINGERPRINTS])
def test_old_sources_and_tasks_keep_their_fingerprints_and_pixels(name):
    import hashlib

    spec = DatasetSpec(name=name)
    if name in offline.SOURCES:
        b = offline.load(name, spec)
        got = (b.fingerprint, offline.parts(name).reserve.split_hash(), b.train.split_hash(), b.test.split_hash())
        assert offline.SOURCES[name].ood_reference
    else:
        b = derived.load(name, spec)
        got = (b.fingerprint, b.train.split_hash(), b.test.split_hash())
        px = hashlib.sha256(b.train.images.tobytes() + b.test.images.tobytes()).hexdigest()[:16]
        assert px == OLD_PIXELS[name]
    assert got == OLD_FINGERPRINTS[name]


def test_the_ood_references_are_still_the_five_built_ins():
    assert sorted(d.name for d in plugins.list_datasets(ood_reference=True)) == sorted(offline.SOURCES)
    assert {s.name for s in assets.SOURCES} <= {d.name for d in plugins.list_datasets(offline=True)}
