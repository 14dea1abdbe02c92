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

from ..specs.executors import Executor, JobHandle, LaunchRequest

__all__ = ["Executor", "JobHandle", "LaunchRequest"]  # the names executor plugins import from here
