"""Issue 16, data items: 16-bit PNGs, Unicode class names, one-class datasets, dataset options
that collide with named arguments, and CSV labels that look like digits but are not integers.

Every test here failed before its fix; the images are real files written to ``tmp_path``.
"""

from __future__ import annotations

import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advisor.data import dataset_spec, load_dataset, parse_options, validate_bundle
from advisor.errors import DatasetError
from advisor.specs import DatasetBundle, DatasetSpec, ImageSet

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_BLOCK_PLUGINS", "1")


def _png8(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(path)
    return path


def _png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one), so the decoder under
    test is not also the encoder."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------ 16-bit PNGs


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65536, (9, 7)).astype(np.uint16)
    arr[0, :3] = [0, 32768, 65535]
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    got = np.asarray(ImageSet([str(path)], np.zeros(1, np.int64), ["g16"]).pil(0))
    expected = np.floor(arr.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)
    assert got.shape == (9, 7, 3)
    for c in range(3):
        assert np.array_equal(got[..., c], expected)
    assert got[0, :3, 0].tolist() == [0, 128, 255]


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    arr = np.random.default_rng(2).integers(0, 65536, (5, 4, 3)).astype(np.uint16)
    path = _png16_rgb(tmp_path / "c16.png", arr)
    got = np.asarray(ImageSet([str(path)], np.zeros(1, np.int64), ["c16"]).pil(0)).astype(np.int64)
    expected = arr.astype(np.float64) * 255.0 / 65535.0
    assert got.shape == (5, 4, 3) and np.abs(got - expected).max() <= 1.0


def test_16_bit_pngs_in_a_folder_dataset_load_as_their_values(tmp_path):
    root = tmp_path / "wide"
    for c, level in (("dark", 4096), ("light", 61440)):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), level + i, np.uint16)).save(root / c / f"{i}.png")
    b = load_dataset(f"folder:{root}")
    means = {b.class_names[int(y)]: float(np.asarray(b.train.pil(i)).mean()) for i, y in enumerate(b.train.labels)}
    assert 10 < means["dark"] < 25 and 230 < means["light"] < 245


# ------------------------------------------------------------------------------ Unicode names


def test_class_names_are_nfc_and_nfc_nfd_twins_are_refused(tmp_path):
    root = tmp_path / "cafe"
    _png8(root / "a" / "1.png", 1)
    _png8(root / "b" / "1.png", 2)
    names = tmp_path / "names.json"
    names.write_text(f'["{CAFE_NFC}", "{CAFE_NFD}"]', encoding="utf-8")
    with pytest.raises(DatasetError, match="duplicate class names") as err:
        load_dataset(DatasetSpec(f"folder:{root}", options=(("classnames", str(names)),)))
    assert "\n" not in str(err.value)
    names.write_text(f'["{CAFE_NFD}", "tea"]', encoding="utf-8")
    b = load_dataset(DatasetSpec(f"folder:{root}", options=(("classnames", str(names)),)))
    assert b.class_names == [CAFE_NFC, "tea"]


def test_folder_names_differing_only_in_normalisation_are_refused(tmp_path):
    root = tmp_path / "twins"
    _png8(root / CAFE_NFC / "1.png", 1)
    _png8(root / CAFE_NFD / "1.png", 2)
    if len([p for p in root.iterdir()]) < 2:
        pytest.skip("this file system normalises file names")
    with pytest.raises(DatasetError, match="duplicate class names"):
        load_dataset(f"folder:{root}")


def test_nfd_folder_names_match_an_nfc_classnames_list(tmp_path):
    root = tmp_path / "mac"
    _png8(root / CAFE_NFD / "1.png", 1)
    _png8(root / "tea" / "1.png", 2)
    names = tmp_path / "names.json"
    names.write_text(f'["tea", "{CAFE_NFC}"]', encoding="utf-8")
    b = load_dataset(DatasetSpec(f"folder:{root}", options=(("classnames", str(names)),)))
    assert b.class_names == ["tea", CAFE_NFC]
    assert {b.class_names[int(y)] for y in b.train.labels} == {"tea", CAFE_NFC}


