"""Issue 16, `advisor run` items: every bad option refused before anything is loaded, devices
checked against this machine, and adapters kept beside the history they belong to (relative
paths, none for --no-record, the printed path is the one the history holds)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from advisor.cli import cli
from advisor.config import adapters_dir, resolve_device
from advisor.errors import AdvisorError
from advisor.runner import run_finetune
from advisor.specs import DatasetSpec, ModelSpec

FAST = dict(shots=2, epochs=1, ood=[], max_test=20, max_ood=10, device="cpu", quiet=True, signals=False)


def _error_line(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(cli, args)
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    return r.exit_code, lines[-1]


# A dataset that does not exist: an option error reported instead of "folder ... does not exist"
# shows that the option was checked before the dataset (and so before the model) was loaded.
MISSING = ["run", "--model", "tiny-vit", "--dataset", "folder:/nonexistent/advisor-test", "--method", "coop"]


@pytest.mark.parametrize("extra, message", [
    (["--hparam", "epochs=Infinity"], "epochs must be a finite number"),
    (["--hparam", "batch_size=1e999"], "batch_size must be a finite number"),
    (["--hparam", "lr=NaN"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--epochs", "0"], "epochs must be"),
    (["--lr", "-0.1"], "lr must be positive"),
    (["--hparam", "bogus=1"], "unknown hyper-parameter(s) for coop: bogus"),
    (["--hparam", "batch_size=2.5"], "batch_size must be"),
    (["--device", "banana"], "--device 'banana' is not a device"),
    (["--device", "cuda:7"], "--device 'cuda:7'"),
    (["--max-images", "0"], "--max-images"),
    (["--ood", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
    (["--model", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
])
def test_bad_run_options_are_one_line_errors_before_the_dataset_is_loaded(extra, message):
    code, line = _error_line(MISSING + extra)
    assert code in (1, 2) and line.startswith("Error: ") and message in line, line


@pytest.mark.parametrize("size", ["0", "-3"])
def test_image_size_zero_or_negative_is_refused(size):
    for command in (MISSING, ["signals", "--model", "tiny-vit"], ["embed", "--model", "tiny-vit"]):
        code, line = _error_line([*command, "--image-size", size])
        assert code == 2 and "--image-size" in line and "Traceback" not in line, line


def test_image_size_and_sample_sizes_are_checked_in_the_python_api_too():
    with pytest.raises(AdvisorError, match="--image-size must be a positive"):
        run_finetune(ModelSpec("tiny-vit", image_size=0), DatasetSpec("folder:/nonexistent"), "coop", **FAST)
    with pytest.raises(AdvisorError, match="--max-images must be a positive"):
        run_finetune(ModelSpec("tiny-vit"), DatasetSpec("folder:/nonexistent"), "coop", **{**FAST, "max_test": 0})


def test_devices_are_checked_against_this_machine(monkeypatch):
    import torch

    assert resolve_device("cpu") == "cpu"
    with pytest.raises(AdvisorError, match="not a device"):
        resolve_device("banana")
    with pytest.raises(AdvisorError, match="cuda:7"):
        resolve_device(f"cuda:{max(7, torch.cuda.device_count())}")
    monkeypatch.setenv("ADVISOR_DEVICE", "banana")
    with pytest.raises(AdvisorError, match="ADVISOR_DEVICE 'banana'"):
        resolve_device("auto")


# ------------------------------------------------------------------------------ adapters


def test_adapters_dir_is_beside_a_sqlite_history_or_the_override(tmp_path):
    assert adapters_dir(tmp_path / "team" / "runs.db") == tmp_path / "team" / "runs.adapters"
    assert adapters_dir(tmp_path / "runs.db", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert not (tmp_path / "team").exists()  # computing the place creates nothing


def _rows(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as con:
        return con.execute("select run_id, adapter_path from runs").fetchall()


def test_adapter_goes_beside_the_history_with_a_relative_path_and_retries_print_the_stored_one(tmp_path):
    home_adapters = Path(__import__("advisor.config", fromlist=["user_dir"]).user_dir()) / "adapters"
    before = set(home_adapters.glob("*")) if home_adapters.exists() else set()
    db = tmp_path / "team.db"
    run = run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", db=str(db), **FAST)
    folder = tmp_path / "team.adapters"
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1 and Path(run.adapter_path) == files[0]
    (run_id, stored), = _rows(db)
    assert run_id == run.run_id and stored == files[0].name and not Path(stored).is_absolute()
    assert (set(home_adapters.glob("*")) if home_adapters.exists() else set()) == before

    retry = run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", db=str(db), **FAST)
    assert retry.run_id == run.run_id and len(_rows(db)) == 1
    assert Path(retry.adapter_path) == files[0] and list(folder.glob("*.safetensors")) == files


def test_no_record_writes_no_adapter_and_adapters_dir_is_honoured(tmp_path):
    db = tmp_path / "h.db"
    r = CliRunner().invoke(cli, ["run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop",
                                 "--shots", "2", "--epochs", "1", "--ood", "faces", "--max-images", "20",
                                 "--device", "cpu", "--quiet", "--no-record", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["adapter_path"] is None
    assert not (tmp_path / "h.adapters").exists() and not list(tmp_path.rglob("*.safetensors"))

    out = tmp_path / "mine"
    r = CliRunner().invoke(cli, ["run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop",
                                 "--shots", "2", "--epochs", "1", "--ood", "faces", "--max-images", "20",
                                 "--device", "cpu", "--quiet", "--db", str(db), "--adapters-dir", str(out), "--json"])
    assert r.exit_code == 0, r.output
    printed = Path(json.loads(r.stdout)["adapter_path"])
    (_, stored), = _rows(db)
    assert printed == out / stored and printed.is_file() and not (tmp_path / "h.adapters").exists()


def test_open_clip_refuses_image_size_zero_instead_of_using_the_default():
    from advisor.embed import load_model
    from advisor.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="--image-size must be a positive"):
        load_model(ModelSpec("tiny-vit", image_size=0), "cpu")
    assert load_model(ModelSpec("tiny-vit", image_size=48), "cpu").image_size == 48
