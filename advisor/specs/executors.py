"""What an executor plugin registers and what it is handed (``advisor sweep``), as plain
types: the plugin layer names them without reaching the sweep machinery. How executors are
used: ``advisor.sweep.executor``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol


@dataclass
class WorkerRequest:
    """Everything a worker process needs (pickled by submitit)."""

    sweep_id: str
    db: str
    keys: list[str] | None = None  # None: take queued jobs until none is left
    spool_dir: str | None = None
    threads: int | None = None
    log_folder: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class JobHandle(Protocol):
    """What the controller needs of a launched worker (submitit's ``Job`` has all of it)."""

    job_id: str

    def done(self) -> bool: ...

    def cancel(self) -> Any: ...


@dataclass
class LaunchRequest:
    worker: Callable[[WorkerRequest], dict[str, Any]]
    template: WorkerRequest
    keys: list[str]
    max_parallel: int
    folder: Path
    options: dict[str, Any] = field(default_factory=dict)  # timeout_min, gpus_per_run, partition, ...

    def for_keys(self, keys: list[str] | None, threads: int | None = None) -> WorkerRequest:
        return replace(self.template, keys=keys, threads=threads or self.template.threads)


@dataclass(frozen=True)
class Executor:
    """An executor plugin's registration. ``check()``, when given, raises an ``AdvisorError``
    with one line when this machine cannot launch jobs (no ``sbatch`` for Slurm): ``advisor
    sweep`` calls it before it registers a single job, so a sweep that cannot start leaves no
    jobs queued forever."""

    name: str
    launch: Callable[[LaunchRequest], list[JobHandle]]
    description: str = ""
    shares_machine: bool = True  # workers share this machine's cores (local) or not (a cluster)
    check: Callable[[], None] | None = None
