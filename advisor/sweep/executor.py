"""What an executor plugin registers for ``advisor sweep`` and what it is handed.

An executor turns a ``LaunchRequest`` (the queued job keys, how many may run at once, resource
options, a template ``WorkerRequest``) into running worker processes and returns their handles.
How it splits the work is its own choice: the local executor starts ``max_parallel`` workers
that take queued jobs until none is left (a worker keeps its (model, dataset) pair loaded for
the next job); the Slurm executor submits one array task per job, at most ``max_parallel`` at
once. Workers only ever talk to the history database, so any engine that can run a Python
function somewhere that reaches the database can be an executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from .worker import WorkerRequest


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
