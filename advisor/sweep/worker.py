"""The sweep worker: the function an executor runs in each job process.

It claims queued jobs from the history's ``sweep_jobs`` table (one named job for a Slurm array
task; "the next one, same pair first" for a local worker), runs each with the code behind
``advisor run``, records the run in one transaction and marks the job done. A background thread
keeps the job's heartbeat fresh while it trains, so a killed worker shows up as a stale job.
If the database cannot be reached when the run is finished, the run goes to the spool instead
(``advisor history import-spool``): nothing measured is lost.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from typing import Any

from ..session import Session
from ..specs.executors import WorkerRequest
from .grid import JobConfig

#: Seconds between heartbeats; a running job is stale after ``STALE_FACTOR`` missed beats.
DEFAULT_HEARTBEAT_S = 15.0
STALE_FACTOR = 4.0


def heartbeat_seconds() -> float:
    """``ADVISOR_SWEEP_HEARTBEAT`` (seconds) or 15."""
    env = os.environ.get("ADVISOR_SWEEP_HEARTBEAT")
    if not env:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(env)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        from ..errors import AdvisorError

        raise AdvisorError(f"ADVISOR_SWEEP_HEARTBEAT={env!r} is not a positive number of seconds")
    return value


def stale_after_seconds() -> float:
    return heartbeat_seconds() * STALE_FACTOR


class _Heartbeat(threading.Thread):
    def __init__(self, history: Any, job_id: int, worker: str, every_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.history, self.job_id, self.worker, self.every_s = history, job_id, worker, every_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        from ..history.sweeps import heartbeat

        while not self._stop_event.wait(self.every_s):
            try:
                heartbeat(self.history, self.job_id, self.worker)
            except Exception:  # noqa: BLE001 - a missed beat is only a beat; the run goes on
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _log_path(folder: str | None) -> str | None:
    """This job's stderr file as submitit names it (where the traceback of a failure went)."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        return str(env.paths.stderr).replace("%t", str(env.global_rank))
    except Exception:  # noqa: BLE001 - not inside a submitit job (tests call work() directly)
        return None


def execute(config: JobConfig, db: str, spool_dir: str | None, provenance: dict[str, Any],
            session: Session | None = None) -> Any:
    """Run and record one planned job with the code behind ``advisor run`` (a run the history
    cannot take is spooled and raises ``RunSpooled``); returns the RunResult. ``session``: what
    the worker has loaded for its earlier runs (``advisor.session``), reused."""
    from ..run_checks import check_request
    from ..runner import run_request

    request = config.request(record=True, db=db, spool_dir=spool_dir, provenance_extra=provenance, quiet=True)
    return run_request(check_request(request), session)


def work(req: WorkerRequest) -> dict[str, Any]:
    """Claim and run jobs until none is left; returns counts (done, failed, spooled)."""
    os.environ.update(req.env)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ..errors import AdvisorError, HistoryError
    from ..history import open_history
    from ..runner import RunSpooled
    from ..history.sweeps import claim, fail, finish, requeue

    if req.threads:
        torch.set_num_threads(req.threads)
    history = open_history(req.db)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    log = _log_path(req.log_folder)
    every = heartbeat_seconds()
    tally = {"done": 0, "failed": 0, "spooled": 0}
    last_pair: str | None = None
    session = Session()  # one for all this worker's runs: a pair's model, test sets and signals load once
    while True:
        job = claim(history, req.sweep_id, worker, last_pair, req.keys)
        if job is None:
            break
        config = JobConfig.from_dict(job["config"])
        print(f"[advisor sweep] {worker} start {config.label()}", file=sys.stderr, flush=True)
        beat = _Heartbeat(history, job["id"], worker, every)
        beat.start()
        t0 = time.perf_counter()
        sweep_note = {"sweep": {"sweep_id": req.sweep_id, "job_key": job["job_key"], "attempt": job["attempts"]}}
        try:
            run = execute(config, req.db, req.spool_dir, sweep_note, session)
        except (KeyboardInterrupt, SystemExit):
            beat.stop()
            requeue(history, job["id"])
            raise
        except RunSpooled as exc:
            beat.stop()
            print(f"Warning: {exc}", file=sys.stderr, flush=True)
            tally["spooled"] += 1
            try:
                fail(history, job["id"], worker, f"spooled: {exc.path}", log)
            except HistoryError:
                pass
            continue
        except AdvisorError as exc:
            beat.stop()
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"[advisor sweep] FAILED {config.label()}: {msg}", file=sys.stderr, flush=True)
            fail(history, job["id"], worker, msg, log)
            tally["failed"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - a crashing run fails its job, not the sweep
            beat.stop()
            traceback.print_exc()
            fail(history, job["id"], worker, f"{type(exc).__name__}: {exc}".splitlines()[0], log)
            tally["failed"] += 1
            continue
        run_id = run.run_id
        beat.stop()
        finish(history, job["id"], worker, run_id)
        tally["done"] += 1
        last_pair = job["pair"]
        print(f"[advisor sweep] {worker} done  {config.label()} -> {run_id} "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    history.close()
    return tally
