"""Sweep bookkeeping in the history database: which planned runs are queued, running (with a
heartbeat), done or failed, so a sweep can be watched (``advisor sweep status``) and resumed.

Every state change is one short write transaction. Claiming a job is atomic: ``BEGIN IMMEDIATE``
on SQLite, ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two workers never take the
same job. The ``runs`` table stays the truth about what was measured: a job whose run is in the
history counts as done whatever its row says (a worker may die between recording its run and
marking its job).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, aliased

from ..errors import HistoryError
from .schema import Dataset, Model, Run, Sweep, SweepJob
from .store import History

QUEUED, RUNNING, DONE, FAILED, SKIPPED = "queued", "running", "done", "failed", "skipped"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, SKIPPED)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recorded_runs(h: History, configs: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Index of ``configs`` (JobConfig dicts) -> run_id of a complete run already in the history.

    A run matches when model name, pretrained tag, working image size (if the job fixes one),
    dataset, method, shots and seed agree and its stored hyper-parameters (the tuner stores the
    ones it resolved) agree with the job's configuration:

    - with ``resolved_hparams`` in the config (the tuner's defaults for the shots with the job's
      overrides, as ``advisor.run_checks.check_run_options`` resolves them): every key of it,
      except keys the tuner fills in itself while training (a default of None the job does not
      set, such as lora's ``targets``), must be stored with the same value. A run at another
      learning rate or epoch count is another configuration, not a recorded one;
    - without it (a caller that cannot ask the tuner): every override of the job.
    """
    if not configs:
        return {}
    wanted_models = sorted({c["model"] for c in configs})
    wanted_datasets = sorted({c["dataset"] for c in configs})
    q = (
        select(Run.run_id, Model.name, Model.pretrained, Model.image_size, Dataset.name, Run.method, Run.shots,
               Run.seed, Run.hparams)
        .join(Model, Run.model_id == Model.id)
        .join(Dataset, Run.dataset_id == Dataset.id)
        .where(Model.name.in_(wanted_models), Dataset.name.in_(wanted_datasets))
    )
    index: dict[tuple[Any, ...], list[tuple[str, Any, dict[str, Any]]]] = {}
    with h._read() as s:
        for run_id, model, pretrained, image_size, dataset, method, shots, seed, hparams in s.execute(q):
            index.setdefault((model, pretrained or None, dataset, method, shots, seed), []).append(
                (run_id, image_size, dict(hparams or {})))
    out: dict[int, str] = {}
    for i, c in enumerate(configs):
        wanted = _wanted_hparams(c)
        for run_id, image_size, hp in index.get(
                (c["model"], c.get("pretrained") or None, c["dataset"], c["method"], c.get("shots"), c["seed"]), []):
            if c.get("image_size") is not None and image_size != c["image_size"]:
                continue
            if all(k in hp and _same(hp[k], v) for k, v in wanted.items()):
                out[i] = run_id
                break
    return out


