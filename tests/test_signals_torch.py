"""The signals computed in torch (the path taken when the embeddings are on a GPU) against the
numpy path, on CPU tensors; the numpy path itself pinned to the values it had before the torch
path existed; and the choice of device (``advisor.signals.signal_device``).

No GPU here: the CUDA branch is the same code on CUDA tensors, chosen by ``signal_device``, whose
logic is tested with ``torch.cuda.is_available`` patched.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from test_signals import BUILTIN_SIGNALS

import advisor
from advisor import plugins
from advisor.testing import registered_plugin
from advisor.signals import embeddings_on, run_metrics, signal_device
from advisor.specs import Embeddings, Metric


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_BLOCK_PLUGINS", "1")
    monkeypatch.delenv("ADVISOR_DB", raising=False)


def synthetic(n, d, c, seed, layers=False, paired=False, dtype=np.float32):
    """Fixed-seed embeddings with class structure (optionally captions and aligned layers)."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((c, d)) + 0.3
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    image = (0.8 * text[labels] + rng.standard_normal((n, d)) + 0.5) * rng.uniform(0.5, 2.0, (n, 1))
    kw = {}
    if paired:
        kw["paired_text"] = (text[labels] + 0.3 * rng.standard_normal((n, d))).astype(dtype)
    if layers:
        widths = (d // 2, d, d // 2)
        kw["image_layers"] = [(image[:, :w] * (i + 1) + rng.standard_normal((n, w))).astype(dtype)
                              for i, w in enumerate(widths)]
        kw["text_layers"] = [(np.tile(text[:, :w], (2, 1)) + 0.5 * rng.standard_normal((2 * c, w))).astype(dtype)
                             for w in widths]
        kw["text_layer_rows"] = "prompts"
    return Embeddings(image=image.astype(dtype), text=text.astype(dtype), labels=labels,
                      class_names=[f"c{i}" for i in range(c)], **kw)


#: Per-layer MIR with prompt rows; N < d (LogME's and TransRate's other branch); N above the OT
#: (2000) and kNN (1000) sample caps; captions (paired_text).
CASES = {
    "layers": {"n": 600, "d": 32, "c": 6, "seed": 1, "layers": True},
    "few_samples": {"n": 40, "d": 64, "c": 4, "seed": 2},
    "subsampled": {"n": 2500, "d": 16, "c": 5, "seed": 3},
    "captions": {"n": 16, "d": 8, "c": 3, "seed": 4, "paired": True},
}

#: ``run_metrics`` on ``synthetic(**CASES[case])`` (float32) computed by the numpy code of commit
#: a452cae, before the torch path: the history sweep stores these values, so the numpy path must
#: not move.
FROZEN = {
    'layers': {
        'correct_cos': 0.6112391166578081,
        'gap_centroid': 0.2803639391444021,
        'gap_dist_fd': 0.568548229925006,
        'gap_dist_ot': 0.6989178283118178,
        'gap_dist_paired': 0.8283129136423221,
        'gap_dist_sw': 0.004803354840049464,
        'gap_paired': 0.8734382566695251,
        'gap_raw': 0.28590789640441605,
        'gbc': -0.42504114347628397,
        'gbc_log10': -0.37156902872646635,
        'h_score': 3.7463205666218657,
        'iimm': 0.1694861400193336,
        'iimm_inter': 0.07992720475248115,
        'iimm_intra': 0.25904507528618603,
        'knn1_acc': 0.9433333333333334,
        'knn5_acc': 0.975,
        'logme': 0.13916666585137247,
        'mds_cross_frac': 0.625,
        'mds_img_frac': 0.125,
        'mds_mean_dev': 0.05398681124707081,
        'mds_text_frac': 0.25,
        'mir': 1.6724621839814107,
        'mir_final': 0.35105795500547743,
        'transrate': 4.277931351741557,
        'zero_shot_acc': 0.975,
    },
    'few_samples': {
        'correct_cos': 0.6646554351017585,
        'gap_centroid': 0.32231066663366964,
        'gap_dist_fd': 0.543597967797248,
        'gap_dist_ot': 0.5668049639706425,
        'gap_dist_paired': 0.7500983692845994,
        'gap_dist_sw': 0.003363276346071375,
        'gap_paired': 0.8161403094254288,
        'gap_raw': 0.33880939094127865,
        'gbc': -0.0034966624210483843,
        'gbc_log10': -2.4563462938425134,
        'h_score': 2.999999999999998,
        'iimm': 0.22123557098462995,
        'iimm_inter': 0.13595288591556892,
        'iimm_intra': 0.306518256053691,
        'knn1_acc': 1.0,
        'knn5_acc': 1.0,
        'logme': 0.04770285604713856,
        'mds_cross_frac': 0.734375,
        'mds_img_frac': 0.125,
        'mds_mean_dev': 0.06972441410864283,
        'mds_text_frac': 0.140625,
        'mir': 0.2300220924107311,
        'mir_final': 0.2300220924107311,
        'transrate': 57.63848609454105,
        'zero_shot_acc': 1.0,
    },
    'subsampled': {
        'correct_cos': 0.6672507656610386,
        'gap_centroid': 0.2995708149755626,
        'gap_dist_fd': 0.4200278167953395,
        'gap_dist_ot': 0.5723872990369155,
        'gap_dist_paired': 0.7447454054735194,
        'gap_dist_sw': 0.010009608724374938,
        'gap_paired': 0.8021204252085219,
        'gap_raw': 0.2987809533646303,
        'gbc': -1.0834896185048264,
        'gbc_log10': 0.034824754467403365,
        'h_score': 2.7977395167081456,
        'iimm': 0.1570940151828586,
        'iimm_inter': 0.059114060277638734,
        'iimm_intra': 0.25507397008807847,
        'knn1_acc': 0.929,
        'knn5_acc': 0.961,
        'logme': -0.028107857303074156,
        'mds_cross_frac': 0.6875,
        'mds_img_frac': 0.1875,
        'mds_mean_dev': 0.05615268877185148,
        'mds_text_frac': 0.125,
        'mir': 0.17515950464728308,
        'mir_final': 0.17515950464728308,
        'transrate': 1.3273198702335378,
        'zero_shot_acc': 0.9376,
    },
    'captions': {
        'correct_cos': 0.6631908196632093,
        'gap_centroid': 0.34756095619700916,
        'gap_dist_fd': 0.23542593951097124,
        'gap_dist_ot': 0.3820486565741249,
        'gap_dist_paired': 0.6785670602381599,
        'gap_dist_sw': 0.01600262665633548,
        'gap_paired': 0.7802634317148074,
        'gap_raw': 0.5025373080879292,
        'gbc': -1.5929027806466731,
        'gbc_log10': 0.20218927039176776,
        'h_score': 1.6087809565540636,
        'iimm': 0.35534644230480084,
        'iimm_inter': 0.21845650475381817,
        'iimm_intra': 0.49223637985578356,
        'knn1_acc': 0.6875,
        'knn5_acc': 0.625,
        'logme': -0.5834647902918395,
        'mds_cross_frac': 0.5,
        'mds_img_frac': 0.125,
        'mds_mean_dev': 0.08237211280146362,
        'mds_text_frac': 0.375,
        'mir': 0.11452488666261543,
        'mir_final': 0.11452488666261543,
        'transrate': 7.778309447571299,
        'zero_shot_acc': 0.875,
    },
}


def close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a))


