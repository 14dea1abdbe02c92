"""Derived offline tasks (plugins/datasets/derived.py) on their real source data.

References are independent: the source's own test split (looked up by item id), PIL's box
resampling for low resolution, scipy's gaussian_filter for blur, the reserve's item ids.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from advisor.data import dataset_descriptors, load_dataset
from advisor.errors import DatasetError
from advisor.plugins import get_dataset_source
from advisor.specs import DatasetSpec
from advisor_plugins.datasets import derived, offline

HAVE_FASHION = Path(offline.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
# tasks of the built-in sources; those of the asset sources are tested in test_new_sources.py
AVAILABLE = [n for n, t in derived.TASKS.items()
             if t.source in offline.SOURCES and (HAVE_FASHION or t.source != "fashion-mnist")]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))


def _by_id(images):  # type: ignore[no-untyped-def]
    return {i: k for k, i in enumerate(images.ids)}


@pytest.mark.parametrize("name", AVAILABLE)
def test_derived_task_is_registered_disjoint_from_reserve_and_names_its_source(name: str) -> None:
    task = derived.TASKS[name]
    bundle = load_dataset(name)  # through the plugin registry, validated
    assert get_dataset_source(name).name == name
    desc = dataset_descriptors(bundle)
    assert desc["source"] == task.source and desc["name"] == name
    reserve_ids = set(offline.parts(task.source).reserve.ids)
    assert not reserve_ids & set(bundle.train.ids) and not reserve_ids & set(bundle.test.ids)
    assert not set(bundle.train.ids) & set(bundle.test.ids)
    base = load_dataset(task.source)
    # every derived item comes from the same part (train/test) of the source
    assert set(bundle.train.ids) <= set(base.train.ids) and set(bundle.test.ids) <= set(base.test.ids)
    assert bundle.fingerprint != base.fingerprint


def test_every_offline_dataset_records_its_source() -> None:
    for name in [n for n in offline.SOURCES if HAVE_FASHION or n != "fashion-mnist"]:
        assert dataset_descriptors(load_dataset(name))["source"] == name


def test_derived_tasks_are_deterministic_and_ignore_the_run_seed() -> None:
    first = load_dataset("mnist-5k-blur")
    derived.derive.cache_clear()
    offline.parts.cache_clear()
    again = load_dataset("mnist-5k-blur")
    assert first.fingerprint == again.fingerprint
    assert first.train.ids == again.train.ids and first.test.ids == again.test.ids
    assert np.array_equal(first.test.images, again.test.images)
    assert np.array_equal(first.train.images, again.train.images)


def test_class_subset_keeps_only_its_classes_and_reindexes_labels() -> None:
    sub, base = load_dataset("mnist-5to9"), load_dataset("mnist-5k")
    assert sub.class_names == ["5", "6", "7", "8", "9"]
    pos = _by_id(base.test)
    for k, item in enumerate(sub.test.ids):
        j = pos[item]
        assert base.class_names[int(base.test.labels[j])] == sub.class_names[int(sub.test.labels[k])]
        assert np.array_equal(base.test.images[j], sub.test.images[k])  # a subset does not touch pixels
    # every source test item of a kept class is there (mnist-5k's test split is under the cap)
    kept = {i for i, y in zip(base.test.ids, base.test.labels) if int(y) >= 5}
    assert kept == set(sub.test.ids)
    assert sorted(np.unique(sub.train.labels)) == [0, 1, 2, 3, 4]


def test_blur_changes_pixels_and_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    blur, base = load_dataset("mnist-5k-blur"), load_dataset("mnist-5k")
    pos = _by_id(base.test)
    src = np.stack([base.test.images[pos[i]] for i in blur.test.ids[:50]]).astype(np.float64)
    ref = np.clip(np.rint(gaussian_filter(src, sigma=(0, 1.5, 1.5), mode="constant", truncate=4.0)), 0, 255)
    assert np.abs(ref - blur.test.images[:50]).max() <= 1
    assert np.abs(src - blur.test.images[:50]).mean() > 5  # grey levels: the pixels did change


def test_low_contrast_and_noise_change_pixels_as_specified() -> None:
    low, base = load_dataset("digits-lowcontrast"), load_dataset("digits")
    pos = _by_id(base.test)
    src = np.stack([base.test.images[pos[i]] for i in low.test.ids]).astype(np.float64)
    got = low.test.images.astype(np.float64)
    assert np.abs(got - src).mean() > 20
    assert got.std() == pytest.approx(0.3 * src.std(), rel=0.02)
    noisy = derived.gaussian_noise(np.full((200, 28, 28), 128, np.uint8), np.random.default_rng(0), sigma=10.0)
    assert (noisy.astype(float) - 128).std() == pytest.approx(10, rel=0.03)  # far from 0/255: no clipping
    assert abs((noisy.astype(float) - 128).mean()) < 0.2


@pytest.mark.skipif(not HAVE_FASHION, reason="needs apt-get install dataset-fashion-mnist")
def test_noise_task_changes_every_split_but_keeps_labels() -> None:
    noisy, base = load_dataset("fashion-mnist-noise"), load_dataset("fashion-mnist")
    for part, ref in ((noisy.train, base.train), (noisy.test, base.test)):
        pos = _by_id(ref)
        idx = [pos[i] for i in part.ids[:200]]
        diff = part.images[:200].astype(float) - ref.images[idx].astype(float)
        assert np.abs(diff).mean() > 20 and np.array_equal(part.labels[:200], ref.labels[idx])


@pytest.mark.skipif(not HAVE_FASHION, reason="needs apt-get install dataset-fashion-mnist")
def test_low_resolution_is_area_resampling_like_pil_box() -> None:
    from PIL import Image

    low, base = load_dataset("fashion-mnist-lowres"), load_dataset("fashion-mnist")
    assert low.test.images.shape[1:] == (7, 7)
    pos = _by_id(base.test)
    for k, item in enumerate(low.test.ids[:20]):
        ref = np.asarray(Image.fromarray(base.test.images[pos[item]]).resize((7, 7), Image.BOX), dtype=np.int16)
        assert np.abs(ref - low.test.images[k].astype(np.int16)).max() <= 1


def test_fingerprint_changes_with_the_derivation(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    before = load_dataset("mnist-5k-blur").fingerprint
    changed = dataclasses.replace(derived.TASKS["mnist-5k-blur"], params=(("sigma", 0.8),))
    monkeypatch.setitem(derived.TASKS, "mnist-5k-blur", changed)
    derived.derive.cache_clear()
    try:
        after = load_dataset("mnist-5k-blur")
        assert after.fingerprint != before
    finally:
        derived.derive.cache_clear()


def test_unknown_option_is_refused() -> None:
    with pytest.raises(DatasetError, match="no option 'root'"):
        load_dataset(DatasetSpec("mnist-0to4", options=(("root", "/x"),)))
