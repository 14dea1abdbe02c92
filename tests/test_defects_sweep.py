"""Issue 27, sweep items: what counts as already recorded, the plan's estimate and listing, plans
the real start cannot carry out, executors that cannot launch, ``sweep status``'s last
activity, the progress rule and ``--mlflow-experiment``. Against real history files (and, for
the last test, a real sweep and a real MLflow SQLite store)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import make_run

from advisor.history import open_history
from advisor.plugins import get_tuner

SWEEP = ("sweep", "--models", "lit-offline", "--datasets", "digits")


def _lora_run(**hparams: Any) -> Any:
    """A stored lit-offline/digits lora run at 16 shots, seed 0, with the hyper-parameters the
    tuner stores: its defaults, ``targets`` filled in during training, then ``hparams``."""
    hp = {**get_tuner("lora").defaults(16), "targets": ["proj", "query", "value"], **hparams}
    return make_run(model="lit-offline", method="lora", shots=16, seed=0, hparams=hp)


def _plan(cli: Any, db: Path, *args: str) -> dict[str, Any]:
    res = cli(*SWEEP, "--db", str(db), "--dry-run", "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["plan"]


def test_a_run_at_another_learning_rate_does_not_make_a_default_job_done(cli: Any, tmp_path: Path) -> None:
    other = tmp_path / "other-lr.db"
    with open_history(str(other)) as h:
        h.record_run(_lora_run(lr=2e-2))
    plan = _plan(cli, other, "--methods", "lora")
    assert plan["already_recorded"] == 0 and plan["to_run"] == 1
    # The same run asked for with its learning rate is recorded.
    assert _plan(cli, other, "--methods", "lora", "--hparam", "lr=2e-2")["already_recorded"] == 1

    default = tmp_path / "default-lr.db"
    with open_history(str(default)) as h:
        h.record_run(_lora_run())
    plan = _plan(cli, default, "--methods", "lora,coop")
    assert plan["already_recorded"] == 1 and plan["to_run"] == 1
    assert [(j["method"], j["hparams"]) for j in plan["would_start"]] == [("coop", {})]


def test_a_stored_default_contcoop_run_counts_as_recorded(cli: Any, tmp_path: Path) -> None:
    """The shipped history's ContCoOp runs store n_ctx 4 (the default ctx_init's length, which
    sets the context); with the tuner declaring 16, a default ContCoOp job never matched them."""
    stored = {"batch_size": 32, "ctx_init": "a photo of a", "epochs": 20, "heads": 1, "init_std": 0.02,
              "kd_weight": 8.0, "lr": 0.002, "momentum": 0.9, "n_ctx": 4, "optimizer": "sgd", "warmup_epochs": 1,
              "warmup_lr": 1e-05, "warmup_type": "constant", "weight_decay": 0.0005}  # as in registry.db
    db = tmp_path / "h.db"
    with open_history(str(db)) as h:
        h.record_run(make_run(model="lit-offline", method="contcoop", shots=16, seed=0, hparams=stored))
    plan = _plan(cli, db, "--methods", "contcoop", "--hparam", "epochs=20")
    assert (plan["already_recorded"], plan["to_run"]) == (1, 0)


def test_dry_run_lists_the_runs_it_would_start(cli: Any, tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    res = cli(*SWEEP, "--methods", "lora,coop", "--seeds", "0,1", "--hparam", "lr=1e-3", "--db", str(db), "--dry-run")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    start = lines.index("Would start 4 runs:")
    listed = lines[start + 1:start + 5]
    assert listed == [f"  lit-offline  digits  {m}  shots=16  seed={s}  lr=0.001"
                      for m in ("lora", "coop") for s in (0, 1)]
    plan = _plan(cli, db, "--methods", "coop", "--shots", "all", "--seeds", "3")
    assert plan["would_start"] == [{"model": "lit-offline", "pretrained": None, "image_size": None,
                                    "dataset": "digits", "method": "coop", "shots": None, "seed": 3, "hparams": {}}]
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM sweep_jobs").fetchone() == (0,)


def test_estimate_counts_loading_and_evaluation_from_the_recorded_phases(cli: Any, tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    timing = {"prepare_s": 50.0, "train_s": 2.0, "evaluate_s": 17.0, "curve_s": 1.0}
    with open_history(str(db)) as h:
        for seed, method in enumerate(("lora", "coop")):
            h.record_run(make_run(model="lit-offline", method=method, seed=seed, wall_time_s=2.0,
                                  provenance={"advisor": "0.1.0", "timing": timing}))
    plan = _plan(cli, db, "--methods", "lora,coop", "--seeds", "7", "--max-parallel", "2")
    # Two jobs of one pair on two workers: each worker loads the pair once (50 s), each job
    # trains, evaluates and measures its curve (20 s): 140 s of work, 70 s on two workers.
    assert plan["estimated_run_seconds"] == pytest.approx(140.0)
    assert plan["estimated_wall_seconds"] == pytest.approx(70.0) and plan["workers"] == 2
    assert "phase timings of 2 recorded runs" in plan["estimate_basis"]
    assert "once per worker and pair" in plan["estimate_basis"]
    text = cli(*SWEEP, "--methods", "lora,coop", "--seeds", "7", "--max-parallel", "2", "--db", str(db), "--dry-run")
    assert "Estimated cost: 2 min of runs, about 70 s with 2 at once (phase timings" in text.stdout


@pytest.mark.parametrize("args, spec, message", [
    (("--seeds", str(2**63)), None, "seed 9223372036854775808 is outside what the history stores"),
    (("--seeds", str(-2**31 - 1)), None, "seed -2147483649 is outside"),
    (("--slurm-time", "1:99:99"), None, "'1:99:99' is not a time"),
    ((), '[run]\ndevice = "tpu"\n', "device 'tpu' is not a device"),
    (("--slurm-time", "2-24:00:00"), None, "'2-24:00:00' is not a time"),
])
def test_dry_run_refuses_a_plan_the_real_start_cannot_carry_out(cli: Any, tmp_path: Path, args: tuple[str, ...],
                                                                 spec: str | None, message: str) -> None:
    db = tmp_path / "h.db"
    if spec is None:
        res = cli(*SWEEP, "--methods", "lora", *args, "--db", str(db), "--dry-run")
    else:
        path = tmp_path / "sweep.toml"
        path.write_text(spec + '[[block]]\nmodels = ["lit-offline"]\ndatasets = ["digits"]\nmethods = ["lora"]\n')
        res = cli("sweep", "--spec", str(path), *args, "--db", str(db), "--dry-run")
    assert res.exit_code != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_a_tpu_device_is_refused_for_cluster_workers_too(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text('[run]\ndevice = "tpu"\n[[block]]\nmodels = ["lit-offline"]\ndatasets = ["digits"]\n'
                    'methods = ["lora"]\n')
    res = cli("sweep", "--spec", str(path), "--executor", "slurm", "--db", str(tmp_path / "h.db"), "--dry-run")
    assert res.exit_code == 1 and "device 'tpu' is not a device" in res.stderr
    path.write_text(path.read_text().replace('"tpu"', '"cuda:3"'))  # a GPU the cluster has, this machine not
    res = cli("sweep", "--spec", str(path), "--executor", "slurm", "--db", str(tmp_path / "h.db"), "--dry-run")
    assert res.exit_code == 0, res.output


def test_slurm_without_sbatch_registers_no_job(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    db = tmp_path / "h.db"
    res = cli(*SWEEP, "--methods", "lora,coop", "--executor", "slurm", "--slurm-time", "30", "--db", str(db))
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "Error: executor 'slurm' cannot launch here: sbatch is not on PATH "
        "(run the sweep on a Slurm login node, or use --executor local)"]
    status = cli("sweep", "status", "--db", str(db), "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["sweeps"] == []


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_a_failing_sbatch_marks_the_jobs_failed_and_a_new_start_requeues_them(
        cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch is on PATH but refuses the array (a real executable, run by submitit as a real
    subprocess): one error line with sbatch's own message, the jobs failed with it in ``sweep
    status``, and the same sweep started again (sbatch now accepting) re-queues and submits them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\n"
                                "exit 1")
    _script(bin_dir / "srun", "exit 0")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    db = tmp_path / "h.db"
    args = (*SWEEP, "--methods", "lora,coop", "--executor", "slurm", "--slurm-time", "30", "--db", str(db))
    res = cli(*args)
    assert res.exit_code == 1
    said = "sbatch failed (exit status 1): sbatch: error: Batch job submission failed: Invalid partition name specified"
    assert [ln for ln in res.stderr.splitlines() if not ln.startswith("Warning: ")] == [
        f"Error: executor 'slurm' could not launch the sweep's jobs: {said} "
        "(2 jobs marked failed; run the same sweep again to retry them)"]
    (row,) = json.loads(cli("sweep", "status", "--db", str(db), "--json").stdout)["sweeps"]
    assert (row["queued"], row["failed"]) == (0, 2)
    info = json.loads(cli("sweep", "status", row["sweep_id"], "--db", str(db), "--json").stdout)
    assert [j["error"] for j in info["failed"]] == [f"not launched: executor 'slurm' could not launch it: {said}"] * 2
    assert "Invalid partition name specified" in cli("sweep", "status", row["sweep_id"], "--db", str(db)).stdout

    _script(bin_dir / "sbatch", "echo 'Submitted batch job 4242'")
    again = cli(*args, "--detach")
    assert again.exit_code == 0, again.output
    (row,) = json.loads(cli("sweep", "status", "--db", str(db), "--json").stdout)["sweeps"]
    assert (row["queued"], row["failed"]) == (2, 0)


def test_sweep_status_shows_the_last_activity_as_updated_at(cli: Any, tmp_path: Path) -> None:
    from advisor.history.sweeps import claim, finish, register_sweep

    db = tmp_path / "h.db"
    config = {"model": "lit-offline", "pretrained": None, "dataset": "digits", "method": "lora", "shots": 4,
              "seed": 0, "hparams": {}}
    with open_history(str(db)) as h:
        register_sweep(h, "sw-activity", {"name": "t"}, "local",
                       [("k1", "p", 0, config), ("k2", "p", 0, {**config, "seed": 1})], 60.0)
        job = claim(h, "sw-activity", "worker-1")
        finish(h, job["id"], "worker-1", "lora-x")
    registered = json.loads(cli("sweep", "status", "--db", str(db), "--json").stdout)["sweeps"][0]["created_at"]
    later = time.time() + 3 * 3600  # the worker's last word, hours after the registration
    con = sqlite3.connect(db)
    con.execute("UPDATE sweep_jobs SET finished_at = ?, heartbeat_at = ? WHERE job_key = 'k1'", (later, later - 5))
    con.commit()
    con.close()
    expected = datetime.fromtimestamp(later, timezone.utc).isoformat(timespec="seconds")
    (row,) = json.loads(cli("sweep", "status", "--db", str(db), "--json").stdout)["sweeps"]
    assert row["updated_at"] == expected != registered
    assert json.loads(cli("sweep", "status", "sw-activity", "--db", str(db), "--json").stdout)["updated_at"] == expected
    table = cli("sweep", "status", "--db", str(db)).stdout
    assert expected in table.replace("\n", "").replace(" ", "")


@pytest.mark.slow
def test_sweep_shows_progress_under_ADVISOR_PROGRESS_and_logs_to_the_named_mlflow_experiment(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="pip install 'advisor[mlflow]'")
    from mlflow.tracking import MlflowClient

    spec = tmp_path / "sweep.toml"
    spec.write_text('[run]\nmax_images = 40\nmax_ood = 20\nood = ["faces"]\nsignals = false\nsave_adapter = false\n'
                    '[[block]]\nmodels = ["tiny-vit"]\ndatasets = ["digits"]\nmethods = ["coop"]\nshots = [2]\n'
                    '[block.method_hparams.coop]\nepochs = 1\n')
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if k not in ("ADVISOR_MLFLOW_EXPERIMENT", "MLFLOW_EXPERIMENT_NAME")}
    env.update(ADVISOR_HOME=str(tmp_path / "home"), ADVISOR_SWEEP_HEARTBEAT="0.5", ADVISOR_PROGRESS="1",
               MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="not-this-one")
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    out = subprocess.run([sys.executable, "-c", code, "sweep", "--spec", str(spec), "--db", str(tmp_path / "h.db"),
                          "--mlflow", "--mlflow-experiment", "team-sweeps"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sweep:" in out.stderr and "run" in out.stderr  # the tqdm bar, though stderr is a pipe
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("team-sweeps")
    assert exp is not None and client.get_experiment_by_name("not-this-one") is None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "coop"
