"""Learning curves: recorded by every run on real towers and data, identical for a probe and the
start of the full run, invisible to the training itself, and carried by the history's export,
import and MLflow."""

from __future__ import annotations

import copy
import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_run

from advisor.curves import curve_epochs
from advisor.history.validate import check_curve
from advisor.history import open_history
from advisor.runner import run_finetune
from advisor.session import Session
from advisor.specs import DatasetSpec, ModelSpec, TrainContext

POINT = {"epoch": 1, "step": 5, "train_loss": 0.5, "val_acc": 0.75, "ood_proxy_acc": 0.5, "train_s": 0.25}


def test_curve_epochs_cover_the_probe_lengths_and_the_quarters() -> None:
    assert curve_epochs(20) == [1, 2, 5, 10, 20]
    assert curve_epochs(10) == [1, 2, 5, 10]
    assert curve_epochs(2) == [1, 2]
    assert curve_epochs(1) == [1]


#: One session for these runs on one pair, as a sweep worker or the probe work keeps one: the
#: model, the test sets and the zero-shot measurements load once.
_SESSION = Session()


def _run(method: str, epochs: int, stop: int | None = None):
    return run_finetune(ModelSpec("lit-offline"), DatasetSpec("digits"), method, shots=4, seed=3, record=False,
                        quiet=True, hparams={"epochs": epochs}, stop_after_epochs=stop, signals=False, max_test=100,
                        max_ood=40, session=_SESSION)


@pytest.mark.parametrize("method", ["tpc_cma", "lora"])
def test_a_probe_follows_the_first_epochs_of_the_full_run_exactly(method: str) -> None:
    full = _run(method, epochs=6)
    probe = _run(method, epochs=6, stop=2)
    assert [p["epoch"] for p in full.curve] == [0, 1, 2, 3, 5, 6]  # half of 6 is 3
    assert [p["epoch"] for p in probe.curve] == [0, 1, 2]
    drop = ("train_s",)  # wall-clock: the only value that may differ
    strip = lambda p: {k: v for k, v in p.items() if k not in drop}  # noqa: E731
    assert [strip(p) for p in probe.curve] == [strip(p) for p in full.curve[:3]]
    assert probe.losses == full.losses[:2]
    assert probe.hparams["epochs"] == 6  # the schedule of the whole run
    assert probe.provenance["measurement"]["stopped_after_epochs"] == 2
    # Point 0 is the untouched model; later points measured on a validation part of the training split.
    m = full.provenance["measurement"]
    assert m["val_n"] > 0 and m["ood_proxy_n"] > 0 and m["curve_version"] == "1"
    assert all(0.0 <= p["val_acc"] <= 1.0 and 0.0 <= p["ood_proxy_acc"] <= 1.0 for p in full.curve)
    assert full.curve[0]["train_loss"] is None and full.curve[-1]["train_loss"] == pytest.approx(full.losses[-1])
    assert full.curve[-1]["train_s"] >= full.curve[1]["train_s"] >= 0