def assert_same(expected: dict[str, float], got: dict[str, float], tol: float) -> None:
    assert set(got) == set(expected)
    bad = {k: (expected[k], got[k]) for k in expected if not close(expected[k], got[k], tol)}
    assert not bad, bad


def torch_view(emb: Embeddings) -> Embeddings:
    out = embeddings_on(emb, "cpu")
    assert isinstance(out.image, torch.Tensor) and out.image.dtype == torch.from_numpy(emb.image).dtype
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_path_keeps_the_values_of_the_code_before_the_torch_path(case):
    sig = run_metrics(synthetic(**CASES[case]))
    assert sig.errors == {} and sig.meta["signal_device"] == "numpy"
    # The anchor metric came later than these frozen values (its own tests: test_anchors.py).
    values = {k: v for k, v in sig.values.items() if not k.startswith("anchor_")}
    assert set(values) == BUILTIN_SIGNALS
    assert_same(FROZEN[case], values, 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_builtin_metric_in_torch_matches_numpy(case, dtype):
    emb = synthetic(**CASES[case], dtype=dtype)
    expected = run_metrics(emb)
    got = run_metrics(torch_view(emb))
    assert got.errors == {} and got.skipped == {} and got.meta["signal_device"] == "cpu"
    assert all(type(v) is float for v in got.values.values())
    assert_same(expected.values, got.values, 1e-6)


@pytest.mark.slow
def test_torch_matches_numpy_on_real_embeddings_of_a_tiny_model():
    """tiny-vit (random weights) on 60 real digits images, with its aligned per-layer states."""
    from advisor.embed import embed

    emb = embed("tiny-vit", "digits", max_images=60, device="cpu", with_layers=True, use_cache=False, quiet=True)
    assert emb.image_layers and emb.text_layers  # per-layer MIR runs on both paths
    expected = run_metrics(emb)
    assert expected.errors == {}
    got = run_metrics(torch_view(emb))
    assert got.errors == {}
    assert_same(expected.values, got.values, 1e-6)


def test_shared_work_is_not_mixed_between_the_numpy_and_torch_views():
    emb = synthetic(**CASES["few_samples"])
    view = torch_view(emb)
    first = run_metrics(view).values
    assert_same(run_metrics(emb).values, first, 1e-6)
    assert_same(first, run_metrics(view).values, 0.0)  # the same view again: the shared results


class _Recorder:
    """One numpy-only metric and one declaring ``array_api``: record what each receives."""

    def __init__(self):
        self.seen: dict[str, type] = {}

    @advisor.hookimpl
    def register_metrics(self, register):
        register(Metric(name="rec_numpy", compute=self.numpy_only, needs=frozenset({"image"})))
        register(Metric(name="rec_any", compute=self.any_array, needs=frozenset({"image"}), array_api=True))

    def numpy_only(self, emb):
        self.seen["rec_numpy"] = type(emb.image)
        return float(np.asarray(emb.image).mean())

    def any_array(self, emb):
        self.seen["rec_any"] = type(emb.image)
        return emb.image.double().mean() if isinstance(emb.image, torch.Tensor) else float(emb.image.mean())


@pytest.fixture
def recorder():
    with registered_plugin(_Recorder(), "recorder-test") as obj:
        yield obj


def test_metrics_without_array_api_get_numpy_when_the_run_is_in_torch(recorder):
    emb = synthetic(**CASES["captions"])
    sig = run_metrics(torch_view(emb), ["rec_numpy", "rec_any", "iimm"])
    assert sig.errors == {}
    assert recorder.seen == {"rec_numpy": np.ndarray, "rec_any": torch.Tensor}
    assert abs(sig.values["rec_numpy"] - sig.values["rec_any"]) < 1e-6  # a 0-d tensor is accepted as a value
    run_metrics(emb, ["rec_numpy", "rec_any"])
    assert recorder.seen == {"rec_numpy": np.ndarray, "rec_any": np.ndarray}


def test_builtin_metrics_declare_array_api():
    assert all(m.array_api for name, m in plugins.get_metrics().items()
               if plugins.provider_of("metrics", name).startswith("advisor_plugins."))


@pytest.mark.parametrize("cuda", [False, True])
def test_signal_device_uses_cuda_only_when_asked_or_embedded_there_and_available(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    emb = synthetic(**CASES["captions"])
    assert signal_device(emb) is None  # no device recorded: numpy
    assert signal_device(emb, "cpu") is None
    assert signal_device(emb, "mps") is None
    assert signal_device(emb, "cuda") == ("cuda" if cuda else None)
    emb.meta["device"] = "cuda:1"  # the model ran there (embed() records it)
    assert signal_device(emb) == ("cuda:1" if cuda else None)  # e.g. a GPU cache read on a CPU machine
    assert signal_device(emb, "cpu") is None  # an explicit device wins over the recorded one
    emb.meta["device"] = "cpu"
    assert signal_device(emb) is None
    assert signal_device(torch_view(emb)) == "cpu"  # tensors: where they are


def test_run_metrics_on_cpu_embeddings_stays_in_numpy_when_cuda_is_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    emb = synthetic(**CASES["captions"])
    emb.meta["device"] = "cuda"
    sig = run_metrics(emb, ["iimm"], device="cuda")
    assert sig.meta["signal_device"] == "numpy" and sig.errors == {}
