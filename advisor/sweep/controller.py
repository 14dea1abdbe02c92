"""``advisor sweep``: plan a grid against the history, launch workers through an executor,
watch progress, retry failures, and summarise.

The controller never runs a job itself and never writes a run: workers do, each in its own
transaction. Its state lives in the history (``sweeps`` / ``sweep_jobs``), so it can be killed
at any point and started again with the same grid: finished runs are skipped, the rest run.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
    estimate_s: float | None  # summed whole-job cost of the runs still to do, from the history
    estimate_basis: str
    db_display: str
    running_elsewhere: int = 0
    estimate_wall_s: float | None = None  # the same spread over the workers
    workers: int = 1
    would_start: list[JobConfig] = field(default_factory=list)  # the jobs not yet in the history

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "name": self.grid.name, "runs": len(self.jobs),
                "already_recorded": self.recorded, "to_run": self.to_run, "running_elsewhere": self.running_elsewhere,
                "estimated_run_seconds": self.estimate_s, "estimated_wall_seconds": self.estimate_wall_s,
                "workers": self.workers, "estimate_basis": self.estimate_basis, "db": self.db_display,
                "would_start": [_job_row(j) for j in self.would_start]}


def _job_row(job: JobConfig) -> dict[str, Any]:
    return {"model": job.model, "pretrained": job.pretrained, "image_size": job.image_size, "dataset": job.dataset,
            "method": job.method, "shots": job.shots, "seed": job.seed, "hparams": dict(job.hparams)}


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


def validate_grid(jobs: list[JobConfig], shares_machine: bool = True) -> dict[str, dict[str, Any]]:
    """Every job checked as ``advisor run`` checks its request (``run_checks.check_request``:
    model, image size, shots, sample sizes, OOD sets, hyper-parameters against the tuner),
    its seed against the history's seed column and its device, before anything starts.
    Returns each job's resolved hyper-parameters (the tuner's defaults for the shots with the
    job's overrides), by job key."""
    from ..history.rows import BY_NAME
    from ..plugins import get_dataset_source, get_model_source, get_tuner
    from ..run_checks import check_request

    for name in sorted({j.method for j in jobs}):
        get_tuner(name)
    for name in sorted({j.model for j in jobs}):
        get_model_source(name)
    for name in sorted({j.dataset for j in jobs}):
        get_dataset_source(name)
    seed_col = BY_NAME["seed"]
    for seed in sorted({j.seed for j in jobs}):
        if not seed_col.minimum <= seed <= seed_col.maximum:
            raise SweepError(f"seed {seed} is outside what the history stores "
                             f"({int(seed_col.minimum)}..{seed_col.maximum})")
    for device in sorted({str(j.run["device"]) for j in jobs if j.run.get("device") not in (None, "", "auto")}):
        _check_device(device, shares_machine)
    resolved: dict[str, dict[str, Any]] = {}
    checked: dict[str, dict[str, Any]] = {}
    for j in jobs:
        combo = repr((j.model, j.pretrained, j.image_size, j.method, j.shots, j.seed, sorted(j.hparams.items()),
                      j.run.get("ood"), j.run.get("max_images"), j.run.get("max_ood")))
        if combo not in checked:  # names, types and bounds, as the tuner declares them
            checked[combo] = dict(check_request(j.request(), planning=True).resolved)
        resolved[j.key] = checked[combo]
    return resolved


def _check_device(device: str, shares_machine: bool) -> None:
    """A sweep's device: checked against this machine when the workers run here (as ``advisor
    run`` checks it); for workers elsewhere (a cluster), only that it names a device."""
    from ..config import DEVICE_KINDS, check_device

    if shares_machine:
        check_device(device, "device")
        return
    kind, _, index = device.strip().partition(":")
    if kind not in DEVICE_KINDS or (index and not (index.isascii() and index.isdigit())):
        raise SweepError(f"device {device!r} is not a device (use auto, cpu, cuda, cuda:N or mps)")


def _median_by(rows: list[tuple[Any, ...]], keys: list[Callable[[tuple[Any, ...]], Any]],
               value: Callable[[tuple[Any, ...]], float]) -> list[dict[Any, float]]:
    tables = []
    for key in keys:
        groups: dict[Any, list[float]] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(value(r))
        tables.append({k: statistics.median(v) for k, v in groups.items()})
    return tables


def _lookup(tables: list[dict[Any, float]], keys: list[Any], fallback: float) -> float:
    for table, key in zip(tables, keys):
        if key in table:
            return table[key]
    return fallback


