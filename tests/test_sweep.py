"""``advisor sweep``: grids, real submitit local workers on tiny models, resume, faults.

Each sweep here is the real command line in a fresh process, with submitit's local executor
starting real worker processes that train ``tiny-vit`` for one epoch on a few digits and write
into a real SQLite file or a real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advisor.sweep.grid import SweepSpecError, grid_from_options, load_sweep_file, parse_hparam_axes

#: One tiny, fast run: tiny-vit, 2 shots of digits, one epoch, small test samples, one OOD set.
SPEC = """
name = "test-sweep"
[run]
max_images = 40
max_ood = 20
ood = ["faces"]
signals = false
save_adapter = false
[[block]]
models = ["tiny-vit"]
datasets = ["digits"]
methods = {methods}
shots = [2]
seeds = {seeds}
"""


def write_spec(tmp_path: Path, methods: list[str], seeds: list[int], name: str = "sweep.toml") -> Path:
    p = tmp_path / name
    text = SPEC.format(methods=json.dumps(methods), seeds=json.dumps(seeds))
    text += "".join(f"[block.method_hparams.{m}]\nepochs = 1\n" for m in methods if m != "lora")
    p.write_text(text)
    return p


def sweep_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"ADVISOR_HOME": str(tmp_path / "home"), "ADVISOR_SWEEP_HEARTBEAT": "0.5", **extra}


def advisor_cmd(*args: str) -> list[str]:
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    return [sys.executable, "-c", code, *args]


def sweep_cmd(spec: Path, db: str, *more: str) -> list[str]:
    return advisor_cmd("sweep", "--spec", str(spec), "--db", db, *more)


def run_sweep(spec: Path, db: str, tmp_path: Path, *more: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sweep_cmd(spec, db, *more), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **sweep_env(tmp_path)})


def run_keys(url: str) -> list[tuple[str, str, int]]:
    """(method, config_hash, seed) of every run, read by an independent connection."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT method, config_hash, seed FROM runs")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def job_rows(url: str) -> list[tuple[str, str, int]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, worker, attempts FROM sweep_jobs ORDER BY position")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


# ------------------------------------------------------------------------------------ the grid


def test_grid_expands_the_cross_product_with_per_method_hyperparameters(tmp_path):
    grid = load_sweep_file(write_spec(tmp_path, ["coop", "tpc_cma", "lora"], [0, 1]))
    jobs = grid.jobs()
    assert len(jobs) == 3 * 2
    assert {(j.method, j.seed) for j in jobs} == {(m, s) for m in ("coop", "tpc_cma", "lora") for s in (0, 1)}
    assert all(j.hparams == {"epochs": 1} for j in jobs if j.method in ("coop", "tpc_cma"))
    assert all(j.hparams == {} for j in jobs if j.method == "lora")
    assert all(j.run["ood"] == ["faces"] and j.run["max_images"] == 40 for j in jobs)
    # Stable: the same file expands to the same keys and sweep id (what resuming relies on).
    again = load_sweep_file(write_spec(tmp_path, ["coop", "tpc_cma", "lora"], [0, 1], "again.toml"))
    assert [j.key for j in again.jobs()] == [j.key for j in jobs] and again.sweep_id == grid.sweep_id
    assert len({j.key for j in jobs}) == len(jobs)


def test_hparam_axes_multiply_runs_and_parse_numbers():
    assert parse_hparam_axes(["lr=1e-4,1e-3", "epochs=2"]) == {"lr": [1e-4, 1e-3], "epochs": [2]}
    grid = grid_from_options(["tiny-vit"], ["digits", "faces"], ["lora"], ["4", "16"], [0], ["lr=1e-4,1e-3"])
    jobs = grid.jobs()
    assert len(jobs) == 2 * 2 * 2
    assert sorted({j.hparams["lr"] for j in jobs}) == [1e-4, 1e-3]
    assert sorted({j.shots for j in jobs}) == [4, 16]


@pytest.mark.parametrize("text, message", [
    ('[[block]]\nmodels=["a"]\ndatasets=["b"]\nmethods=[]', "empty"),
    ('[[block]]\nmodels=["a"]\ndatasets=["b"]\nmethods=["lora"]\nshots=[0]', "at least 1"),
    ('[[block]]\nmodels=["a"]\ndatasets=["b"]\nmethods=["lora"]\nhparams={lr=[inf]}', "finite"),
    ('[[block]]\nmodels=["a"]\ndatasets=["b"]\nmethods=["lora"]\ncolour="red"', "unknown key"),
    ('[run]\nmax_images=0\n[[block]]\nmodels=["a"]\ndatasets=["b"]\nmethods=["lora"]', "positive"),
    ('name="x"', r"no \[\[block\]\]"),
    ('[[block]\n', "not valid TOML"),
])
def test_bad_sweep_files_are_refused_with_one_line(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SweepSpecError, match=message):
        load_sweep_file(p)


def test_unknown_method_or_hyperparameter_is_refused_before_anything_starts(tmp_path):
    db = tmp_path / "h.db"
    bad = subprocess.run(sweep_cmd(write_spec(tmp_path, ["coop", "no-such-method"], [0]), str(db)),
                         capture_output=True, text=True, env={**os.environ, **sweep_env(tmp_path)}, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("Error:") and "no-such-method" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "sweeps").exists()  # nothing submitted


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    db = tmp_path / "h.db"
    out = run_sweep(write_spec(tmp_path, ["coop", "tpc_cma"], [0, 1]), str(db), tmp_path, "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)["plan"]
    assert plan["runs"] == 4 and plan["to_run"] == 4 and plan["already_recorded"] == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM sweep_jobs").fetchone() == (0,)
    con.close()


# ------------------------------------------------------------------------------- real sweeps


@pytest.mark.slow
def test_local_sweep_fills_the_history_then_resumes_by_skipping(tmp_path, history_url):
    spec = write_spec(tmp_path, ["coop", "tpc_cma"], [0, 1])
    out = run_sweep(spec, history_url, tmp_path, "--max-parallel", "2", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)["summary"]
    assert summary["counts"]["done"] == 4 and summary["counts"]["failed"] == 0
    keys = run_keys(history_url)
    assert len(keys) == 4 and len(set(keys)) == 4
    # Two worker processes shared the four jobs (submitit's local executor, not one process).
    assert len({w for _, w, _ in job_rows(history_url)}) == 2
    again = run_sweep(spec, history_url, tmp_path, "--max-parallel", "2", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    plan = json.loads(again.stdout)["plan"]
    assert plan["already_recorded"] == 4 and plan["to_run"] == 0
    assert len(run_keys(history_url)) == 4
    status = subprocess.run(advisor_cmd("sweep", "status", summary["sweep_id"], "--db", history_url, "--json"), capture_output=True, text=True,
                            env={**os.environ, **sweep_env(tmp_path)}, timeout=120)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["done"] == 4


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkilled_worker_shows_as_failed_and_a_rerun_completes_it_once(tmp_path):
    db = tmp_path / "h.db"
    url = f"sqlite:///{db}"
    spec = write_spec(tmp_path, ["coop"], [0])
    proc = subprocess.Popen(sweep_cmd(spec, str(db), "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **sweep_env(tmp_path)})

    def running_worker() -> bool:
        try:
            return any(s == "running" for s, _, _ in job_rows(url))
        except Exception:  # noqa: BLE001 - tables not created yet
            return False

    _wait_for(running_worker, 200, "a running job")
    pid = int(next(w for s, w, _ in job_rows(url) if s == "running").rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 1, err[-2000:]
    assert json.loads(out)["summary"]["counts"]["failed"] == 1
    assert run_keys(url) == []  # no partial row
    status = subprocess.run(advisor_cmd("sweep", "status", "--db", str(db), "--json"),
                            capture_output=True, text=True, env={**os.environ, **sweep_env(tmp_path)}, timeout=120)
    assert json.loads(status.stdout)["sweeps"][0]["failed"] == 1
    rerun = run_sweep(spec, str(db), tmp_path, "--json")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(run_keys(url)) == 1
    assert [a for _, _, a in job_rows(url)] == [2]  # the same job, its second attempt


@pytest.mark.slow
def test_killed_sweep_resumes_and_records_each_configuration_once(tmp_path):
    db = tmp_path / "h.db"
    url = f"sqlite:///{db}"
    spec = write_spec(tmp_path, ["coop", "tpc_cma"], [0, 1, 2])
    proc = subprocess.Popen(sweep_cmd(spec, str(db)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **sweep_env(tmp_path)}, start_new_session=True)

    def some_done() -> bool:
        try:
            return len(run_keys(url)) >= 2
        except Exception:  # noqa: BLE001
            return False

    _wait_for(some_done, 300, "two finished runs")
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, like a closed terminal or a stopped machine
    proc.communicate(timeout=60)
    done_before = len(run_keys(url))
    assert 2 <= done_before < 6
    rerun = run_sweep(spec, str(db), tmp_path, "--json")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    plan = json.loads(rerun.stdout)["plan"]
    assert plan["already_recorded"] >= done_before
    keys = run_keys(url)
    assert len(keys) == 6 and len(set(keys)) == 6


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_at_start_is_one_line_and_submits_nothing(tmp_path):
    url = f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/advisor"
    out = run_sweep(write_spec(tmp_path, ["coop"], [0]), url, tmp_path, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in out.stderr
    assert not (tmp_path / "home" / "sweeps").exists()


@pytest.mark.slow
def test_database_gone_when_the_run_ends_spools_it_and_import_spool_adds_it(tmp_path):
    """A real PostgreSQL server stopped while the run trains: the measured run is spooled, then
    imported once the server is back; importing again adds nothing."""
    from pg import PostgresServer, Unavailable

    from advisor.errors import HistoryError
    from advisor.history import open_history
    from advisor.history.spool import import_spool, spooled_files
    from advisor.runner import RunSpooled, run_finetune
    from advisor.specs import DatasetSpec, ModelSpec

    try:
        server = PostgresServer()
    except Unavailable as exc:
        if os.environ.get("ADVISOR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required: {exc}")
        pytest.skip(str(exc))
    try:
        url = server.new_database()
        open_history(url).close()
        stopped = []

        def stop_server_once(step: int, total: int, loss: float) -> None:
            if not stopped:
                import subprocess as sp

                sp.run(server.as_user + [server.pg_ctl, "-D", str(server.data), "-m", "fast", "stop"],
                       capture_output=True, timeout=60)
                stopped.append(True)

        spool = tmp_path / "spool"
        with pytest.raises(RunSpooled) as info:
            run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", shots=2, seed=0, hparams={"epochs": 1},
                         ood=["faces"], max_test=40, max_ood=20, signals=False, db=url, spool_dir=str(spool),
                         save_adapter=False, quiet=True, on_step=stop_server_once)
        assert "import-spool" in str(info.value) and len(str(info.value).splitlines()) == 1
        files = spooled_files(spool)
        assert files == [info.value.path]
        with pytest.raises(HistoryError):
            open_history(url)
        server._run([server.pg_ctl, "-D", str(server.data), "-l", str(server.base / "server.log"), "-w", "start",
                     "-o", f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.base}"])
        with open_history(url) as h:
            assert h.count() == 0
            result = import_spool(h, spool)
            assert [r["status"] for r in result] == ["imported"] and h.count() == 1
            assert spooled_files(spool) == []
            assert import_spool(h, spool) == [] and h.count() == 1
            row = h.runs()[0]
            assert row["method"] == "coop" and row["seed"] == 0
    finally:
        server.stop()


def test_slurm_executor_submits_one_job_array_with_the_requested_resources(tmp_path):
    """submitit's real SlurmExecutor against a fake ``sbatch`` on PATH that records the batch
    file it was given (no cluster here); --detach returns after submitting."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch-calls"
    record.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {record}/batch-$$.sh\necho \"$@\" > {record}/args-$$\n"
                      "echo 'Submitted batch job 4242'\n")
    sbatch.chmod(0o755)
    srun = bin_dir / "srun"  # submitit checks that the cluster's srun exists
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    db = tmp_path / "h.db"
    env = {**os.environ, **sweep_env(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(sweep_cmd(write_spec(tmp_path, ["coop", "tpc_cma"], [0, 1]), str(db), "--executor", "slurm",
                                   "--slurm-partition", "gpu", "--slurm-time", "0:30:00", "--gpus-per-run", "1",
                                   "--max-parallel", "3", "--detach"),
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SQLite file" in out.stderr  # cluster workers need a shared database: said, not silently accepted
    batches = list(record.glob("batch-*.sh"))
    assert len(batches) == 1  # one array, not one submission per run
    text = batches[0].read_text()
    assert "#SBATCH --array=0-3%3" in text
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=30" in text and "#SBATCH --gpus-per-node=1" in text
    assert "Watch with: advisor sweep status" in out.stdout
    status = subprocess.run(advisor_cmd("sweep", "status", "--db", str(db), "--json"), capture_output=True, text=True,
                            env=env, timeout=120)
    assert json.loads(status.stdout)["sweeps"][0]["queued"] == 4


def test_advisor_run_refuses_an_unreachable_history_before_training(tmp_path):
    url = f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/advisor"
    spool = tmp_path / "spool"
    out = subprocess.run(advisor_cmd("run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop",
                                     "--shots", "2", "--hparam", "epochs=1", "--db", url),
                         capture_output=True, text=True, timeout=200,
                         env={**os.environ, **sweep_env(tmp_path), "ADVISOR_SPOOL": str(spool)})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "127.0.0.1" in lines[0]
    assert not spool.exists()  # refused before any training: nothing was measured, nothing spooled


def test_workers_claim_their_own_pair_first_and_avoid_a_pair_another_worker_is_on(history_url):
    """Claim order: stage, this worker's pair, pairs nobody runs, plan order (real database)."""
    from advisor.history import open_history
    from advisor.history.sweeps import claim, finish, register_sweep

    jobs = []
    for stage, pair, n in ((0, "a", 3), (0, "b", 2), (1, "a", 1)):
        for i in range(n):
            jobs.append((f"{stage}{pair}{i}", pair, stage, {"model": "m", "dataset": pair, "method": f"x{i}",
                                                           "shots": 16, "seed": stage, "hparams": {}}))
    with open_history(history_url) as h:
        register_sweep(h, "sw-test", {"name": "t"}, "local", jobs, 60.0)
        first = claim(h, "sw-test", "w1")
        second = claim(h, "sw-test", "w2")
        assert (first["pair"], second["pair"]) == ("a", "b")  # w2 avoids the pair w1 is loading
        finish(h, first["id"], "w1", "r1")
        third = claim(h, "sw-test", "w1", prefer_pair="a")
        assert third["pair"] == "a" and third["stage"] == 0
        fourth = claim(h, "sw-test", "w2", prefer_pair="b")
        assert fourth["pair"] == "b" and fourth["stage"] == 0
        rest = [claim(h, "sw-test", "w3") for _ in range(3)]
        assert [(j["stage"], j["pair"]) for j in rest[:2]] == [(0, "a"), (1, "a")] and rest[2] is None
