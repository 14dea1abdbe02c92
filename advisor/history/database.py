"""How a history URL becomes SQLAlchemy engines, and how driver errors become one line.

SQLite: a busy timeout and foreign keys on every connection; ``BEGIN IMMEDIATE`` for writes so
concurrent writers queue instead of failing; WAL journal mode set by the first *write* of a
connection only. Reads of an existing file go through a read-only connection
(``file:...?mode=ro``) whenever a normal one could change the file, so read-only commands leave
a database byte-identical and a history in a read-only directory can still be read.
PostgreSQL: a connect timeout and a lock timeout from the same ``ADVISOR_DB_TIMEOUT``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from ..errors import HistoryError
from .rows import jsonable

TIMEOUT_ENV = "ADVISOR_DB_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86400.0


def db_timeout(timeout: float | None = None) -> float:
    """Seconds to wait for a lock: ``timeout``, else ``ADVISOR_DB_TIMEOUT``, else 30; finite and
    within [0, one day], or a one-line error."""
    source = "timeout"
    if timeout is None:
        env = os.environ.get(TIMEOUT_ENV)
        if not env:
            return DEFAULT_TIMEOUT
        source = f"{TIMEOUT_ENV}={env!r}"
        try:
            timeout = float(env)
        except ValueError:
            raise HistoryError(f"{source} is not a number of seconds") from None
    if not math.isfinite(timeout) or not 0 <= timeout <= MAX_TIMEOUT:
        shown = source if source != "timeout" else f"database timeout {timeout!r}"
        raise HistoryError(f"{shown} must be a number of seconds between 0 and {MAX_TIMEOUT:g}")
    return float(timeout)


def json_dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), sort_keys=True, ensure_ascii=False)


def _is_wal_file(path: Path) -> bool:
    """The file's header says WAL mode (bytes 18 and 19 are 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def read_only_uri(path: Path) -> str | None:
    """The URI reads should use for an existing SQLite file, or None when the normal connection
    cannot change it (a WAL file whose directory we may write: SQLite's side files come and go).

    A rollback-journal file (the shipped registry) is opened ``mode=ro``. A WAL file in a
    directory nobody can write, without a ``-wal`` file, cannot be changed by anyone, so
    ``immutable=1`` lets it be read without the shared-memory file SQLite could not create."""
    if not path.is_file():
        return None
    wal = _is_wal_file(path)
    dir_writable = os.access(path.parent, os.W_OK | os.X_OK)
    if wal and dir_writable and os.access(path, os.W_OK):
        return None
    uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro"
    if wal and not dir_writable and not Path(str(path) + "-wal").exists():
        uri += "&immutable=1"
    return uri


def _sqlite_settings(engine: Engine, timeout: float, set_wal: bool) -> None:
    busy_ms = int(timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("advisor_write", False)  # True, "probe" or False
        if write is True and set_wal:
            info = conn.connection.info
            if not info.get("advisor_wal"):
                try:  # outside any transaction, as SQLite requires
                    conn.exec_driver_sql("PRAGMA journal_mode = WAL")
                except OperationalError as exc:
                    # A read-only file: the write itself fails next with its own one-line error.
                    if "readonly" not in str(exc).replace("-", "").replace(" ", ""):
                        raise
                info["advisor_wal"] = True
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engines(url: URL, display: str, timeout: float, path: Path | None) -> tuple[Engine, Engine]:
    """(engine for writes, engine for reads); the same engine where one is enough."""
    kwargs: dict[str, Any] = {"json_serializer": json_dumps}
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite:
        kwargs["connect_args"] = {"timeout": timeout}
        if path is None:
            from sqlalchemy.pool import StaticPool

            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"]["check_same_thread"] = False
    elif url.get_backend_name() == "postgresql":
        ms = max(1, int(timeout * 1000))  # lock_timeout=0 would mean "wait forever"
        options = f"-c lock_timeout={ms}"
        given = url.query.get("options")  # the URL's own options are kept
        if given:
            options = " ".join([*([given] if isinstance(given, str) else given), options])
        kwargs["connect_args"] = {"connect_timeout": max(1, math.ceil(timeout)), "options": options}
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise HistoryError(f"cannot use database URL {display}: driver not installed ({exc})") from None
    except (ArgumentError, TypeError) as exc:
        raise HistoryError(f"bad database URL {display} ({exc})") from None
    if not sqlite:
        return engine, engine
    _sqlite_settings(engine, timeout, set_wal=path is not None)
    user_uri = bool(url.query.get("uri")) or (url.database or "").startswith("file:")
    uri = None if path is None or user_uri else read_only_uri(path)
    if uri is None:
        return engine, engine

    def connect_read_only() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

    reader = create_engine("sqlite://", creator=connect_read_only, json_serializer=json_dumps)
    _sqlite_settings(reader, timeout, set_wal=False)  # never writes
    return engine, reader


def quick_check(engine: Engine, display: str) -> None:
    """``PRAGMA quick_check`` (SQLite): a damaged page is refused before anything reads or
    writes next to it, instead of being written to without a word."""
    with engine.connect() as conn:
        problems = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(3)")]
        conn.rollback()
    if problems != ["ok"]:
        first = str(problems[0]).splitlines()[0] if problems else "no answer"
        raise HistoryError(f"database {display} is damaged (SQLite integrity check: {first}); "
                           "restore it from a backup")


def translate(exc: BaseException, display: str, timeout: float, sqlite: bool) -> HistoryError:
    """A driver or SQLAlchemy error as the one line a user can act on."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    msg = text.splitlines()[0] if text else type(orig).__name__
    low = msg.lower()
    if "readonly" in low or "read-only" in low or "read only" in low:
        return HistoryError(f"database {display} is read-only (use --db or ADVISOR_DB to pick a writable one)")
    if "locked" in low or "busy" in low or "lock timeout" in low:
        return HistoryError(
            f"database {display} is locked by another process (gave up after {timeout:g} s; "
            f"{TIMEOUT_ENV} sets the wait)"
        )
    if "malformed" in low:
        return HistoryError(f"database {display} is damaged ({msg}); restore it from a backup")
    if "not a database" in low or "encrypted" in low:
        return HistoryError(f"{display} is not a valid SQLite database ({msg})")
    if "unable to open" in low:
        return HistoryError(f"cannot open database {display} ({msg})")
    if isinstance(exc, OperationalError) and not sqlite:
        return HistoryError(f"cannot use database {display} ({msg})")
    return HistoryError(f"database error on {display}: {msg}")