def _estimate(history: Any, jobs: list[JobConfig], workers: int,
              one_process_per_job: bool) -> tuple[float | None, float | None, str]:
    """(summed seconds, seconds with ``workers`` at once, what it is based on) for ``jobs``.

    From the history's recorded phase timings (``provenance.timing``): per job the median
    train + evaluate + curve time of runs of the same model, dataset and method (else model and
    method, else method, else all); plus loading each (model, dataset) pair (``prepare_s``)
    once per worker that takes the pair, as a worker keeps its pair loaded (a Slurm array task
    is one worker per job). Without timings: finished sweep jobs' claim-to-done time per method,
    else the training time alone (said so)."""
    from ..history.sweeps import job_durations, phase_timings

    if not jobs:
        return 0.0, 0.0, "nothing to run"
    workers = max(1, min(workers, len(jobs)))
    rows = phase_timings(history, {j.method for j in jobs})
    if rows:
        per_job = _median_by(rows, [lambda r: (r[0], r[1], r[2]), lambda r: (r[0], r[2]), lambda r: r[2]],
                             lambda r: r[4])
        job_fallback = statistics.median(r[4] for r in rows)
        # A pair's load: the slowest prepare recorded for it (its first run in a process was cold).
        cold: dict[tuple[str, str], float] = {}
        for r in rows:
            cold[(r[0], r[1])] = max(cold.get((r[0], r[1]), 0.0), r[3])
        by_model: dict[str, list[float]] = {}
        for (model, _), secs in cold.items():
            by_model.setdefault(model, []).append(secs)
        load_fallback = statistics.median(cold.values())
        total = sum(_lookup(per_job, [(j.model, j.dataset, j.method), (j.model, j.method), j.method], job_fallback)
                    for j in jobs)
        pairs: dict[tuple[str, str], int] = {}
        for j in jobs:
            pairs[(j.model, j.dataset)] = pairs.get((j.model, j.dataset), 0) + 1
        loads = 0
        for (model, dataset), n in pairs.items():
            times = n if one_process_per_job else min(n, max(1, math.ceil(workers / len(pairs))))
            load = cold.get((model, dataset))
            if load is None:
                load = statistics.median(by_model[model]) if model in by_model else load_fallback
            total += times * load
            loads += times
        basis = (f"phase timings of {len(rows)} recorded run{'s' if len(rows) != 1 else ''}: "
                 "train + evaluate + curve per run, "
                 f"plus {loads} load{'s' if loads != 1 else ''} of a (model, dataset) pair, once per worker and pair")
        return total, total / workers, basis
    per_method: dict[str, list[float]] = {}
    for method, secs in job_durations(history):
        per_method.setdefault(method, []).append(secs)
    basis = "sweep jobs' claim-to-done time"
    if not per_method:
        basis = "training time of history runs (no run recorded its phases; load and evaluation excluded)"
        with history._read() as s:
            from sqlalchemy import select

            from ..history.schema import Run

            for method, wall in s.execute(select(Run.method, Run.wall_time_s).where(Run.wall_time_s.is_not(None))):
                per_method.setdefault(method, []).append(float(wall))
    if not per_method:
        return None, None, "no run in the history to estimate from"
    medians = {m: statistics.median(v) for m, v in per_method.items()}
    fallback = statistics.median(list(medians.values()))
    total = sum(medians.get(j.method, fallback) for j in jobs)
    n = sum(len(v) for v in per_method.values())
    return total, total / workers, f"median per method over {n} {basis}"


def plan_sweep(grid: SweepGrid, db: str | None, *, write: bool, stale_after_s: float,
               executor: str = "local", max_parallel: int = 1) -> tuple[SweepPlan, Any]:
    """Expand and validate the grid, check that the executor can launch here, reach the
    database (one-line error if it cannot be reached), and register (``write``) or just count
    (dry run) the sweep's jobs."""
    from ..history import open_history
    from ..history.sweeps import recorded_runs, register_sweep
    from ..plugins import get_executor

    jobs = grid.jobs()
    if not jobs:
        raise SweepError("the sweep grid has no runs")
    ex = get_executor(executor)
    resolved = validate_grid(jobs, shares_machine=ex.shares_machine)
    if write and ex.check is not None:
        ex.check()  # e.g. no sbatch here: refused before a single job is registered
    history = open_history(db)
    if write:
        history.check_writable()
    sweep_id = grid.sweep_id
    configs = [{**j.to_dict(), "resolved_hparams": resolved[j.key]} for j in jobs]
    found = recorded_runs(history, configs)  # once: registering and the estimate share it
    if write:
        staged = [(j.key, j.pair, stage, j.to_dict()) for stage, j in grid.staged_jobs()]
        counts = register_sweep(history, sweep_id, grid.to_dict(), executor, staged, stale_after_s, recorded=found)
        recorded, to_run, elsewhere = counts["recorded"], counts["to_run"], counts["running_elsewhere"]
    else:
        recorded, to_run, elsewhere = len(found), len(jobs) - len(found), 0
    pending = [j for i, j in enumerate(jobs) if i not in found]
    workers = max(1, min(max_parallel, len(pending) or 1))
    est, wall, basis = _estimate(history, pending, workers, one_process_per_job=not ex.shares_machine)
    return SweepPlan(grid, sweep_id, jobs, recorded, to_run, est, basis, history.display, elsewhere,
                     estimate_wall_s=wall, workers=workers, would_start=pending), history


