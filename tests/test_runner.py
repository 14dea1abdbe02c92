"""`advisor run`: a real (tiny) fine-tuning run is measured and recorded completely, or not at all."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advisor.cli import cli
from advisor.errors import AdvisorError
from advisor.history import open_history
from advisor.runner import run_finetune
from advisor.specs import DatasetSpec, ModelSpec

FAST = dict(shots=4, epochs=2, ood=["faces"], max_test=40, max_ood=20, device="cpu", quiet=True)


def _count_runs(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def test_run_records_every_field(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    run = run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", seed=3, db=str(db), **FAST)
    rows = open_history(str(db)).runs()
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == run.run_id
    assert (row["model"], row["dataset"], row["method"], row["shots"], row["seed"]) == ("tiny-vit", "digits", "coop", 4, 3)
    for key in ("id_acc_before", "id_acc_after", "gap_before", "gap_after", "wall_time_s", "peak_memory_mb"):
        assert row[key] is not None and np.isfinite(row[key]), key
    assert 0.0 <= row["id_acc_before"] <= 1.0 and 0.0 <= row["id_acc_after"] <= 1.0
    assert set(row["ood_before"]) == set(row["ood_after"]) == {"faces"}
    assert row["trainable_params"] == run.trainable_params > 0
    assert row["hparams"]["epochs"] == 2
    assert row["split_hash"] == run.split_hash and len(run.split_hash) == 16
    prov = row["provenance"]
    assert prov["seed"] == 3 and prov["packages"]["torch"] and prov["advisor_version"]
    assert prov["hardware"]["device"] == "cpu"
    # the pair's signal set is stored with the run
    assert {"iimm", "zero_shot_acc", "logme"} <= set(run.signals)
    assert all(np.isfinite(v) for v in run.signals.values())
    # the trained adapter is saved as safetensors and holds only what was trained
    from safetensors.torch import load_file

    state = load_file(run.adapter_path)
    assert sum(t.numel() for t in state.values()) == run.trainable_params


def test_exception_mid_training_leaves_history_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", db=str(db), signals=False, **FAST)
    before = _count_runs(db)

    def explode(step: int, total: int, loss: float) -> None:
        if step >= 2:
            raise RuntimeError("simulated crash mid-training")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", db=str(db), signals=False,
                     on_step=explode, **FAST)
    assert _count_runs(db) == before


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_unknown_method_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(["run", "--model", "tiny-vit", "--dataset", "digits", "--method", "nope",
                            "--db", str(tmp_path / "h.db"), "--quiet"])
    assert "nope" in line and "lora" in line


def test_shots_larger_than_smallest_class_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(["run", "--model", "tiny-vit", "--dataset", "faces", "--method", "coop", "--shots", "500",
                            "--db", str(tmp_path / "h.db"), "--quiet"])
    assert "500" in line or "only" in line
    assert not (tmp_path / "h.db").exists() or _count_runs(tmp_path / "h.db") == 0


def test_ood_dataset_that_cannot_be_prompted_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    (root / "templates.json").write_text(json.dumps(["a photo without a slot"]))
    line = _one_line_error(["run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop", "--shots", "2",
                            "--ood", f"folder:{root}", "--db", str(tmp_path / "h.db"), "--quiet"])
    assert "template" in line


def test_run_cli_json_reports_measured_gain(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop",
                                      "--shots", "2", "--epochs", "1", "--ood", "faces", "--max-images", "30",
                                      "--db", str(tmp_path / "h.db"), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["id_gain"] == pytest.approx(out["id_acc_after"] - out["id_acc_before"])
    assert _count_runs(tmp_path / "h.db") == 1


def test_advisor_error_is_raised_for_unknown_dataset() -> None:
    with pytest.raises(AdvisorError):
        run_finetune(ModelSpec("tiny-vit"), DatasetSpec("no-such-dataset"), "coop", record=False, **FAST)


def test_a_run_loads_its_dataset_once_signals_included(monkeypatch: pytest.MonkeyPatch) -> None:
    from advisor import data

    real, loaded = data.load_dataset, []

    def counting(spec):
        loaded.append(getattr(spec, "name", spec))
        return real(spec)

    monkeypatch.setattr(data, "load_dataset", counting)
    run = run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", record=False, **FAST)
    assert run.signals and run.dataset_desc["name"] == "digits"
    assert loaded.count("digits") == 1
