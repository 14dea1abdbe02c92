"""Built-in executors for ``advisor sweep``, both through submitit (no scheduler of our own).

- ``local``: submitit's ``LocalExecutor``; ``--max-parallel N`` worker processes on this
  machine, each with ``cores // N`` torch threads, each taking queued jobs until none is left.
- ``slurm``: submitit's ``SlurmExecutor``; one job-array task per run, at most
  ``--max-parallel`` at once (``#SBATCH --array=0-K%N``), with ``--slurm-partition``,
  ``--slurm-time`` and ``--gpus-per-run``. Workers on the cluster write into the shared
  history, so use a PostgreSQL URL there.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from advisor.errors import AdvisorError
from advisor.hookspecs import hookimpl
from advisor.sweep.executor import Executor, LaunchRequest


def check_slurm() -> None:
    """This machine can submit Slurm jobs: ``sbatch`` is on PATH."""
    if shutil.which("sbatch") is None:
        raise AdvisorError("executor 'slurm' cannot launch here: sbatch is not on PATH "
                           "(run the sweep on a Slurm login node, or use --executor local)")


def launch_local(req: LaunchRequest) -> list[Any]:
    import submitit

    n = max(1, min(req.max_parallel, len(req.keys)))
    threads = max(1, (os.cpu_count() or 1) // n)
    ex = submitit.LocalExecutor(folder=str(req.folder))
    params: dict[str, Any] = {"timeout_min": int(req.options.get("timeout_min") or 7 * 24 * 60)}
    if req.options.get("gpus_per_run"):
        params["gpus_per_node"] = int(req.options["gpus_per_run"])
    ex.update_parameters(**params)
    return [ex.submit(req.worker, req.for_keys(None, threads)) for _ in range(n)]


def launch_slurm(req: LaunchRequest) -> list[Any]:
    import submitit

    ex = submitit.SlurmExecutor(folder=str(req.folder))
    params: dict[str, Any] = {
        "time": int(req.options.get("timeout_min") or 60),
        "array_parallelism": max(1, req.max_parallel),
        "ntasks_per_node": 1,
        "cpus_per_task": int(req.options.get("cpus_per_run") or 4),
    }
    if req.options.get("partition"):
        params["partition"] = req.options["partition"]
    if req.options.get("gpus_per_run"):
        params["gpus_per_node"] = int(req.options["gpus_per_run"])
    ex.update_parameters(**params)
    threads = params["cpus_per_task"]
    return ex.map_array(req.worker, [req.for_keys([k], threads) for k in req.keys])


@hookimpl
def register_executors(register):  # type: ignore[no-untyped-def]
    register(Executor(name="local", launch=launch_local, shares_machine=True,
                      description="submitit LocalExecutor: --max-parallel worker processes on this machine"))
    register(Executor(name="slurm", launch=launch_slurm, shares_machine=False, check=check_slurm,
                      description="submitit SlurmExecutor: one job-array task per run (--slurm-partition, "
                                  "--slurm-time, --gpus-per-run; --max-parallel caps the array)"))
