"""The read path of a SQLite history, with plain ``sqlite3``: what ``advisor recommend`` reads on
a cached pair, without importing SQLAlchemy (about 1 s of every ``advisor recommend``).

``open_reader(db)`` gives a ``Reader`` when ``db`` (a path, or None for the user-data copy) is
an existing SQLite file at the current schema version; it answers ``training_rows``,
``models``, ``latest_signals`` and ``load_predictor`` itself, with exactly what ``History``
returns (the same row shapes from ``rows``; a test compares both on the shipped registry), and
hands every other call, and any of these that ``sqlite3`` cannot answer, to a full ``History``
opened on first use (which then migrates, writes, or names the problem in one line). Anything
else (a URL, a missing file, an older or newer schema) opens the full ``History`` at once.
Only SELECTs run, so reading changes no file (the WAL files are gone again after ``close``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import HistoryError
from .location import default_path, ensure_default_db, require_existing
from .rows import MODEL_FIELDS, TrainingRows
from .version import SCHEMA_VERSION

#: Columns the schema declares JSON (stored as JSON text) or Boolean (0/1), per table: what
#: SQLAlchemy decodes on read (a test checks these against ``schema``).
JSON_COLUMNS = {
    "models": ("extra",),
    "datasets": ("domain", "extra"),
    "runs": ("hparams", "ood_before", "ood_after", "provenance", "losses", "curve"),
    "predictors": ("features", "scores", "summary"),
}
BOOL_COLUMNS = {"datasets": ("is_grayscale",)}
#: The column that names a row of each table in messages.
ROW_NAMES = {"models": "key", "datasets": "key", "runs": "run_id", "predictors": "name"}


def not_json(display: str, table: str, name: Any, column: str, value: str) -> HistoryError:
    """The one-line error for a JSON column that holds other text (written by another tool)."""
    what = {"models": "model", "datasets": "dataset", "runs": "run", "predictors": "predictor"}[table]
    return HistoryError(f"database {display}: {what} {name!r}, column {column}, holds {value[:40]!r}, "
                        "which is not JSON; repair or delete that row")


def open_reader(db: str | os.PathLike[str] | None = None, *, must_exist: bool = False) -> Any:
    """A ``Reader`` for a current SQLite history file, else ``open_history(db)``.
    ``must_exist``: as ``open_history``'s (a missing file is an error, not a new history)."""
    if must_exist:
        require_existing(db)
    path = _sqlite_path(db)
    reader = Reader.try_open(path, db) if path is not None else None
    if reader is not None:
        return reader
    from .store import open_history

    return open_history(db)


def _sqlite_path(db: str | os.PathLike[str] | None) -> Path | None:
    if db is None or str(db) == "":
        return ensure_default_db(default_path())
    text = str(db)
    return None if "://" in text else Path(text).expanduser()


