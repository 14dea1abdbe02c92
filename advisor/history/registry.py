"""The shipped ``registry.db``: a history as one self-contained SQLite file (no WAL side files),
so it can be installed read-only and copied on first use (``location.ensure_default_db``)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HistoryError
from .location import sqlite_url
from .store import History, open_history

if TYPE_CHECKING:
    from .rows import ImportRecord


def compact(path: str | os.PathLike[str]) -> None:
    """Make a SQLite history a single self-contained file (WAL checkpointed, rollback journal,
    vacuumed), as the shipped ``registry.db`` must be."""
    p = Path(path)
    con = sqlite3.connect(str(p))
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("VACUUM")
    finally:
        con.close()


def create_registry(path: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> int:
    """Write the shipped-registry file at ``path``: a migrated copy of the SQLite history
    ``source`` (runs, signal sets, predictors; not its sweep bookkeeping), or an empty migrated history when
    ``source`` is None, compacted to one self-contained file. Returns the number of runs.
    ``python -c "from advisor.history import create_registry; create_registry('registry.db', 'runs.db')"``"""
    p = Path(path)
    if p.is_dir():
        raise HistoryError(f"database path {p} is a directory")
    for suffix in ("", "-wal", "-shm"):
        q = Path(str(p) + suffix)
        if q.exists():
            q.unlink()
    if source is None:
        History(sqlite_url(p)).close()
    else:
        with open_history(source) as src:  # migrates the source to the current schema
            if src.path is None:
                raise HistoryError(f"registry source {src.display} must be a SQLite file")
            src_path = src.path
        with sqlite3.connect(str(src_path)) as src_con, sqlite3.connect(str(p)) as dst_con:
            src_con.backup(dst_con)
            # The sweeps that built it are this machine's bookkeeping (workers, log paths,
            # heartbeats), not knowledge: a sweep run against a copy finds its runs by
            # configuration in the runs themselves.
            dst_con.execute("DELETE FROM sweep_jobs")
            dst_con.execute("DELETE FROM sweeps")
        src_con.close()
        dst_con.close()
    compact(p)
    with History(sqlite_url(p)) as h:
        n = h.count()
    compact(p)
    return n


def shipped_records() -> tuple[Path, list["ImportRecord"]]:
    """The installed ``registry.db`` and its runs as validated import rows (it is only read)."""
    import io
    import tempfile

    from .. import config
    from .io import parse_file

    shipped = config.shipped_registry()
    if shipped is None:
        raise HistoryError("no registry.db is installed with advisor (ADVISOR_REGISTRY names another one)")
    # Read-only URI: opening the installed file read-write would switch it to WAL mode.
    with History(f"sqlite:///file:{shipped.absolute()}?mode=ro&uri=true") as src:
        buf = io.StringIO()
        src.export("jsonl", buf)
    with tempfile.TemporaryDirectory(prefix="advisor-update-") as tmp:
        dump = Path(tmp) / "registry.jsonl"
        dump.write_text(buf.getvalue(), encoding="utf-8")
        return shipped, parse_file(dump, "jsonl")


def update_from_shipped(history: History, *, dry_run: bool = False) -> dict[str, int | str]:
    """Add the installed ``registry.db``'s runs that ``history`` lacks, in one transaction (a run
    of the same configuration and seed already there is kept, as ``history add --skip-existing``
    does). Returns ``{"added", "present", "shipped", "registry"}``; ``dry_run`` writes nothing."""
    shipped, records = shipped_records()
    if history.path is not None and history.path.resolve() == shipped.resolve():
        raise HistoryError(f"{history.display} is the installed registry.db itself; give --db your own history")
    added = history.missing_count(records) if dry_run else history.add_records(records, skip_existing=True)
    return {"added": added, "present": len(records) - added, "shipped": len(records), "registry": str(shipped)}
