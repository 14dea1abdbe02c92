"""``advisor sweep``: plan a grid against the history, launch workers through an executor,
watch progress, retry failures, and summarise.

The controller never runs a job itself and never writes a run: workers do, each in its own
transaction. Its state lives in the history (``sweeps`` / ``sweep_jobs``), so it can be killed
at any point and started again with the same grid: finished runs are skipped, the rest run.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import AdvisorError
from .grid import JobConfig, SweepGrid


class SweepError(AdvisorError):
    """A sweep that cannot start (bad grid, unreachable database, unknown executor)."""


@dataclass
class SweepPlan:
    grid: SweepGrid
    sweep_id: str
    jobs: list[JobConfig]
    recorded: int  # already in the history: skipped
    to_run: int
    estimate_s: float | None  # summed per-run cost of the runs still to do, from the history
    estimate_basis: str
    db_display: str
    running_elsewhere: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "name": self.grid.name, "runs": len(self.jobs),
                "already_recorded": self.recorded, "to_run": self.to_run, "running_elsewhere": self.running_elsewhere,
                "estimated_run_seconds": self.estimate_s, "estimate_basis": self.estimate_basis, "db": self.db_display}


@dataclass
class SweepSummary:
    sweep_id: str
    counts: dict[str, int]
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    detached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "counts": self.counts, "failed": self.failed,
                "seconds": round(self.seconds, 1), "detached": self.detached}


def validate_grid(jobs: list[JobConfig]) -> None:
    """Every method, model, dataset and hyper-parameter name known, before anything starts."""
    from ..plugins import get_dataset_source, get_model_source, get_tuner

    for name in sorted({j.method for j in jobs}):
        get_tuner(name)
    for name in sorted({j.model for j in jobs}):
        get_model_source(name)
    for name in sorted({j.dataset for j in jobs}):
        get_dataset_source(name)
    checked: set[str] = set()
    for j in jobs:
        combo = j.method + repr(sorted(j.hparams.items()))
        if combo not in checked:  # names, types and bounds, as the tuner declares them
            checked.add(combo)
            get_tuner(j.method).check_hparams(j.hparams)


def _estimate(history: Any, jobs: list[JobConfig]) -> tuple[float | None, str]:
    """Sum of the expected whole-run seconds: finished sweep jobs' claim-to-done time per method
    when there are any, else the history's median training time per (method, shots)."""
    from ..history.sweeps import job_durations

    per_method: dict[str, list[float]] = {}
    for method, secs in job_durations(history):
        per_method.setdefault(method, []).append(secs)
    basis = "sweep jobs"
    if not per_method:
        basis = "training time of history runs (no sweep has finished a job yet; load and evaluation excluded)"
        with history._read() as s:
            from sqlalchemy import select

            from ..history.schema import Run

            for method, wall in s.execute(select(Run.method, Run.wall_time_s).where(Run.wall_time_s.is_not(None))):
                per_method.setdefault(method, []).append(float(wall))
    if not per_method:
        return None, "no run in the history to estimate from"
    medians = {m: statistics.median(v) for m, v in per_method.items()}
    fallback = statistics.median(list(medians.values()))
    total = sum(medians.get(j.method, fallback) for j in jobs)
    n = sum(len(v) for v in per_method.values())
    return total, f"median per method over {n} {basis}"


def plan_sweep(grid: SweepGrid, db: str | None, *, write: bool, stale_after_s: float,
               executor: str = "local") -> tuple[SweepPlan, Any]:
    """Expand and validate the grid, reach the database (one-line error if it cannot be
    reached), and register (``write``) or just count (dry run) the sweep's jobs."""
    from ..history import open_history
    from ..history.sweeps import recorded_runs, register_sweep

    jobs = grid.jobs()
    if not jobs:
        raise SweepError("the sweep grid has no runs")
    validate_grid(jobs)
    history = open_history(db)
    if write:
        history.check_writable()
    sweep_id = grid.sweep_id
    found = recorded_runs(history, [j.to_dict() for j in jobs])  # once: registering and the estimate share it
    if write:
        staged = [(j.key, j.pair, stage, j.to_dict()) for stage, j in grid.staged_jobs()]
        counts = register_sweep(history, sweep_id, grid.to_dict(), executor, staged, stale_after_s, recorded=found)
        recorded, to_run, elsewhere = counts["recorded"], counts["to_run"], counts["running_elsewhere"]
    else:
        recorded, to_run, elsewhere = len(found), len(jobs) - len(found), 0
    est, basis = _estimate(history, [j for i, j in enumerate(jobs) if i not in found])
    return SweepPlan(grid, sweep_id, jobs, recorded, to_run, est, basis, history.display, elsewhere), history