def _wanted_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a stored run must hold to be this job's run (``recorded_runs``)."""
    overrides = dict(config.get("hparams") or {})
    resolved = config.get("resolved_hparams")
    if resolved is None:
        return overrides
    return {k: v for k, v in dict(resolved).items() if k in overrides or v is not None}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def register_sweep(h: History, sweep_id: str, spec: Mapping[str, Any], executor: str,
                   jobs: Sequence[tuple[str, str, int, Mapping[str, Any]]], stale_after_s: float,
                   recorded: Mapping[int, str] | None = None) -> dict[str, int]:
    """Create or resume a sweep: insert missing jobs (key, pair, config) as queued; mark jobs
    whose run is already in the history as done (skipped if the sweep never ran them); turn
    stale running jobs into failed; re-queue failed ones (a new start re-submits failures).
    Returns counts: total, to_run, recorded (already in the history), running_elsewhere.
    ``recorded`` is ``recorded_runs`` of the jobs' configs, when the caller has it already."""
    if recorded is None:
        recorded = recorded_runs(h, [dict(c) for _, _, _, c in jobs])
    now = time.time()

    def tx(s: Session) -> dict[str, int]:
        sweep = s.scalar(select(Sweep).where(Sweep.sweep_id == sweep_id))
        if sweep is None:
            s.add(Sweep(sweep_id=sweep_id, name=spec.get("name"), spec=dict(spec), executor=executor,
                        n_jobs=len(jobs), created_at=_now_iso(), updated_at=_now_iso()))
        else:
            sweep.executor = executor
            sweep.updated_at = _now_iso()
        existing = {j.job_key: j for j in s.scalars(select(SweepJob).where(SweepJob.sweep_id == sweep_id))}
        done_ids = [j.run_id for j in existing.values() if j.status in (DONE, SKIPPED) and j.run_id]
        present = set(s.scalars(select(Run.run_id).where(Run.run_id.in_(done_ids)))) if done_ids else set()
        counts = {"total": len(jobs), "to_run": 0, "recorded": 0, "running_elsewhere": 0}
        for pos, (key, pair, stage, config) in enumerate(jobs):
            job = existing.get(key)
            if job is None:
                job = SweepJob(sweep_id=sweep_id, job_key=key, position=pos, stage=stage, pair=pair,
                               config=dict(config), status=QUEUED, attempts=0)
                s.add(job)
            if job.status in (DONE, SKIPPED) and job.run_id in present:
                counts["recorded"] += 1
                continue
            if pos in recorded:
                if job.status not in (DONE, SKIPPED):
                    job.status = SKIPPED if job.attempts == 0 else DONE
                    job.run_id = recorded[pos]
                    job.error = None
                counts["recorded"] += 1
                continue
            if job.status == RUNNING and (job.heartbeat_at or 0) >= now - stale_after_s:
                counts["running_elsewhere"] += 1
                continue
            if job.status != QUEUED:  # failed, stale running, or done/skipped whose run vanished
                job.status = QUEUED
                job.worker = None
            counts["to_run"] += 1
        return counts

    return h._write(tx)