def test_validate_bundle_compares_names_after_normalisation():
    s = ImageSet(np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), ["x", "y"])
    with pytest.raises(DatasetError, match="duplicate class names"):
        validate_bundle(DatasetBundle("toy", [CAFE_NFC, CAFE_NFD], ["{}"], s, None, "fp"))


def test_csv_labels_in_both_normal_forms_are_one_class(tmp_path):
    for i in range(4):
        _png8(tmp_path / f"{i}.png", i)
    rows = [f"{i}.png,{lab}" for i, lab in enumerate([CAFE_NFC, CAFE_NFD, "tea", "tea"])]
    (tmp_path / "t.csv").write_text("image,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    b = load_dataset(f"csv:{tmp_path / 't.csv'}")
    assert b.class_names == [CAFE_NFC, "tea"] and b.train.labels.tolist() == [0, 0, 1, 1]


# ------------------------------------------------------------------------------ one class


def test_a_one_class_dataset_is_refused_when_loaded(tmp_path):
    root = tmp_path / "one"
    for i in range(3):
        _png8(root / "only" / f"{i}.png", i)
    with pytest.raises(DatasetError, match="only one class") as err:
        load_dataset(f"folder:{root}")
    assert "'only'" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ options


def test_options_named_like_arguments_reach_the_dataset(tmp_path):
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        for i in range(2):
            _png8(root / c / f"{i}.png", i)
    names = tmp_path / "n.json"
    names.write_text('["kitty", "puppy"]')
    opts = parse_options(["name=my pets", f"classnames={names}", "templates=a picture of a {}.", "download=true"])
    spec = dataset_spec(f"folder:{root}", options=opts)
    assert spec.option("name") == "my pets" and spec.option("download") is True
    b = load_dataset(spec)
    assert b.name == "my pets" and b.class_names == ["kitty", "puppy"] and b.templates == ["a picture of a {}."]


def test_an_option_given_twice_with_different_values_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="classnames"):
        dataset_spec("folder:x", classnames="a.json", options={"classnames": "b.json"})
    assert dataset_spec("folder:x", classnames="a.json", options={"classnames": "a.json"}).option("classnames") == "a.json"


def test_cli_accepts_dataset_options_named_like_arguments(tmp_path, cli):
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        for i in range(3):
            _png8(root / c / f"{i}.png", i)
    out = tmp_path / "e.npz"
    r = cli("embed", "--model", "tiny-vit", "--dataset", f"folder:{root}", "-O", "name=my pets",
            "-O", "templates=a picture of a {}.", "-O", "download=false", "--quiet", "--json", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert '"dataset": "my pets"' in r.output


@pytest.mark.parametrize("label", ["²", "³", "١", "١٢"])
def test_csv_labels_that_are_unicode_digits_are_class_names(tmp_path, label):
    for i in range(4):
        _png8(tmp_path / f"{i}.png", i)
    labels = [label, label, "7", "7"]
    (tmp_path / "t.csv").write_text("image,label\n" + "".join(f"{i}.png,{v}\n" for i, v in enumerate(labels)), encoding="utf-8")
    b = load_dataset(f"csv:{tmp_path / 't.csv'}")
    assert sorted(b.class_names) == sorted([label, "7"])
    assert [b.class_names[int(y)] for y in b.train.labels] == labels


@pytest.mark.parametrize("command", ["signals", "recommend", "run"])
def test_signals_recommend_and_run_refuse_a_one_class_dataset_before_embedding(tmp_path, cli, command, monkeypatch):
    root = tmp_path / "one"
    for i in range(3):
        _png8(root / "only" / f"{i}.png", i)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ADVISOR_CACHE", str(cache))
    db = tmp_path / "h.db"
    if command == "recommend":  # a read-only command: the history must exist (issue 27)
        from advisor.history import open_history

        open_history(str(db)).close()
    args = [command, "--model", "tiny-vit", "--dataset", f"folder:{root}", "--db", str(db)]
    if command == "run":
        args += ["--method", "coop", "--shots", "1"]
    else:
        args += ["--allow-random-weights"]  # tiny-vit is random: refused before the dataset otherwise
    r = cli(*args)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("Error: dataset 'folder:one' has only one class")
    assert not list(cache.rglob("*.npz"))