def test_recording_the_curve_does_not_change_the_training() -> None:
    """The same tuner call with and without the recorder gives bitwise equal adapters."""
    from advisor.curves import CurveRecorder, ProxySet
    from advisor.data import few_shot, get_split, load_dataset
    from advisor.embed import load_model
    from advisor.plugins import get_tuner
    from advisor.runner import preprocess_images
    from advisor.tuning import ZeroShotAdapted, image_features_of

    bundle = load_dataset(DatasetSpec("digits"))
    train = few_shot(get_split(bundle, "train"), 4, 0, class_names=bundle.class_names)
    base = load_model(ModelSpec("lit-offline"), "cpu")
    pixels = preprocess_images(base, train)
    labels = torch.as_tensor(np.asarray(train.labels))
    val_pixels = pixels[:8]
    zs = ZeroShotAdapted(base, "cpu")
    val = ProxySet("v", list(bundle.class_names), bundle.templates[0], val_pixels, np.asarray(train.labels[:8]),
                   image_features_of(zs, val_pixels))

    def states(record: bool) -> dict[str, torch.Tensor]:
        recorder = CurveRecorder(val=val, ood=[], base_adapted=zs)
        recorder.start()
        ctx = TrainContext(model=copy.deepcopy(base), class_names=list(bundle.class_names),
                           template=bundle.templates[0], train_pixels=pixels, train_labels=labels, device="cpu",
                           seed=0, hparams={"epochs": 3}, on_epoch=recorder if record else None)
        out = get_tuner("lora").train(ctx)
        assert (len(recorder.points) == 4) == record
        return out.adapted.adapter_state()

    a, b = states(True), states(False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_curves_survive_export_and_import(tmp_path: Path) -> None:
    curve = [dict(POINT, epoch=0, step=0, train_loss=None, train_s=0.0), POINT,
             dict(POINT, epoch=2, step=10, val_acc=None)]
    db, db2 = tmp_path / "a.db", tmp_path / "b.db"
    with open_history(str(db)) as h:
        rid = h.record_run(make_run(curve=curve))
        assert h.get_run(rid)["curve"] == curve
        old = h.record_run(make_run(seed=1))  # recorded without a curve
        assert h.get_run(old)["curve"] == []
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"runs.{fmt}"
        with open_history(str(db)) as h, out.open("w", encoding="utf-8") as f:
            h.export(fmt, f)
        target = tmp_path / f"{fmt}.db"
        with open_history(str(target)) as h2:
            h2.import_file(str(out))
            assert h2.get_run(rid)["curve"] == curve and h2.get_run(old)["curve"] == []
    assert not db2.exists()


def test_a_bad_curve_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="increasing"):
        check_curve([POINT, POINT])
    with pytest.raises(ValueError, match="val_acc"):
        check_curve([dict(POINT, val_acc=1.5)])
    row = {"model": "m", "dataset": "d", "method": "lora", "seed": 0, "id_acc_before": 0.5, "id_acc_after": 0.6,
           "curve": [dict(POINT, epoch=-1)]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n", encoding="utf-8")
    from advisor.errors import AdvisorError

    with open_history(str(tmp_path / "h.db")) as h:
        with pytest.raises(AdvisorError, match="curve"):
            h.import_file(str(bad))
        assert h.count() == 0


def test_curves_go_to_mlflow_as_step_metrics_and_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          cli) -> None:
    pytest.importorskip("mlflow", reason="pip install 'advisor[mlflow]'")
    from mlflow.tracking import MlflowClient

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("curves", artifact_location=(tmp_path / "art").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ADVISOR_MLFLOW", "1")
    monkeypatch.setenv("ADVISOR_MLFLOW_EXPERIMENT", "curves")
    curve = [dict(POINT, epoch=0, step=0, train_loss=None, train_s=0.0), POINT, dict(POINT, epoch=3, step=15)]
    with open_history(str(tmp_path / "h.db")) as h:
        rid = h.record_run(make_run(curve=curve))
    (ml,) = client.search_runs([client.get_experiment_by_name("curves").experiment_id])
    hist = sorted(client.get_metric_history(ml.info.run_id, "curve.val_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(0, 0.75), (1, 0.75), (3, 0.75)]
    monkeypatch.delenv("ADVISOR_MLFLOW")
    back = tmp_path / "back.db"
    result = cli("history", "import-mlflow", "--experiment", "curves", "--tracking-uri", uri, "--db", str(back))
    assert result.exit_code == 0, result.output
    with open_history(str(back)) as h:
        assert h.get_run(rid)["curve"] == curve


def test_tpc_cma_features_from_the_frozen_ones_equal_encoding_the_images() -> None:
    """The curve derives TPC-CMA's validation features from the cached frozen ones instead of
    encoding: the same numbers as ``encode_image``."""
    from advisor.data import few_shot, get_split, load_dataset
    from advisor.embed import load_model
    from advisor.plugins import get_tuner
    from advisor.runner import preprocess_images
    from advisor.tuning import ZeroShotAdapted

    bundle = load_dataset(DatasetSpec("digits"))
    train = few_shot(get_split(bundle, "train"), 2, 0, class_names=bundle.class_names)
    base = load_model(ModelSpec("lit-offline"), "cpu")
    pixels = preprocess_images(base, train)
    ctx = TrainContext(model=copy.deepcopy(base), class_names=list(bundle.class_names), template=bundle.templates[0],
                       train_pixels=pixels, train_labels=torch.as_tensor(np.asarray(train.labels)), device="cpu",
                       seed=0, hparams={"epochs": 2})
    adapted = get_tuner("tpc_cma").train(ctx).adapted
    frozen = ZeroShotAdapted(base, "cpu").encode_image(pixels)
    assert torch.allclose(adapted.image_features_from(frozen), adapted.encode_image(pixels), atol=1e-5)
