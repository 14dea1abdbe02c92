"""Built-in executors for ``advisor sweep``, both through submitit (no scheduler of our own).

- ``local``: submitit's ``LocalExecutor``; ``--max-parallel N`` worker processes on this
  machine, each with ``cores // N`` torch threads, each taking queued jobs until none is left.
- ``slurm``: submitit's ``SlurmExecutor``; one job-array task per run, at most
  ``--max-parallel`` at once (``#SBATCH --array=0-K%N``), with ``--slurm-partition``,
  ``--slurm-time`` and ``--gpus-per-run``. Workers on the cluster write into the shared
  history, so use a PostgreSQL URL there. A submission that ``sbatch`` refuses (a bad
  partition, a time over the limit, the controller down) is one line naming sbatch's own
  message (``SubmissionError``): the sweep then marks the jobs failed with it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
from typing import Any, Callable

from advisor.errors import AdvisorError
from advisor.hookspecs import hookimpl
from advisor.specs.executors import Executor, LaunchRequest


class SubmissionError(AdvisorError):
    """The cluster refused the submission: one line with the command's own message."""


def _one_line(text: Any, limit: int = 300) -> str:
    """Text of a command's output on one line: its non-empty lines joined with "; ", cut at ``limit``."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    joined = "; ".join(ln.strip() for ln in str(text or "").splitlines() if ln.strip())
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


def submitted(command: str, submit: Callable[[], list[Any]]) -> list[Any]:
    """``submit()`` (a submitit submission through ``command``), with the lines submitit prints
    of a failed command kept off the terminal, and any failure one ``SubmissionError`` line:
    the command's exit status and its own message, output it could not read a job id from, or
    why it could not be started."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):  # submitit prints a failed command's stderr itself
            return submit()
    except FailedJobError as exc:
        cause = exc.__cause__
        if isinstance(cause, subprocess.CalledProcessError):
            said = _one_line(cause.stderr) or _one_line(cause.output)
            raise SubmissionError(f"{command} failed (exit status {cause.returncode})"
                                  + (f": {said}" if said else ", saying nothing")) from None
        raise SubmissionError(f"{command} failed: {_one_line(exc) or _one_line(printed.getvalue()) or 'no message'}") from None
    except FailedSubmissionError as exc:  # it exited 0 but printed no "Submitted batch job N"
        found = re.search(r'output "(.*)"', str(exc), re.S)
        said = _one_line(found.group(1) if found else exc)
        raise SubmissionError(f"{command} printed no job id ({said or 'no output'})") from None
    except OSError as exc:  # not executable, vanished from PATH
        raise SubmissionError(f"{command} could not be started: {exc.strerror or exc}") from None


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
    return submitted("sbatch", lambda: ex.map_array(req.worker, [req.for_keys([k], threads) for k in req.keys]))


@hookimpl
def register_executors(register):  # type: ignore[no-untyped-def]
    register(Executor(name="local", launch=launch_local, shares_machine=True,
                      description="submitit LocalExecutor: --max-parallel worker processes on this machine"))
    register(Executor(name="slurm", launch=launch_slurm, shares_machine=False, check=check_slurm,
                      description="submitit SlurmExecutor: one job-array task per run (--slurm-partition, "
                                  "--slurm-time, --gpus-per-run; --max-parallel caps the array)"))
