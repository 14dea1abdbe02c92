"""Concurrent writers queue instead of failing (SQLite: WAL + busy timeout + BEGIN IMMEDIATE;
PostgreSQL: unique keys + retried transactions): every row lands, none twice."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from conftest import popen_advisor

from advisor.history import SCHEMA_VERSION

WRITERS = 4
ROWS_EACH = 25


def _write_file(path: Path, writer: int) -> list[str]:
    ids = []
    with open(path, "w", encoding="utf-8") as f:
        for j in range(ROWS_EACH):
            rid = f"w{writer}-{j:02d}"
            ids.append(rid)
            f.write(json.dumps({
                "run_id": rid, "model": "tiny-vit", "dataset": "digits", "method": ["lora", "coop"][j % 2],
                "seed": writer * 1000 + j, "id_acc_before": 0.25, "id_acc_after": round(0.5 + j / 100, 2),
                "signal.iimm": 0.125 * (writer + 1), "model.image_size": 64, "dataset.fingerprint": "fp",
            }) + "\n")
    return ids


def _has_open(pid: int, db: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(db) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_four_cli_writers_at_once_on_a_fresh_file(tmp_path):
    db = tmp_path / "shared.db"
    expected = []
    files = []
    for w in range(WRITERS):
        files.append(tmp_path / f"writer{w}.jsonl")
        expected += _write_file(files[-1], w)

    # An empty database whose write lock we hold until every writer has it open: all four find
    # it unmigrated, queue for the lock, and exactly one of them migrates it.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    procs = [popen_advisor("history", "add", str(f), "--db", str(db)) for f in files]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and os.path.isdir("/proc/self/fd"):
            if all(_has_open(p.pid, db) or p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert out.strip() == f"Added {ROWS_EACH} runs to {db}"

    con = sqlite3.connect(db)
    ids = [r[0] for r in con.execute("SELECT run_id FROM runs")]
    n_models = con.execute("SELECT count(*) FROM models").fetchone()[0]
    n_sets = con.execute("SELECT count(*) FROM signal_sets").fetchone()[0]
    migrations = [r[0] for r in con.execute("SELECT name FROM schema_migrations")]
    con.close()
    assert len(migrations) == SCHEMA_VERSION == len(set(migrations))
    assert len(ids) == WRITERS * ROWS_EACH
    assert sorted(ids) == sorted(expected)
    assert n_models == 1  # upserted once, not once per writer
    assert n_sets == WRITERS  # one distinct signal set per writer


# --------------------------------------------------------------------------- 8 x 50 record_run, both backends

N_PROCS = 8
RUNS_EACH = 50
RETRIES_EACH = 10  # runs of the next writer recorded again at the same time: a retry, never a second row

# One writer process: waits for the start signal, then records its runs one transaction each
# through the public API and prints {seed: run_id} for every run it recorded or retried.
WRITER = r"""
import json, os, sys, time
from pathlib import Path
from advisor.history import open_history
from advisor.specs import RunResult

url, writer, n_procs, each, retries, sync = sys.argv[1], *map(int, sys.argv[2:6]), Path(sys.argv[6])

def run(seed):
    owner = seed // each
    return RunResult(
        model="tiny-vit", pretrained=None, dataset=["digits", "textile"][seed % 2], method=["lora", "coop"][seed % 3 % 2],
        shots=4, seed=seed, hparams={"lr": 0.001}, split_hash="s", id_acc_before=0.25, id_acc_after=0.5 + (seed % 40) / 100,
        ood_before={}, ood_after={}, gap_before=None, gap_after=None, wall_time_s=1.0, train_images_per_s=None,
        peak_memory_mb=None, trainable_params=10, device="cpu", provenance={"writer": owner},
        signals={"iimm": 0.125 * (owner + 1)}, signal_versions={"iimm": "1"},
        model_desc={"image_size": 64}, dataset_desc={"fingerprint": "fp"},
    )

(sync / f"ready-{writer}").touch()
while not (sync / "go").exists():
    time.sleep(0.005)
mine = list(range(writer * each, (writer + 1) * each))
nxt = (writer + 1) % n_procs
theirs = list(range(nxt * each, nxt * each + retries))
ids = {}
with open_history(url) as h:  # a fresh database: all writers race to migrate it
    for seed in [s for pair in zip(mine, theirs + [None] * each) for s in pair if s is not None]:
        ids[seed] = h.record_run(run(seed))
print(json.dumps(ids))
"""


def test_eight_processes_record_fifty_runs_each_at_once(history_url, tmp_path):
    """Issue 10's fault test: 8 processes x 50 ``record_run`` at once on a fresh database, each
    also retrying 10 of another writer's runs while that writer records them: exactly 400 rows,
    every configuration once, every retry answered with the first attempt's id, nothing on
    stderr, on SQLite and on PostgreSQL."""
    import subprocess
    import sys

    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, history_url, str(w), str(N_PROCS), str(RUNS_EACH),
                               str(RETRIES_EACH), str(sync)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(N_PROCS)]
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < N_PROCS and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        (sync / "go").touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    answered: dict[int, set[str]] = {}
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert err == ""  # no error, no warning surfaced to the user
        for seed, rid in json.loads(out).items():
            answered.setdefault(int(seed), set()).add(rid)

    from sqlalchemy import create_engine, text

    engine = create_engine(history_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seed, run_id, config_hash FROM runs")).all()
        n_models = conn.execute(text("SELECT count(*) FROM models")).scalar_one()
        n_datasets = conn.execute(text("SELECT count(*) FROM datasets")).scalar_one()
        migrations = [r[0] for r in conn.execute(text("SELECT name FROM schema_migrations"))]
    engine.dispose()
    assert len(rows) == N_PROCS * RUNS_EACH == 400
    assert sorted(r.seed for r in rows) == list(range(400))  # each configuration exactly once
    assert len({(r.config_hash, r.seed) for r in rows}) == 400 and len({r.run_id for r in rows}) == 400
    stored = {r.seed: r.run_id for r in rows}
    assert set(answered) == set(stored)
    for seed, ids in answered.items():  # the owner and the retrying writer got the same id
        assert ids == {stored[seed]}, seed
    assert sum(len(v) for v in answered.values()) == 400  # sets: retries collapse onto the owner's id
    assert n_models == 1 and n_datasets == 2  # upserted once, not once per writer
    assert sorted(migrations) == sorted(set(migrations)) and len(migrations) == SCHEMA_VERSION