class Reader:
    """Reads of one SQLite history file; everything else goes to a ``History`` (see the module)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, db: str | os.PathLike[str] | None) -> None:
        self._conn = conn
        self._db = db
        self._full: Any = None
        self.path = path
        self.display = str(path)
        self.url = "sqlite:///" + str(path.absolute())
        self.is_sqlite = True

    @classmethod
    def try_open(cls, path: Path, db: str | os.PathLike[str] | None) -> "Reader | None":
        """A reader when ``path`` is a SQLite history at the current schema version, else None."""
        try:
            if not path.is_file() or path.stat().st_size == 0:
                return None
            # mode=rw, not ro: it never creates the file, only SELECTs run, and as the last
            # connection it removes the WAL files on close (a ro one would leave them behind).
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=5.0)
        except (OSError, sqlite3.Error):
            return None
        try:
            versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        except sqlite3.Error:
            conn.close()
            return None
        if sorted(versions) != list(range(1, SCHEMA_VERSION + 1)):
            conn.close()
            return None
        return cls(conn, path, db)

    # -- the full History, for everything else ------------------------------------------

    def full(self) -> Any:
        """The ``History`` of the same database, opened once on first use."""
        if self._full is None:
            from .store import open_history

            self._full = open_history(self._db)
        return self._full

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.full(), name)

    def close(self) -> None:
        self._conn.close()
        if self._full is not None:
            self._full.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _rows(self, table: str, sql: str, args: tuple[Any, ...] = ()) -> list[SimpleNamespace]:
        cur = self._conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        js, bools = JSON_COLUMNS.get(table, ()), BOOL_COLUMNS.get(table, ())
        out = []
        for values in cur:
            row = dict(zip(names, values))
            for c in js:
                if isinstance(row.get(c), str):
                    try:
                        row[c] = json.loads(row[c])
                    except ValueError:
                        raise not_json(self.display, table, row.get(ROW_NAMES[table]), c, row[c]) from None
            for c in bools:
                if row.get(c) is not None:
                    row[c] = bool(row[c])
            out.append(SimpleNamespace(**row))
        return out

    def _or_full(self, method: str, read: Any, *args: Any) -> Any:
        try:
            return read(*args)
        except sqlite3.Error:  # locked, damaged, unexpected: the full History says what it is
            return getattr(self.full(), method)(*args)

    # -- the reads ----------------------------------------------------------------------

    def training_rows(self, lean: bool = False) -> list[dict[str, Any]]:
        """As ``History.training_rows``."""
        return self._or_full("training_rows", self._training_rows, lean)

    def iter_training_rows(self, lean: bool = False) -> Any:
        """As ``History.iter_training_rows`` (read whole here: a SQLite file's reader is used for
        the shipped-size histories; a large one streams through ``full()``)."""
        return iter(self.training_rows(lean))

    def _training_rows(self, lean: bool = False) -> list[dict[str, Any]]:
        models = {m.id: m for m in self._rows("models", "SELECT * FROM models")}
        datasets = {d.id: d for d in self._rows("datasets", "SELECT * FROM datasets")}
        own: dict[int, dict[str, tuple[float, str | None]]] = {}
        latest: dict[tuple[int, int], dict[str, tuple[float, str | None]]] = {}
        for set_id, model_id, dataset_id, name, value, version in self._conn.execute(
            "SELECT signal_sets.id, signal_sets.model_id, signal_sets.dataset_id, signal_values.name, "
            "signal_values.value, signal_values.version FROM signal_values "
            "JOIN signal_sets ON signal_values.signal_set_id = signal_sets.id "
            "ORDER BY signal_sets.created_at, signal_sets.id"
        ):
            latest.setdefault((model_id, dataset_id), {})[name] = (value, version)
            own.setdefault(set_id, {})[name] = (value, version)
        build = TrainingRows(models, datasets, latest, own, lean=lean)
        runs = self._rows("runs", "SELECT runs.* FROM runs JOIN models ON runs.model_id = models.id "
                                  "JOIN datasets ON runs.dataset_id = datasets.id ORDER BY runs.created_at, runs.id")
        return [build.row(vars(r)) for r in runs]

    def state(self) -> dict[str, Any]:
        """As ``History.state``."""
        return self._or_full("state", self._state)

    def _state(self) -> dict[str, Any]:
        (runs,), = self._conn.execute("SELECT max(id) FROM runs")
        (sets,), = self._conn.execute(
            "SELECT max(signal_sets.id) FROM signal_sets WHERE EXISTS (SELECT 1 FROM runs WHERE "
            "runs.model_id = signal_sets.model_id AND runs.dataset_id = signal_sets.dataset_id)")
        return {"max_run": runs, "max_signal_set": sets}

    def group_runs(self, method: str, groups: Any, limit: int) -> list[dict[str, Any]]:
        """As ``History.group_runs``."""
        return self._or_full("group_runs", self._group_runs, method, groups, limit)

    def _group_runs(self, method: str, groups: Any, limit: int) -> list[dict[str, Any]]:
        if not groups or limit <= 0:
            return []
        parts, args = [], []
        for g in groups:
            shots = "runs.shots IS NULL" if g["shots"] is None else "runs.shots = ?"
            sset = "runs.signal_set_id IS NULL" if g["signal_set_id"] is None else "runs.signal_set_id = ?"
            parts.append(f"SELECT * FROM (SELECT runs.id FROM runs WHERE runs.method = ? AND runs.model_id = ? AND "
                         f"runs.dataset_id = ? AND {shots} AND {sset} ORDER BY runs.created_at, runs.id LIMIT ?)")
            args += [method, g["model_id"], g["dataset_id"]]
            args += [g["shots"]] if g["shots"] is not None else []
            args += [g["signal_set_id"]] if g["signal_set_id"] is not None else []
            args.append(limit)
        sql = ("SELECT runs.run_id, models.name, datasets.name, runs.shots, runs.seed, runs.hparams, runs.method "
               "FROM runs JOIN models ON runs.model_id = models.id JOIN datasets ON runs.dataset_id = datasets.id "
               f"WHERE runs.id IN ({' UNION ALL '.join(parts)}) ORDER BY runs.created_at, runs.id LIMIT ?")
        out = []
        for rid, mname, dname, shots, seed, hp, m in self._conn.execute(sql, (*args, limit)):
            try:
                hp = json.loads(hp) if isinstance(hp, str) else hp
            except ValueError:
                raise not_json(self.display, "runs", rid, "hparams", hp) from None
            out.append({"run_id": rid, "model": mname, "dataset": dname, "shots": shots, "seed": seed,
                        "hparams": hp, "method": m})
        return out

    def models(self) -> list[dict[str, Any]]:
        """As ``History.models``."""
        return self._or_full("models", self._models)

    def _models(self) -> list[dict[str, Any]]:
        out = []
        for m in self._rows("models", "SELECT * FROM models ORDER BY id"):
            desc = dict(m.extra or {})
            desc.update(name=m.name, pretrained=m.pretrained, **{f: getattr(m, f) for f in MODEL_FIELDS})
            out.append(desc)
        return out

    def latest_signals(self, model_key: str, dataset_key: str) -> dict[str, float] | None:
        """As ``History.latest_signals``."""
        nfc = unicodedata.normalize  # names are stored in NFC (validate.NAME_COLUMNS)
        return self._or_full("latest_signals", self._latest_signals, nfc("NFC", model_key), nfc("NFC", dataset_key))

    def _latest_signals(self, model_key: str, dataset_key: str) -> dict[str, float] | None:
        rows = self._conn.execute(
            "SELECT signal_values.name, signal_values.value FROM signal_values "
            "JOIN signal_sets ON signal_values.signal_set_id = signal_sets.id "
            "JOIN models ON signal_sets.model_id = models.id JOIN datasets ON signal_sets.dataset_id = datasets.id "
            "WHERE models.key = ? AND datasets.key = ? ORDER BY signal_sets.created_at, signal_sets.id",
            (model_key, dataset_key),
        ).fetchall()
        return {name: value for name, value in rows} if rows else None

    def load_predictor(self, name: str = "default") -> dict[str, Any] | None:
        """As ``History.load_predictor``."""
        return self._or_full("load_predictor", self._load_predictor, name)

    def _load_predictor(self, name: str) -> dict[str, Any] | None:
        found = self._rows("predictors", "SELECT * FROM predictors WHERE name = ? ORDER BY id DESC LIMIT 1", (name,))
        if not found:
            return None
        p = found[0]
        return {"id": p.id, "name": p.name, "blob": p.blob, "features": list(p.features), "training_hash": p.training_hash,
                "scores": dict(p.scores), "created_at": p.created_at, "summary": getattr(p, "summary", None)}
