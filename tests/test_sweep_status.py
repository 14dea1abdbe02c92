"""``advisor sweep status`` at scale (issue 25): the counts come from one SQL aggregate and only
the printed jobs are read, with the same answer, text and ``--json``, as reading every job of
the sweep through the ORM (the code before issue 25, kept here as the reference)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from advisor.history import open_history

NOW = 1_800_000_000.0
STALE_S = 300.0


def _reference_status(h: Any, sweep_id: str, stale_after_s: float) -> dict[str, Any]:
    """``sweep_status`` as it was before issue 25: every job of the sweep read as an ORM object."""
    from sqlalchemy import select

    from advisor.history.schema import Sweep, SweepJob
    from advisor.history.sweeps import FAILED, RUNNING, STATUSES, _job_dict, _latest

    now = time.time()
    with h._read() as s:
        sw = s.scalar(select(Sweep).where(Sweep.sweep_id == sweep_id))
        jobs = list(s.scalars(select(SweepJob).where(SweepJob.sweep_id == sw.sweep_id).order_by(SweepJob.position)))
        info = {"sweep_id": sw.sweep_id, "name": sw.name, "executor": sw.executor, "created_at": sw.created_at,
                "updated_at": _latest(sw.updated_at, *(t for j in jobs
                                                       for t in (j.started_at, j.heartbeat_at, j.finished_at))),
                "jobs": len(jobs)}
    tally = {k: 0 for k in STATUSES}
    failed, running = [], []
    for j in jobs:
        status = j.status
        d = _job_dict(j)
        if status == RUNNING and (j.heartbeat_at or 0) < now - stale_after_s:
            status = FAILED
            d["error"] = f"worker stopped (heartbeat stale for {now - (j.heartbeat_at or now):.0f} s)"
        d["status"] = status
        tally[status] += 1
        if status == FAILED:
            failed.append(d)
        elif status == RUNNING:
            d["heartbeat_age_s"] = round(now - (j.heartbeat_at or now), 1)
            running.append(d)
    info["counts"] = tally
    info["failed"] = failed
    info["running"] = running
    return info


def _mixed_sweep(h: Any, n: int) -> str:
    """A sweep of ``n`` jobs in every state, running ones fresh, stale and without a heartbeat,
    the states interleaved in plan order."""
    from sqlalchemy import update

    from advisor.history.schema import SweepJob
    from advisor.history.sweeps import register_sweep

    jobs = [(f"k{i:05d}", f"m|d{i % 4}", i % 3, {"model": "lit-offline", "dataset": "fashion-mnist",
                                                 "method": ("lora", "coop", "linear_probe")[i % 3], "shots": 16,
                                                 "seed": i, "hparams": {"lr": 0.001 * (1 + i % 2)}})
            for i in range(n)]
    register_sweep(h, "sw-mixed", {"name": "mixed"}, "local", jobs, STALE_S, recorded={})
    plan = {3: dict(status="running", worker="w1", heartbeat_at=NOW - 5, started_at=NOW - 50),
            7: dict(status="running", worker="w2", heartbeat_at=NOW - 4000, started_at=NOW - 5000),
            8: dict(status="running", worker="w3", heartbeat_at=None, started_at=NOW - 10),
            11: dict(status="failed", worker="w1", error="CUDA out of memory", log_path="/logs/11.err",
                     started_at=NOW - 900, finished_at=NOW - 800),
            12: dict(status="failed", worker="w2", error="boom", log_path=None, finished_at=NOW - 700),
            20: dict(status="done", run_id="r20", started_at=NOW - 3000, finished_at=NOW - 2, heartbeat_at=NOW - 2),
            21: dict(status="skipped", run_id="r21"),
            n - 1: dict(status="running", worker="w4", heartbeat_at=NOW - 1, started_at=NOW - 1)}

    def tx(s: Any) -> None:
        for pos, values in plan.items():
            s.execute(update(SweepJob).where(SweepJob.sweep_id == "sw-mixed", SweepJob.position == pos).values(**values))

    h._write(tx)
    return "sw-mixed"


@pytest.mark.parametrize("history_url", ["sqlite", "postgresql"], indirect=True)
def test_sweep_status_aggregates_in_sql_and_answers_as_reading_every_job(history_url: str, cli: Any,
                                                                          monkeypatch: Any) -> None:
    from advisor.history.sweeps import sweep_status

    monkeypatch.setattr(time, "time", lambda: NOW)
    monkeypatch.setenv("ADVISOR_SWEEP_HEARTBEAT", "60")
    with open_history(history_url) as h:
        sid = _mixed_sweep(h, 500)
        expected = _reference_status(h, sid, STALE_S)
        got = sweep_status(h, sid, STALE_S)
        assert json.dumps(got) == json.dumps(expected)  # the same values in the same order
        assert got["counts"] == {"queued": 492, "running": 2, "done": 1, "failed": 4, "skipped": 1}
        assert [j["position"] for j in got["failed"]] == [7, 8, 11, 12]
        assert sweep_status(h, "sw-mi", STALE_S) == got  # a unique prefix names the sweep

        from advisor.history import sweeps as sweeps_module

        monkeypatch.setattr(sweeps_module, "sweep_status", _reference_status)
        before = [cli("sweep", "status", sid, "--db", history_url),
                  cli("sweep", "status", sid, "--json", "--db", history_url)]
        monkeypatch.undo()
        monkeypatch.setattr(time, "time", lambda: NOW)
        monkeypatch.setenv("ADVISOR_SWEEP_HEARTBEAT", "60")
        after = [cli("sweep", "status", sid, "--db", history_url),
                 cli("sweep", "status", sid, "--json", "--db", history_url)]
    assert [r.exit_code for r in before + after] == [0, 0, 0, 0]
    assert after[0].output == before[0].output and "492 queued, 4 failed" in after[0].output
    assert after[1].output == before[1].output