def execute_sweep(plan: SweepPlan, history: Any, *, executor: str, max_parallel: int, retries: int,
                  log_dir: Path, spool_dir: str | None, options: dict[str, Any], progress: bool,
                  detach: bool = False, env: dict[str, str] | None = None, status_every_s: float | None = None,
                  poll_s: float = 1.0, echo: Callable[[str], None] | None = None) -> SweepSummary:
    """Launch workers for the queued jobs, watch them, retry failures ``retries`` times."""
    from ..history.sweeps import QUEUED, counts, requeue_failed_keys, sweep_status
    from ..plugins import get_executor
    from .executor import LaunchRequest
    from ..specs.executors import WorkerRequest
    from .worker import stale_after_seconds, work

    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ex = get_executor(executor)
    t0 = time.perf_counter()
    stale = stale_after_seconds()
    keys = [j.key for j in plan.jobs]
    template = WorkerRequest(sweep_id=plan.sweep_id, db=history.url, spool_dir=spool_dir,
                             log_folder=str(log_dir), env=dict(env or {}))
    bar = None
    if progress:  # the caller decided by the project's rule (advisor.terminal.progress_enabled)
        from ..terminal import progress_bar

        bar = progress_bar(plan.to_run, "sweep", "run")
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
            except Exception as exc:  # noqa: BLE001 - an engine that cannot start: one line, naming it
                raise _launch_failed(history, plan.sweep_id, executor, queued, exc) from None
            if detach:
                return SweepSummary(plan.sweep_id, counts(history, plan.sweep_id), seconds=time.perf_counter() - t0,
                                    detached=True)
            last_line = _watch(history, plan, handles, poll_s=poll_s, bar=bar, base_done=base_done,
                               status_every_s=status_every_s, last_line=last_line, say=say, t0=t0, stale=stale)
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


def _watch(history: Any, plan: SweepPlan, handles: Sequence[Any], *, poll_s: float, bar: Any, base_done: int,
           status_every_s: float | None, last_line: float, say: Callable[[str], None], t0: float,
           stale: float) -> float:
    """Watch one round of launched workers until they are done and no job is left running
    (progress bar, or a status line every ``status_every_s``); returns when the last status
    line was printed."""
    from ..history.sweeps import counts, reap_stale

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
            if counts(history, plan.sweep_id)["running"] == 0:
                return last_line
            # A job still "running": another live sweep process, or a worker that died
            # moments ago whose heartbeat is not stale yet. Wait for it either way.


def _launch_failed(history: Any, sweep_id: str, executor: str, keys: list[str], exc: Exception) -> SweepError:
    """The error of a launch that failed (``sbatch`` refused the array, a local worker could not
    start): the jobs it was given that are still queued become failed with that error, so
    ``advisor sweep status`` shows them and the next ``advisor sweep`` re-queues them."""
    msg = _first_line(exc)
    try:
        n = _fail_queued(history, sweep_id, keys, f"not launched: executor {executor!r} could not launch it: {msg}")
        then = f"{n} job{'' if n == 1 else 's'} marked failed; run the same sweep again to retry them"
    except Exception as also:  # noqa: BLE001 - the history went too: say so, keep the launch's reason
        then = f"its jobs stay queued, as they could not be marked failed: {_first_line(also)}"
    return SweepError(f"executor {executor!r} could not launch the sweep's jobs: {msg} ({then})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail_queued(history: Any, sweep_id: str, keys: list[str], error: str) -> int:
    """Mark the jobs among ``keys`` that are still queued failed with ``error``; how many."""
    from sqlalchemy import update

    from ..history.schema import SweepJob
    from ..history.sweeps import FAILED, QUEUED

    def tx(s: Any) -> int:
        n = 0
        for i in range(0, len(keys), 500):  # bounded IN lists, whatever the sweep's size
            res = s.execute(update(SweepJob).where(
                SweepJob.sweep_id == sweep_id, SweepJob.status == QUEUED, SweepJob.job_key.in_(keys[i:i + 500])
            ).values(status=FAILED, error=error[:2000], finished_at=time.time(), worker=None))
            n += int(res.rowcount or 0)
        return n

    return int(history._write(tx))


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
