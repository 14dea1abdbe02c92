"""Concurrent writers on one SQLite file queue (WAL + busy timeout + BEGIN IMMEDIATE) instead of
failing: every row lands, none twice."""

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
