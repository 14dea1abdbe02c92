"""Where a history lives: the user-data default, paths and SQLAlchemy URLs, the shipped copy.

``--db`` / ``ADVISOR_DB`` take a SQLite path or any SQLAlchemy URL; nothing here opens a
database (``database.py`` does), so the CLI can show a location without touching it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config
from ..errors import HistoryError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# SQLAlchemy is imported where a URL is parsed, not here: the read path of a SQLite history
# (``reader``) finds its file without it.

DEFAULT_NAME = "registry.db"


def default_path() -> Path:
    """``<user data dir>/registry.db`` (``ADVISOR_HOME`` moves the user data dir)."""
    return config.user_dir() / DEFAULT_NAME


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.absolute())


def resolve_url(db: str | os.PathLike[str] | None) -> str:
    """None -> the user-data database; a path -> a SQLite URL; a URL (``scheme://``) as is."""
    if db is None or str(db) == "":
        return sqlite_url(default_path())
    text = str(db)
    if "://" in text:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(text)
        except (ArgumentError, ValueError) as exc:
            why = "" if isinstance(exc, ArgumentError) else f": {exc}"
            raise HistoryError(f"bad database URL {text!r}{why} (expected a path or e.g. postgresql://host/db)") from None
        return text
    return sqlite_url(Path(text).expanduser())


def require_existing(db: str | os.PathLike[str] | None) -> None:
    """For commands that only read a history: a SQLite file that does not exist (a mistyped
    ``--db``) or is empty is a one-line ``HistoryError``, instead of a new empty history that
    answers "(none)". None (the user-data copy, made from the shipped registry on first use)
    and server URLs pass."""
    if db is None or str(db) == "":
        return
    from sqlalchemy.engine import make_url

    url = make_url(resolve_url(db))
    path = sqlite_file(url) if url.get_backend_name() == "sqlite" else None
    if path is None:
        return
    try:
        url.get_dialect()
    except Exception:  # noqa: BLE001  (a driver that is not installed: opening the history names it)
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        what = "the file" if path.parent.is_dir() else f"directory {path.parent}"
        raise HistoryError(f"no history at {path}: {what} does not exist (check --db / ADVISOR_DB; "
                           "`advisor run` and `history add` create a new one)") from None
    except OSError as exc:
        raise HistoryError(f"cannot use database path {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise HistoryError(f"{path} is an empty file, not a history (check --db / ADVISOR_DB)")


def sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory databases."""
    db = url.database
    if not db or db == ":memory:" or "mode=memory" in db:
        return None
    if db.startswith("file:"):
        db = db[len("file:"):].split("?", 1)[0]
    return Path(db)


def location(db: str | os.PathLike[str] | None) -> str:
    """Where ``db`` points, for people: a file path for SQLite, else the URL without password."""
    from sqlalchemy.engine import make_url

    url = make_url(resolve_url(db))
    path = sqlite_file(url) if url.get_backend_name() == "sqlite" else None
    return str(path) if path else url.render_as_string(hide_password=True)


def _config_seeds(uri: str) -> set[tuple[str, int]]:
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        return {(c, int(s)) for c, s in conn.execute("SELECT config_hash, seed FROM runs")}
    finally:
        conn.close()


def shipped_runs_missing(path: Path) -> tuple[int, int] | None:
    """``(runs in the installed registry.db, how many of them the history file at path lacks)``,
    or None when nothing is shipped, ``path`` is the shipped file or either cannot be read.

    A run counts as present when a run of the same configuration and seed is there under any
    id: what ``history add --skip-existing`` leaves out, so after ``advisor history update`` the
    count is 0. Both files are only read (the shipped one as immutable)."""
    shipped = config.shipped_registry()
    if shipped is None or not path.is_file():
        return None
    try:
        if shipped.resolve() == path.resolve():
            return None
        theirs = _config_seeds(f"{shipped.absolute().as_uri()}?mode=ro&immutable=1")
        # mode=rw as in reader.Reader: only SELECTs run, and it never creates the file.
        ours = _config_seeds(f"{path.absolute().as_uri()}?mode=rw")
    except (OSError, sqlite3.Error):
        return None
    return len(theirs), len(theirs - ours)


_noticed: set[Path] = set()


def notice_newer_shipped(path: Path) -> None:
    """Once per process: a note on stderr when the installed registry.db has runs the user's
    copy lacks (the copy is made at first use, and upgrading advisor never touches it)."""
    if path in _noticed:
        return
    _noticed.add(path)
    found = shipped_runs_missing(path)
    if found and found[1]:
        total, missing = found
        print(f"Note: the installed registry.db has {missing:,} of its {total:,} runs that your history ({path}) "
              "lacks; `advisor history update` adds them and retrains the predictor.", file=sys.stderr)


def ensure_default_db(path: Path | None = None, *, notice: bool = True) -> Path:
    """Create the user-data database by copying the shipped ``registry.db`` (never writing to
    it). Safe against concurrent first use: the copy appears atomically or not at all. An
    existing copy is kept; with ``notice``, a newer shipped registry is mentioned on stderr."""
    path = path or default_path()
    if path.exists():
        if notice:
            notice_newer_shipped(path)
        return path
    shipped = config.shipped_registry()
    if shipped is None:
        return path  # a fresh database is created and migrated on open
    if shipped.resolve() == path.resolve():
        raise HistoryError(f"the user database {path} is the shipped registry; set ADVISOR_HOME elsewhere")
    fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".db", dir=path.parent)
    os.close(fd)
    try:
        shutil.copyfile(shipped, tmp)
        try:
            os.link(tmp, path)  # fails if another process won the race: keep theirs
        except FileExistsError:
            pass
        except OSError:  # file systems without hard links
            if not path.exists():
                os.replace(tmp, path)
    except OSError as exc:
        raise HistoryError(f"cannot create {path} from {shipped}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
