"""The spool: where a measured run waits when the history database cannot be reached.

A worker that finishes a run but cannot write it (database down, network gone, read-only)
writes the complete ``RunResult`` as one JSON document into the spool directory, atomically
(temporary file, fsync, rename), so nothing measured is thrown away and no reader ever sees
half a file. ``advisor history import-spool`` records each document (idempotently: the run key
is config hash + seed) and deletes the file only after its transaction committed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import HistoryError
from ..specs import RunResult

SUFFIX = ".run.json"


class RunSpooled(HistoryError):
    """The run was measured but the history could not be written: it waits in the spool."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def spool_run(run: RunResult, spool_dir: str | os.PathLike[str] | None, exc: HistoryError) -> None:
    """A measured run the history refused (``exc``): write it to the spool and raise
    ``RunSpooled``; when the spool cannot be written either, print it whole on stderr and raise
    a HistoryError that says so. Nothing measured is lost."""
    import sys

    try:
        path = write_spool(run, spool_dir, reason=str(exc))
    except OSError as spool_exc:
        print(json.dumps(spool_document(run, str(exc)), allow_nan=True), file=sys.stderr, flush=True)
        raise HistoryError(
            f"{exc}; the spool cannot be written either ({spool_exc.strerror or spool_exc}): the measured "
            "run is the JSON line above on stderr (save it as NAME.run.json in a spool directory and run "
            "`advisor history import-spool`)") from None
    raise RunSpooled(f"{exc}; the measured run was saved to {path} "
                     "(add it with `advisor history import-spool`)", path=path) from None


def default_spool_dir() -> Path:
    """``ADVISOR_SPOOL`` or ``<user data dir>/spool``."""
    env = os.environ.get("ADVISOR_SPOOL")
    if env:
        return Path(env)
    from ..config import user_dir

    return user_dir() / "spool"


def write_spool(run: RunResult, spool_dir: str | os.PathLike[str] | None = None, reason: str = "") -> Path:
    """Write ``run`` into the spool atomically; returns the file's path."""
    folder = Path(spool_dir) if spool_dir else default_spool_dir()
    folder.mkdir(parents=True, exist_ok=True)
    doc = spool_document(run, reason)
    name = f"{run.method}-{run.run_id or 'run'}-{os.getpid()}{SUFFIX}"
    return atomic_write(folder / name, lambda f: json.dump(doc, f, allow_nan=True))


def spool_document(run: RunResult, reason: str = "") -> dict[str, Any]:
    """The JSON document of a spooled run (what a spool file holds)."""
    return {"format": "advisor-spooled-run", "version": 1, "reason": reason, "run": dataclasses.asdict(run)}


def read_spooled(path: Path) -> RunResult:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HistoryError(f"spool file {path} cannot be read ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != "advisor-spooled-run" or not isinstance(doc.get("run"), dict):
        raise HistoryError(f"spool file {path} is not a spooled advisor run")
    fields = {f.name for f in dataclasses.fields(RunResult)}
    data: dict[str, Any] = {k: v for k, v in doc["run"].items() if k in fields}
    try:
        return RunResult(**data)
    except TypeError as exc:
        raise HistoryError(f"spool file {path} lacks run fields ({exc})") from None


def spooled_files(spool_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    folder = Path(spool_dir) if spool_dir else default_spool_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))


def import_spool(history: Any, spool_dir: str | os.PathLike[str] | None = None,
                 dry_run: bool = False) -> list[dict[str, Any]]:
    """Record every spooled run into ``history``; each file is removed once its run committed.
    Returns one entry per file: path, run_id, status (imported / already-present / would-import)."""
    files = spooled_files(spool_dir)
    runs = [read_spooled(path) for path in files]  # every file read and checked before anything is written
    if dry_run:
        return [{"path": str(path), "run_id": run.run_id, "status": "would-import"} for path, run in zip(files, runs)]
    out = []
    for path, (run_id, inserted) in zip(files, history.record_runs(runs)):  # one transaction, in bulk
        path.unlink()
        out.append({"path": str(path), "run_id": run_id, "status": "imported" if inserted else "already-present"})
    return out