def claim(h: History, sweep_id: str, worker: str, prefer_pair: str | None = None,
          keys: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Take the next queued job (one of ``keys`` if given): the earliest stage (sweep block)
    first, within it the pair this worker has loaded, then a pair no other worker is running,
    then plan order; mark it running with a fresh heartbeat. None when nothing is left."""
    key_list = list(keys) if keys is not None else None

    def tx(s: Session) -> dict[str, Any] | None:
        q = select(SweepJob).where(SweepJob.sweep_id == sweep_id, SweepJob.status == QUEUED)
        if key_list is not None:
            q = q.where(SweepJob.job_key.in_(key_list))
        # Within a stage: the pair this worker has loaded, then pairs no other worker is on
        # (so two workers do not both pay for loading the same pair), then plan order.
        other = aliased(SweepJob)
        busy = select(other.pair).where(other.sweep_id == sweep_id, other.status == RUNNING)
        order = [SweepJob.stage, case((SweepJob.pair.in_(busy), 1), else_=0), SweepJob.position]
        if prefer_pair:
            order.insert(1, case((SweepJob.pair == prefer_pair, 0), else_=1))
        q = q.order_by(*order).limit(1)
        if h.engine.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        job = s.scalar(q)
        if job is None:
            return None
        now = time.time()
        job.status, job.worker, job.heartbeat_at, job.started_at = RUNNING, worker, now, now
        job.finished_at, job.error = None, None
        job.attempts = (job.attempts or 0) + 1
        return _job_dict(job)

    return h._write(tx)


def heartbeat(h: History, job_id: int, worker: str) -> None:
    def tx(s: Session) -> None:
        s.execute(update(SweepJob).where(SweepJob.id == job_id, SweepJob.worker == worker,
                                         SweepJob.status == RUNNING).values(heartbeat_at=time.time()))

    h._write(tx)


def finish(h: History, job_id: int, worker: str, run_id: str) -> None:
    def tx(s: Session) -> None:
        s.execute(update(SweepJob).where(SweepJob.id == job_id).values(
            status=DONE, run_id=run_id, finished_at=time.time(), heartbeat_at=time.time(), error=None, worker=worker))

    h._write(tx)


def fail(h: History, job_id: int, worker: str, error: str, log_path: str | None) -> None:
    def tx(s: Session) -> None:
        s.execute(update(SweepJob).where(SweepJob.id == job_id).values(
            status=FAILED, error=error[:2000], log_path=log_path, finished_at=time.time(), worker=worker))

    h._write(tx)


def requeue(h: History, job_id: int) -> None:
    """Give a claimed job back (a worker interrupted before it could run it)."""

    def tx(s: Session) -> None:
        s.execute(update(SweepJob).where(SweepJob.id == job_id, SweepJob.status == RUNNING).values(
            status=QUEUED, worker=None, heartbeat_at=None))

    h._write(tx)


def reap_stale(h: History, sweep_id: str, stale_after_s: float, workers: Iterable[str] | None = None) -> int:
    """Running jobs whose heartbeat went stale (or whose worker is known dead) become failed."""
    cutoff = time.time() - stale_after_s
    dead = list(workers or [])

    def tx(s: Session) -> int:
        cond = SweepJob.heartbeat_at < cutoff
        if dead:
            cond = cond | SweepJob.worker.in_(dead)
        jobs = list(s.scalars(select(SweepJob).where(SweepJob.sweep_id == sweep_id, SweepJob.status == RUNNING, cond)))
        for job in jobs:
            job.status = FAILED
            job.finished_at = time.time()
            job.error = job.error or "worker stopped while running this job (heartbeat went stale)"
        return len(jobs)

    return h._write(tx)


def requeue_failed_keys(h: History, sweep_id: str, keys: Sequence[str]) -> int:
    """Failed jobs among ``keys`` go back to the queue (a retry), except runs that were measured
    and spooled: those wait for ``advisor history import-spool``, not for a second training."""
    key_list = list(keys)
    if not key_list:
        return 0

    def tx(s: Session) -> int:
        res = s.execute(update(SweepJob).where(SweepJob.sweep_id == sweep_id, SweepJob.status == FAILED,
                                               SweepJob.job_key.in_(key_list),
                                               ~func.coalesce(SweepJob.error, "").startswith("spooled:"))
                        .values(status=QUEUED, worker=None))
        return int(res.rowcount or 0)

    return h._write(tx)


def counts(h: History, sweep_id: str) -> dict[str, int]:
    with h._read() as s:
        rows = s.execute(select(SweepJob.status, func.count(SweepJob.id)).where(SweepJob.sweep_id == sweep_id)
                         .group_by(SweepJob.status)).all()
    out = {k: 0 for k in STATUSES}
    out.update({status: int(n) for status, n in rows})
    return out


def _latest(registered: str | None, *times: float | None) -> str | None:
    """The sweep's last activity (ISO, UTC): the latest of its registration (``updated_at``) and
    its jobs' start, heartbeat and finish times."""
    moments = [t for t in times if t is not None]
    if not moments:
        return registered
    latest = datetime.fromtimestamp(max(moments), timezone.utc).isoformat(timespec="seconds")
    return max(latest, registered) if registered else latest


def sweeps(h: History) -> list[dict[str, Any]]:
    """Every sweep with its job counts, newest first; ``updated_at`` is its last activity."""
    with h._read() as s:
        rows = list(s.scalars(select(Sweep).order_by(Sweep.id.desc())))
        activity = {sid: (a, b, c) for sid, a, b, c in s.execute(
            select(SweepJob.sweep_id, func.max(SweepJob.started_at), func.max(SweepJob.heartbeat_at),
                   func.max(SweepJob.finished_at)).group_by(SweepJob.sweep_id))}
        out = []
        for sw in rows:
            out.append({"sweep_id": sw.sweep_id, "name": sw.name, "executor": sw.executor, "jobs": sw.n_jobs,
                        "created_at": sw.created_at,
                        "updated_at": _latest(sw.updated_at, *activity.get(sw.sweep_id, ()))})
    for d in out:
        d.update(counts(h, d["sweep_id"]))
    return out


def sweep_status(h: History, sweep_id: str, stale_after_s: float) -> dict[str, Any]:
    """Counts and the jobs worth a look: failed ones (with error and log), running ones (with
    heartbeat age). A running job whose heartbeat is stale is *shown* as failed; nothing is
    written (status is a read-only command).

    Reads a bounded amount whatever the sweep's size: the counts and the last activity are one
    ``GROUP BY status`` aggregate; only the failed and running jobs (the rows printed) are read
    whole, through ``ix_sweep_jobs_status``."""
    now = time.time()
    jobs = SweepJob.__table__
    with h._read() as s:
        sw = s.scalar(select(Sweep).where(Sweep.sweep_id == sweep_id))
        if sw is None:
            sw = _by_prefix(s, sweep_id, h.display)
        groups = s.execute(
            select(jobs.c.status, func.count(), func.max(jobs.c.started_at), func.max(jobs.c.heartbeat_at),
                   func.max(jobs.c.finished_at))
            .where(jobs.c.sweep_id == sw.sweep_id).group_by(jobs.c.status)).all()
        shown = s.execute(select(jobs).where(jobs.c.sweep_id == sw.sweep_id, jobs.c.status.in_((FAILED, RUNNING)))
                          .order_by(jobs.c.position)).all()
        info = {"sweep_id": sw.sweep_id, "name": sw.name, "executor": sw.executor, "created_at": sw.created_at,
                "updated_at": _latest(sw.updated_at, *(t for g in groups for t in g[2:])),
                "jobs": sum(int(g[1]) for g in groups)}
    tally = {k: 0 for k in STATUSES}
    tally.update({status: int(n) for status, n, *_ in groups})
    failed, running = [], []
    for j in shown:
        status = j.status
        d = _job_dict(j)
        if status == RUNNING and (j.heartbeat_at or 0) < now - stale_after_s:
            status = FAILED
            d["error"] = f"worker stopped (heartbeat stale for {now - (j.heartbeat_at or now):.0f} s)"
            tally[RUNNING] -= 1
            tally[FAILED] += 1
        d["status"] = status
        if status == FAILED:
            failed.append(d)
        else:
            d["heartbeat_age_s"] = round(now - (j.heartbeat_at or now), 1)
            running.append(d)
    info["counts"] = tally
    info["failed"] = failed
    info["running"] = running
    return info


def _by_prefix(s: Session, prefix: str, display: str) -> Sweep:
    matches = list(s.scalars(select(Sweep).where(Sweep.sweep_id.startswith(prefix, autoescape=True)).limit(2)))
    if len(matches) != 1:
        raise HistoryError(f"no sweep {prefix!r} in {display}" if not matches
                           else f"sweep id prefix {prefix!r} is ambiguous in {display}")
    return matches[0]


def _job_dict(j: Any) -> dict[str, Any]:
    """A job as a dict, from a ``SweepJob`` or a row of the ``sweep_jobs`` table."""
    return {"id": j.id, "sweep_id": j.sweep_id, "job_key": j.job_key, "position": j.position, "stage": j.stage,
            "pair": j.pair,
            "config": dict(j.config or {}), "status": j.status, "attempts": j.attempts, "worker": j.worker,
            "heartbeat_at": j.heartbeat_at, "started_at": j.started_at, "finished_at": j.finished_at,
            "run_id": j.run_id, "log_path": j.log_path, "error": j.error}


def job_durations(h: History) -> list[tuple[str, float]]:
    """(method, seconds from claim to done) of finished sweep jobs: the whole per-run cost
    (model load, evaluation, training, write), used for a sweep's cost estimate."""
    with h._read() as s:
        rows = s.execute(select(SweepJob.config, SweepJob.started_at, SweepJob.finished_at)
                         .where(SweepJob.status == DONE, SweepJob.started_at.is_not(None),
                                SweepJob.finished_at.is_not(None))).all()
    return [(str((c or {}).get("method")), float(f - st)) for c, st, f in rows if f >= st]


def phase_timings(h: History, methods: Iterable[str]) -> list[tuple[str, str, str, float, float]]:
    """(model, dataset, method, prepare seconds, train + evaluate + curve seconds) of the runs of
    ``methods`` that recorded their phases (``provenance.timing``, written by ``advisor run``):
    what a sweep's estimate is made of. ``prepare_s`` is near zero for a run whose process had
    the pair loaded already (a sweep worker's second job of a pair)."""
    wanted = sorted(set(methods))
    if not wanted:
        return []
    q = (select(Model.name, Dataset.name, Run.method, Run.provenance)
         .join(Model, Run.model_id == Model.id).join(Dataset, Run.dataset_id == Dataset.id)
         .where(Run.method.in_(wanted)))
    out = []
    with h._read() as s:
        for model, dataset, method, prov in s.execute(q):
            timing = (prov or {}).get("timing") if isinstance(prov, dict) else None
            if not isinstance(timing, dict):
                continue
            try:
                prepare = float(timing.get("prepare_s") or 0.0)
                per_job = sum(float(timing.get(k) or 0.0) for k in ("train_s", "evaluate_s", "curve_s"))
            except (TypeError, ValueError):
                continue
            if per_job > 0 and prepare >= 0:
                out.append((model, dataset, method, prepare, per_job))
    return out