def execute_sweep(plan: SweepPlan, history: Any, *, executor: str, max_parallel: int, retries: int,
                  log_dir: Path, spool_dir: str | None, options: dict[str, Any], progress: bool,
                  detach: bool = False, env: dict[str, str] | None = None, status_every_s: float | None = None,
                  poll_s: float = 1.0, echo: Callable[[str], None] | None = None) -> SweepSummary:
    """Launch workers for the queued jobs, watch them, retry failures ``retries`` times."""
    from ..history.sweeps import QUEUED, counts, reap_stale, requeue_failed_keys, sweep_status
    from ..plugins import get_executor
    from .executor import LaunchRequest
    from .worker import WorkerRequest, stale_after_seconds, work

    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ex = get_executor(executor)
    t0 = time.perf_counter()
    stale = stale_after_seconds()
    keys = [j.key for j in plan.jobs]
    template = WorkerRequest(sweep_id=plan.sweep_id, db=history.url, spool_dir=spool_dir,
                             log_folder=str(log_dir), env=dict(env or {}))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.to_run, desc="sweep", unit="run", file=sys.stderr, dynamic_ncols=True)
    start = counts(history, plan.sweep_id)
    base_done = start["done"] + start["skipped"]
    handles: list[Any] = []
    last_line = time.perf_counter()
    try:
        started = time.time()
        round_no = 0
        while round_no <= retries:
            queued = _queued_keys(history, plan.sweep_id, keys, QUEUED)
            if not queued:
                break
            if round_no:
                say(f"Retrying {len(queued)} failed run(s) (retry {round_no} of {retries}).")
            try:
                handles = ex.launch(LaunchRequest(worker=work, template=template, keys=queued,
                                                  max_parallel=max_parallel, folder=log_dir, options=options))
            except AdvisorError:
                raise
            except Exception as exc:  # noqa: BLE001 - an engine that cannot start: one line, naming it
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SweepError(f"executor {executor!r} could not launch the sweep's jobs: {msg}") from None
            if detach:
                return SweepSummary(plan.sweep_id, counts(history, plan.sweep_id), seconds=time.perf_counter() - t0,
                                    detached=True)
            while True:
                time.sleep(poll_s)
                c = counts(history, plan.sweep_id)
                if bar is not None:
                    bar.n = max(0, c["done"] + c["skipped"] - base_done)
                    bar.set_postfix(done=c["done"], failed=c["failed"], running=c["running"], refresh=False)
                    bar.refresh()
                elif status_every_s and time.perf_counter() - last_line >= status_every_s:
                    last_line = time.perf_counter()
                    say(f"sweep {plan.sweep_id}: {c['done'] + c['skipped'] - base_done}/{plan.to_run} done, "
                        f"{c['failed']} failed, {c['running']} running, {c['queued']} queued "
                        f"({_elapsed(time.perf_counter() - t0)})")
                if all(h.done() for h in handles):
                    reap_stale(history, plan.sweep_id, stale)
                    c = counts(history, plan.sweep_id)
                    if c["running"] == 0:
                        break
                    # A job still "running": another live sweep process, or a worker that died
                    # moments ago whose heartbeat is not stale yet. Wait for it either way.
            failed = sweep_status(history, plan.sweep_id, stale)["failed"]
            # A job another sweep process was running when this one started, whose worker has
            # died since (a killed earlier sweep): it was never tried here, so run it now.
            orphans = [j["job_key"] for j in failed if (j["started_at"] or started) < started]
            if orphans:
                requeue_failed_keys(history, plan.sweep_id, orphans)
                continue
            if round_no < retries and failed:
                requeue_failed_keys(history, plan.sweep_id, [j["job_key"] for j in failed])
            round_no += 1
    except KeyboardInterrupt:
        for h in handles:
            try:
                h.cancel()
            except Exception:  # noqa: BLE001
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
    info = sweep_status(history, plan.sweep_id, stale)
    failed = [{"run": JobConfig.from_dict(j["config"]).label(), "error": j["error"], "log": j["log_path"],
               "attempts": j["attempts"]} for j in info["failed"]]
    return SweepSummary(plan.sweep_id, info["counts"], failed, time.perf_counter() - t0)


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _queued_keys(history: Any, sweep_id: str, keys: list[str], status: str) -> list[str]:
    from sqlalchemy import select

    from ..history.schema import SweepJob

    with history._read() as s:
        rows = set(s.scalars(select(SweepJob.job_key).where(SweepJob.sweep_id == sweep_id, SweepJob.status == status)))
    return [k for k in keys if k in rows]
