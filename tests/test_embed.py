"""The embedding pipeline: batched encoding, the array fast path, the disk cache, the CLI."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advisor import cache, embed as E
from advisor.errors import DatasetError
from advisor.specs import DatasetSpec, ImageSet, ModelSpec


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return E.load_model(ModelSpec("tiny-vit"), "cpu")


def _grey_images(n: int = 12, side: int = 20, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    return ImageSet(images=arr, labels=np.arange(n) % 3, ids=[str(i) for i in range(n)])


def test_encode_images_matches_direct_model_calls(tiny) -> None:  # type: ignore[no-untyped-def]
    images = _grey_images(10)
    out, layers = E.encode_images(tiny, images, batch_size=4, quiet=True, with_layers=True)
    with torch.no_grad():
        px = tiny.preprocess_batch(torch.from_numpy(images.images))
        reference = tiny.encode_image(px).numpy()
    assert out.dtype == np.float32 and out.shape == (10, 32)
    assert np.allclose(out, reference, atol=1e-5)
    assert [a.shape for a in layers] == [(10, 64), (10, 64)]


def test_files_and_arrays_give_nearly_the_same_embeddings(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Image files go through PIL + the model's own transform; arrays through the vectorised
    path. Smooth real content must embed almost identically either way."""
    from PIL import Image
    from skimage import data

    base = data.camera()[::16, ::16]  # 32x32 real photo
    arr = np.stack([np.roll(base, k, axis=1) for k in range(6)])
    paths = []
    for i, a in enumerate(arr):
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    labels = np.arange(6) % 2
    ids = [str(i) for i in range(6)]
    from_arrays = E.encode_images(tiny, ImageSet(arr, labels, ids), quiet=True)
    from_files = E.encode_images(tiny, ImageSet(paths, labels, ids), batch_size=4, quiet=True)
    cos = (from_arrays * from_files).sum(1) / np.linalg.norm(from_arrays, axis=1) / np.linalg.norm(from_files, axis=1)
    assert cos.min() > 0.999


