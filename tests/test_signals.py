"""The signal engine (advisor.signals), the embeddings file (advisor.embeddings_file), and
``advisor signals`` end to end."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from click.testing import CliRunner

import advisor
from advisor import plugins
from advisor.testing import registered_plugin
from advisor.errors import InputFileError, UnknownNameError
from advisor.embeddings_file import read as load_embeddings_npz
from advisor.embeddings_file import write as write_embeddings
from advisor.signals import SignalSet, run_metrics
from advisor.specs import Embeddings, Metric

BUILTIN_SIGNALS = {
    "iimm", "iimm_inter", "iimm_intra", "correct_cos",
    "gap_raw", "gap_paired", "gap_centroid", "gap_dist_fd", "gap_dist_paired", "gap_dist_ot", "gap_dist_sw",
    "mir", "mir_final", "mds_img_frac", "mds_text_frac", "mds_cross_frac", "mds_mean_dev",
    "zero_shot_acc", "h_score", "logme", "gbc", "gbc_log10", "transrate", "knn1_acc", "knn5_acc",
}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_BLOCK_PLUGINS", "1")
    monkeypatch.delenv("ADVISOR_DB", raising=False)


def arrays(n=90, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((c, d)) + 0.5
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    image = (text[labels] + rng.standard_normal((n, d))) * rng.uniform(0.5, 4, (n, 1))
    return {"image": image.astype(np.float32), "text": text.astype(np.float32), "labels": labels}


def emb_of(a) -> Embeddings:
    return Embeddings(image=a["image"], text=a["text"], labels=a["labels"], class_names=[f"c{i}" for i in range(len(a["text"]))])


class ThirdParty:
    """A third-party-like plugin: one good metric, one that raises, one NaN, one bad type, one needing layers."""

    @advisor.hookimpl
    def register_metrics(self, register):
        register(Metric(name="tp_ok", compute=lambda e: float(np.asarray(e.labels).mean()) + 0.25,
                        needs=frozenset({"labels"}), version="7"))
        register(Metric(name="tp_boom", compute=self.boom, needs=frozenset({"image"})))
        register(Metric(name="tp_nan", compute=lambda e: {"tp_a": 1.0, "tp_b": float("nan")}, needs=frozenset({"image"})))
        register(Metric(name="tp_str", compute=lambda e: "high", needs=frozenset({"image"})))
        register(Metric(name="tp_clash", compute=lambda e: {"iimm": 0.0}, needs=frozenset({"image"})))
        register(Metric(name="tp_layers", compute=lambda e: 1.0, needs=frozenset({"image", "layers"})))

    @staticmethod
    def boom(emb):
        raise RuntimeError("third-party metric exploded\nsecond line")


@pytest.fixture
def third_party():
    with registered_plugin(ThirdParty(), "third-party-test") as obj:
        yield obj


# ---------------------------------------------------------------------------------- engine


def test_run_metrics_computes_every_builtin_signal():
    sig = run_metrics(emb_of(arrays()))
    assert isinstance(sig, SignalSet)
    assert not sig.errors, sig.errors
    assert BUILTIN_SIGNALS <= set(sig.values)
    for k, v in sig.values.items():
        assert type(v) is float and math.isfinite(v)
        assert sig.versions[k] == plugins.get_metric(sig.metric_of[k]).version and sig.seconds[k] >= 0
    assert sig.versions["gbc_log10"] == sig.versions["gbc"] == "2" and sig.versions["mir"] == "2"
    assert sig.metric_of["iimm_intra"] == "iimm" and sig.metric_of["knn5_acc"] == "knn_loo"
    assert set(sig.metric_seconds) >= {"iimm", "modality_gap", "mir", "mds", "zero_shot_acc", "logme"}
    assert sig.total_seconds == pytest.approx(sum(sig.metric_seconds.values()))
    assert sig.meta["n_images"] == 90


def test_run_metrics_selected_names_and_unknown_name():
    sig = run_metrics(emb_of(arrays()), ["iimm", "zero_shot_acc"])
    assert set(sig.values) == {"iimm", "iimm_inter", "iimm_intra", "correct_cos", "zero_shot_acc"}
    with pytest.raises(UnknownNameError, match="no_such_metric"):
        run_metrics(emb_of(arrays()), ["no_such_metric"])


def test_failing_third_party_metrics_are_reported_by_name_and_others_run(third_party):
    sig = run_metrics(emb_of(arrays()))
    assert sig.errors["tp_boom"] == "RuntimeError: third-party metric exploded"
    assert "tp_b" in sig.errors["tp_nan"] and "non-finite" in sig.errors["tp_nan"]
    assert "not a number" in sig.errors["tp_str"]
    assert "already produced by metric 'iimm'" in sig.errors["tp_clash"]
    assert sig.skipped == {"tp_layers": "needs layers"}
    assert "tp_a" not in sig.values  # a metric's outputs are all or nothing
    assert sig.values["tp_ok"] == pytest.approx(np.mean(arrays()["labels"]) + 0.25)
    assert sig.versions["tp_ok"] == "7"
    assert BUILTIN_SIGNALS <= set(sig.values)


def test_layers_metric_runs_when_layers_exist(third_party):
    e = emb_of(arrays())
    e.image_layers = [np.ones((90, 3))]
    e.text_layers = [np.ones((4, 3))]
    sig = run_metrics(e, ["tp_layers"])
    assert sig.values == {"tp_layers": 1.0} and not sig.skipped


# ---------------------------------------------------------------------------------- .npz reader


def save(tmp_path, name="e.npz", **arrs):
    path = tmp_path / name
    np.savez(path, **arrs)
    return str(path)


def test_load_npz_roundtrip_with_layers_and_paired_text(tmp_path):
    a = arrays()
    rng = np.random.default_rng(1)
    path = save(tmp_path, **a, image_layers=rng.standard_normal((2, 90, 5)), text_layers=rng.standard_normal((2, 4, 5)),
                paired_text=rng.standard_normal((90, 12)), class_names=np.array(["w", "x", "y", "z"]),
                meta_json=np.asarray(json.dumps({"model": "m", "text_layers_rows": "per (template, class)"})))
    e = load_embeddings_npz(path)
    assert e.meta["model"] == "m" and e.meta["text_layers_rows"] == "per (template, class)"
    assert e.meta["source"] == path and e.meta["n_images"] == 90
    assert e.image.shape == (90, 12) and e.labels.dtype == np.int64
    assert len(e.image_layers) == 2 and e.text_layers[0].shape == (4, 5)
    assert e.class_names == ["w", "x", "y", "z"] and e.paired_text.shape == (90, 12)
    assert "layers" in e.available


def test_embeddings_file_roundtrip_keeps_layers_of_any_width_and_what_text_rows_are(tmp_path):
    rng = np.random.default_rng(2)
    a = arrays()
    emb = Embeddings(image=a["image"], text=a["text"], labels=a["labels"], class_names=["a", "b", "c", "d"],
                     image_layers=[rng.standard_normal((90, 3)), rng.standard_normal((90, 7))],
                     text_layers=[rng.standard_normal((8, 3)), rng.standard_normal((8, 7))],
                     meta={"model": "m"}, text_layer_rows="prompts")
    back = load_embeddings_npz(write_embeddings(emb, tmp_path / "e.npz"))
    assert back.text_layer_rows == "prompts" and back.meta["model"] == "m"
    assert [x.shape for x in back.image_layers] == [(90, 3), (90, 7)]
    assert [x.shape for x in back.text_layers] == [(8, 3), (8, 7)]
    np.testing.assert_array_equal(back.text_layers[1], emb.text_layers[1].astype(np.float32))
    np.testing.assert_array_equal(back.labels, emb.labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]  # the temporary file is gone
    emb.text_layer_rows = "guess"
    with pytest.raises(InputFileError, match="text_layer_rows is 'guess'"):
        write_embeddings(emb, tmp_path / "f.npz")


def test_load_npz_accepts_integral_float_labels_and_ignores_broken_meta(tmp_path):
    a = arrays()
    a["labels"] = a["labels"].astype(np.float64)
    e = load_embeddings_npz(save(tmp_path, **a, meta_json=np.asarray("{not json")))
    assert e.labels.dtype == np.int64 and "model" not in e.meta


def bad_inputs(tmp_path):
    """(description, path, expected message fragment) for every malformed input."""
    a = arrays()
    out = []

    def case(desc, frag, **changes):
        arrs = {**a, **changes}
        arrs = {k: v for k, v in arrs.items() if v is not None}
        out.append((desc, save(tmp_path, f"{desc}.npz", **arrs), frag))

    out.append(("missing file", str(tmp_path / "nope.npz"), "no such file"))
    txt = tmp_path / "notes.npz"
    txt.write_text("this is not a zip archive")
    out.append(("not an npz", str(txt), "not a readable .npz"))
    npy = tmp_path / "single.npy"
    np.save(npy, a["image"])
    out.append(("single array", str(npy), "not an .npz archive"))
    obj = tmp_path / "pickled.npz"
    np.savez(obj, image=np.array([object()], dtype=object), text=a["text"], labels=a["labels"])
    out.append(("pickled", str(obj), "cannot read arrays"))
    case("missing labels", "missing array(s) 'labels'", labels=None)
    case("image 1d", "'image' must have shape (N,d)", image=a["image"][:, 0])
    case("text width", "'text' has width 11", text=a["text"][:, :11])
    case("labels length", "'labels' must have shape (90,)", labels=a["labels"][:50])
    case("labels 2d", "'labels' must have shape (90,)", labels=a["labels"][:, None])
    case("label range", "out of range [0, 4)", labels=np.where(np.arange(90) == 7, 4, a["labels"]))
    case("negative label", "out of range", labels=np.where(np.arange(90) == 3, -1, a["labels"]))
    case("float labels", "'labels' must be integers", labels=a["labels"] + 0.5)
    case("string labels", "'labels' must be integers", labels=a["labels"].astype(str))
    img = a["image"].copy()
    img[5, 2] = np.nan
    case("nan row", "'image' has 1 row(s) with NaN or inf (first: row 5)", image=img)
    txt_inf = a["text"].copy()
    txt_inf[1, 0] = np.inf
    case("inf text", "'text' has 1 row(s) with NaN or inf", text=txt_inf)
    case("one class", "need at least 2 classes", labels=np.zeros(90, dtype=int))
    case("one text row", "need at least 2 classes", text=a["text"][:1], labels=np.zeros(90, dtype=int))
    zero = a["image"].copy()
    zero[9] = 0
    case("zero row", "'image' row 9 is all zeros", image=zero)
    case("layers alone", "'image_layers' given without 'text_layers'", image_layers=np.ones((1, 90, 3)))
    case("layers rows", "image layer 0 has 80 rows", image_layers=np.ones((1, 80, 3)), text_layers=np.ones((1, 4, 3)))
    case("rows kind", "'text_layer_rows' is 'templates'", image_layers=np.ones((1, 90, 3)), text_layers=np.ones((1, 4, 3)),
         text_layer_rows=np.asarray("templates"))
    case("rows count", "text layer 0 has 5 rows, but 'text_layer_rows' says one per class (4)",
         image_layers=np.ones((1, 90, 3)), text_layers=np.ones((1, 5, 3)), text_layer_rows=np.asarray("classes"))
    case("prompt count", "not a whole number of templates x 4 classes",
         image_layers=np.ones((1, 90, 3)), text_layers=np.ones((1, 10, 3)), text_layer_rows=np.asarray("prompts"))
    case("paired shape", "'paired_text' must have shape (90,12)", paired_text=np.ones((90, 5)))
    case("names count", "'class_names' has 3 entries", class_names=np.array(["a", "b", "c"]))
    return out


def test_load_npz_rejects_every_bad_input_with_one_line(tmp_path):
    for desc, path, frag in bad_inputs(tmp_path):
        with pytest.raises(InputFileError) as info:
            load_embeddings_npz(path)
        msg = str(info.value)
        assert frag in msg, (desc, msg)
        assert "\n" not in msg, desc


# ---------------------------------------------------------------------------------- CLI


def cli():
    from advisor.cli import cli as group

    return group


def test_cli_from_embeddings_json_matches_engine(tmp_path):
    a = arrays()
    path = save(tmp_path, **a)
    res = CliRunner().invoke(cli(), ["signals", "--from-embeddings", path, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    direct = run_metrics(load_embeddings_npz(path))
    assert out["signals"] == pytest.approx(direct.values, rel=1e-12)
    assert set(out["versions"]) == set(out["signals"]) == set(out["seconds"])
    assert out["errors"] == {} and out["model"] is None and out["split_hash"] is None and out["stored"] is None
    assert BUILTIN_SIGNALS <= set(out["signals"])


def test_cli_from_embeddings_table_lists_third_party_metric_and_failures(tmp_path, third_party):
    path = save(tmp_path, **arrays())
    res = CliRunner().invoke(cli(), ["signals", "--from-embeddings", path])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["signal", "value", "version", "seconds"]
    row = next(line for line in lines if line.startswith("tp_ok "))
    assert row.split()[2] == "7"
    assert any(line.startswith("iimm ") for line in lines)
    assert "metric 'tp_boom' failed: RuntimeError: third-party metric exploded" in res.stderr


def test_cli_metric_selection(tmp_path):
    path = save(tmp_path, **arrays())
    res = CliRunner().invoke(cli(), ["signals", "--from-embeddings", path, "--metric", "zero_shot_acc", "--json"])
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)["signals"]) == ["zero_shot_acc"]


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    for desc, path, frag in bad_inputs(tmp_path):
        res = CliRunner().invoke(cli(), ["signals", "--from-embeddings", path])
        assert res.exit_code == 1, (desc, res.output)
        err = res.stderr.strip()
        assert err.startswith("Error: ") and frag in err and "\n" not in err, (desc, err)
        assert "Traceback" not in res.output


def test_cli_from_embeddings_refuses_model_options(tmp_path):
    path = save(tmp_path, **arrays())
    res = CliRunner().invoke(cli(), ["signals", "--from-embeddings", path, "--model", "tiny-vit"])
    assert res.exit_code == 2
    assert "--from-embeddings cannot be combined with --model" in res.stderr


@pytest.mark.slow
def test_cli_model_dataset_stores_signal_set_in_history(tmp_path):
    """Real path: tiny random open_clip ViT on 60 real digits images, a real SQLite history."""
    from advisor.history import dataset_key, model_key, open_history

    db = str(tmp_path / "hist.db")
    args = ["signals", "--model", "tiny-vit", "--dataset", "digits", "--max-images", "60", "--device", "cpu", "--allow-random-weights",
            "--quiet", "--db", db, "--json"]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["errors"] == {} and BUILTIN_SIGNALS <= set(out["signals"])
    assert out["model"] == "tiny-vit" and out["dataset"] == "digits" and len(out["split_hash"]) == 16
    assert out["n_images"] == 60 and isinstance(out["stored"], int)
    stored = open_history(db).latest_signals(out["model_key"], out["dataset_key"])
    assert stored == pytest.approx(out["signals"], rel=1e-12)
    assert out["model_key"].startswith("tiny-vit|") and out["dataset_key"].startswith("digits|")
    # second call: embeddings from the cache, same values, keyed the same way in the history
    res2 = CliRunner().invoke(cli(), args)
    out2 = json.loads(res2.stdout)
    assert out2["signals"] == pytest.approx(out["signals"], rel=1e-9)
    assert (out2["model_key"], out2["dataset_key"]) == (out["model_key"], out["dataset_key"])
    assert model_key({"name": "tiny-vit", "image_size": out["model_key"].split("|")[2]}) == out["model_key"]
    assert dataset_key({"name": "digits", "fingerprint": out["dataset_key"].split("|")[1]}) == out["dataset_key"]