def test_dataloader_workers_give_the_same_result(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    paths = []
    for i, a in enumerate(_grey_images(6).images):
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    images = ImageSet(paths, np.arange(6) % 2, [str(i) for i in range(6)])
    a = E.encode_images(tiny, images, batch_size=4, num_workers=0, quiet=True)
    b = E.encode_images(tiny, images, batch_size=4, num_workers=1, quiet=True)
    assert np.array_equal(a, b)


def test_workers_are_chosen_from_cpu_count_and_decoding_cost(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    rng = np.random.default_rng(0)
    small, large = [], []
    for i in range(64):
        p = tmp_path / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(p)
        small.append(str(p))
    big = tmp_path / "big.png"  # noise does not compress: decoding 1500x1500 takes milliseconds
    Image.fromarray(rng.integers(0, 256, (1500, 1500, 3), dtype=np.uint8)).save(big)
    large = [str(big)] * 64
    labels, ids = np.arange(64) % 2, [str(i) for i in range(64)]
    arrays = ImageSet(rng.integers(0, 256, (64, 8, 8), dtype=np.uint8), labels, ids)
    assert E.choose_num_workers(arrays, tiny.preprocess, cpus=16) == 0  # nothing to decode
    assert E.choose_num_workers(ImageSet(large, labels, ids), tiny.preprocess, cpus=2) == 0  # no core to spare
    assert E.choose_num_workers(ImageSet(small, labels, ids), tiny.preprocess, cpus=16) == 0  # decoding is cheap
    assert E.choose_num_workers(ImageSet(large, labels, ids), tiny.preprocess, cpus=16) == 4
    assert E.choose_num_workers(ImageSet(large, labels, ids), tiny.preprocess, cpus=6) == 3
    assert E.choose_num_workers(ImageSet(large[:10], labels[:10], ids[:10]), tiny.preprocess, cpus=16) == 0


def test_corrupt_image_file_is_reported_by_path(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    images = ImageSet([str(good), str(bad)], np.array([0, 1]), ["good", "broken"])
    for workers in (0, 1):
        with pytest.raises(DatasetError, match="broken.png") as exc:
            E.encode_images(tiny, images, num_workers=workers, quiet=True)
        assert "\n" not in str(exc.value)


def test_class_text_features_single_template_and_ensemble(tiny) -> None:  # type: ignore[no-untyped-def]
    names = ["cat", "dog"]
    single = E.class_text_features(tiny, names, "a photo of a {}.")
    with torch.no_grad():
        ref = tiny.encode_text(tiny.tokenize(["a photo of a cat.", "a photo of a dog."])).numpy()
    assert np.allclose(single, ref, atol=1e-5)
    ens = E.class_text_features(tiny, names, ["a photo of a {}.", "a {}."])
    with torch.no_grad():
        other = tiny.encode_text(tiny.tokenize(["a cat.", "a dog."])).numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    assert np.allclose(ens, (unit(ref) + unit(other)) / 2, atol=1e-5)


def test_cache_hit_returns_identical_arrays_without_loading_the_model(fresh_cache) -> None:  # type: ignore[no-untyped-def]
    kw = dict(split="test", max_images=40, device="cpu", quiet=True, with_layers=True)
    first = E.embed(ModelSpec("tiny-rn"), DatasetSpec("digits"), **kw)
    assert first.meta["cache_hit"] is False and len(list((fresh_cache / "embeddings").glob("*.npz"))) == 1
    loads, batches = E.stats["model_loads"], E.stats["image_batches"]
    second = E.embed(ModelSpec("tiny-rn"), DatasetSpec("digits"), **kw)
    assert (E.stats["model_loads"], E.stats["image_batches"]) == (loads, batches)  # the model never ran
    assert second.meta["cache_hit"] is True
    for a, b in [(first.image, second.image), (first.text, second.text), (first.labels, second.labels)]:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(first.image_layers, second.image_layers))
    assert all(np.array_equal(a, b) for a, b in zip(first.text_layers, second.text_layers))
    assert second.class_names == first.class_names
    assert second.meta["split_hash"] == first.meta["split_hash"] and second.meta["model_desc"] == first.meta["model_desc"]
    # --no-cache recomputes the same numbers
    third = E.embed(ModelSpec("tiny-rn"), DatasetSpec("digits"), use_cache=False, **kw)
    assert third.meta["cache_hit"] is False and np.allclose(third.image, first.image, atol=1e-6)


def test_cache_files_are_plain_numpy(fresh_cache) -> None:  # type: ignore[no-untyped-def]
    emb = E.embed(ModelSpec("tiny-vit"), DatasetSpec("faces"), split="test", device="cpu", quiet=True)
    path = cache.path_for(emb.meta["cache_key"])
    with np.load(path, allow_pickle=False) as z:  # would raise on any pickled object
        assert np.array_equal(z["image"], emb.image)
        assert json.loads(str(z["meta_json"]))["split_hash"] == emb.meta["split_hash"]


def test_cache_key_changes_with_what_changes_the_arrays(fresh_cache) -> None:  # type: ignore[no-untyped-def]
    from advisor.data import get_split, load_dataset

    bundle = load_dataset("digits")
    train, test = get_split(bundle, "train"), get_split(bundle, "test")
    key = lambda spec, images, split="train", layers=False: E.cache_key(  # noqa: E731
        spec, bundle, images, split=split, device="cpu", with_layers=layers)[0]
    base = key(ModelSpec("tiny-vit"), train)
    assert base == key(ModelSpec("tiny-vit"), train)
    others = {
        key(ModelSpec("tiny-vit", image_size=64), train),
        key(ModelSpec("tiny-vit"), test, split="test"),
        key(ModelSpec("tiny-vit"), train.subset(range(100))),
        key(ModelSpec("tiny-vit"), train, layers=True),
        key(ModelSpec("tiny-rn"), train),
        key(ModelSpec("lit-offline"), train),
        key(ModelSpec("lit-offline-mnist"), train),
    }
    assert base not in others and len(others) == 7
    assert E.cache_key(ModelSpec("tiny-vit"), bundle, train, split="train", device="cuda", with_layers=False)[0] != base


def test_embed_meta_and_few_shot(fresh_cache) -> None:  # type: ignore[no-untyped-def]
    emb = E.embed(ModelSpec("tiny-vit"), DatasetSpec("digits"), shots=2, seed=3, device="cpu", quiet=True)
    assert emb.image.shape == (20, 32) and emb.text.shape == (10, 32)
    assert np.bincount(emb.labels).tolist() == [2] * 10
    m = emb.meta
    assert m["shots"] == 2 and m["seed"] == 3 and m["n"] == 20 and m["image_size"] == 32
    assert m["model_identity"].startswith("open_clip|tiny-vit") and m["dataset_desc"]["name"] == "digits"
    assert m["precision"] == "fp32" and m["transform"].startswith("array")
    with pytest.raises(DatasetError):
        E.embed(ModelSpec("tiny-vit"), DatasetSpec("digits"), shots=10_000, device="cpu", quiet=True)


def test_cli_embed_lit_offline_end_to_end(fresh_cache, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from advisor.cli import cli
    from advisor.embeddings_file import read as load_embeddings_npz

    out = tmp_path / "emb.npz"
    runner = CliRunner()
    args = ["embed", "--model", "lit-offline", "--dataset", "mnist-5k", "--split", "test", "--max-images", "40",
            "--layers", "--quiet", "--json", "-o", str(out)]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert (summary["n"], summary["d"], summary["classes"], summary["image_size"]) == (40, 384, 10, 64)
    assert summary["cache_hit"] is False and summary["layers"] == [17, 6]
    emb = load_embeddings_npz(out)  # what `advisor signals --from-embeddings` reads
    assert emb.image.shape == (40, 384) and emb.text.shape == (10, 384) and emb.labels.shape == (40,)
    with np.load(out, allow_pickle=False) as z:
        assert z["image_layer_016"].shape == (40, 1280) and z["text_layer_005"].shape == (10, 384)
    assert emb.text_layer_rows == "prompts" and len(emb.image_layers) == 17  # said, not inferred
    again = json.loads(runner.invoke(cli, args).output)
    assert again["cache_hit"] is True

    listed = runner.invoke(cli, ["cache", "list", "--json"])
    rows = json.loads(listed.output)
    assert [(r["model"], r["dataset"], r["n"]) for r in rows] == [("lit-offline", "mnist-5k", 40)]
    assert runner.invoke(cli, ["cache", "path"]).output.strip() == str(fresh_cache / "embeddings")
    cleared = runner.invoke(cli, ["cache", "clear", "--yes"])
    assert cleared.exit_code == 0 and "Removed 1 file" in cleared.output
    assert json.loads(runner.invoke(cli, ["cache", "list", "--json"]).output) == []


def test_cli_embed_bad_inputs_are_one_line_errors(fresh_cache) -> None:  # type: ignore[no-untyped-def]
    from advisor.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["embed", "--model", "no-such-model", "--dataset", "digits"])
    assert res.exit_code == 1 and res.output.startswith("Error: unknown model 'no-such-model'")
    res = runner.invoke(cli, ["embed", "--model", "ViT-B-32", "--pretrained", "bogus", "--dataset", "digits"])
    assert res.exit_code == 1 and "unknown pretrained tag 'bogus'" in res.output and res.output.count("\n") == 1
    res = runner.invoke(cli, ["embed", "--model", "tiny-vit", "--dataset", "digits", "--shots", "0"])
    assert res.exit_code == 2
