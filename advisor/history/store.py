"""The ``History`` store: every read and write of a history database, each write one transaction.

SQLite by default (see ``database.py`` for the connection rules), any SQLAlchemy URL
(PostgreSQL) for teams. Every database problem a user can cause becomes a one-line
``HistoryError``. The keys are in ``keys.py``, the row shapes in ``rows.py``, the value rules
in ``validate.py``; this module is only about the database.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import unicodedata
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from sqlalchemy import func, insert, select, tuple_
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from ..errors import HistoryError
from ..specs import RunResult
from .database import db_timeout, make_engines, quick_check, translate
from .keys import (
    config_hash,
    dataset_desc_of,
    dataset_key,
    model_desc_of,
    model_key,
    run_id_of,
    signal_content_hash,
)
from .location import (
    default_path,
    ensure_default_db,
    require_existing,
    resolve_url,
    sqlite_file,
    sqlite_url,
)
from .migrations import applied_migrations, check_version, migrate, pending
from .rows import DATASET_FIELDS, MODEL_FIELDS, ImportRecord, TrainingRows, flat_row, jsonable
from .rows import dataset_desc as stored_dataset_desc
from .rows import model_desc as stored_model_desc
from .schema import Dataset, Model, Predictor, Run, SignalSetRow, SignalValue
from .validate import lone_surrogate, normal_name, validate_run

T = TypeVar("T")

#: Rows per multi-row INSERT and per IN (...) lookup of a bulk write (well under SQLite's
#: 32,766 bound parameters and PostgreSQL's 65,535).
BATCH = 500
#: Runs per page of a streamed read (``iter_runs``, ``export``, ``iter_training_rows``).
PAGE = 2000
#: A bulk write of at least this many runs shows progress on stderr (``terminal.progress_bar``).
PROGRESS_FROM = 5000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_history(db: str | os.PathLike[str] | None = None, *, timeout: float | None = None,
                 must_exist: bool = False) -> "History":
    """Open (creating and migrating) the history at ``db`` (see ``location.resolve_url``).
    ``must_exist`` (read-only commands): a SQLite file that does not exist, or is empty, is a
    one-line ``HistoryError`` instead of a new empty history (``location.require_existing``)."""
    if must_exist:
        db_timeout(timeout)  # a bad ADVISOR_DB_TIMEOUT is named first, whatever the file
        require_existing(db)
    if db is None or str(db) == "":
        path = default_path()
        ensure_default_db(path)
        return History(sqlite_url(path), timeout=timeout)
    return History(resolve_url(db), timeout=timeout)


def record_run(run: RunResult, db: str | None = None) -> str:
    """Record one run in the history at ``db``; returns its run id."""
    with open_history(db) as h:
        return h.record_run(run)


class History:
    """One history database. Use as a context manager or call ``close()``."""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = url
        self.timeout = db_timeout(timeout)
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise HistoryError(f"bad database URL {url!r}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path = sqlite_file(parsed) if self.is_sqlite else None
        self.display = str(self.path) if self.path else parsed.render_as_string(hide_password=True)
        existed = False
        if self.path is not None:
            try:
                if self.path.is_dir():
                    raise HistoryError(f"database path {self.path} is a directory")
                if not self.path.parent.is_dir():
                    raise HistoryError(f"cannot create database {self.path}: directory {self.path.parent} does not exist")
                existed = self.path.is_file() and self.path.stat().st_size > 0
            except OSError as exc:  # a name longer than the file system allows, a loop of links ...
                raise HistoryError(f"cannot use database path {self.path}: {exc.strerror or exc}") from None
        self.engine, self._read_engine = make_engines(parsed, self.display, self.timeout, self.path)
        try:
            if existed:
                with self._guard():
                    quick_check(self._read_engine, self.display)
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except HistoryError:
            raise
        except json.JSONDecodeError:  # a JSON column holding other text (written by another tool)
            raise self._bad_json() from None
        except UnicodeEncodeError as exc:  # a lone surrogate that no check before caught
            bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
            raise HistoryError(f"database {self.display}: text with {bad!r} (a lone surrogate) is not valid "
                               "Unicode and cannot be stored or looked up") from None
        except (SQLAlchemyError, sqlite3.Error) as exc:
            error = translate(exc, self.display, self.timeout, self.is_sqlite)
            unwritable = self._unwritable_directory()
            if unwritable and str(error).startswith("cannot open database"):  # its journal could not be created
                raise unwritable from None
            raise error from None

    def _bad_json(self) -> HistoryError:
        """Which stored row and column hold text that is not JSON, as one line (found with plain
        SQL, since the ORM cannot load the row; the same words as ``reader.not_json``)."""
        from sqlalchemy import JSON

        from .schema import Base

        label = {"runs": "run_id", "models": "key", "datasets": "key", "predictors": "name"}
        word = {"runs": "run", "models": "model", "datasets": "dataset", "predictors": "predictor"}
        with self._read_engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                name_column = label.get(table.name) or next(iter(table.primary_key.columns)).name
                for column in (c.name for c in table.columns if isinstance(c.type, JSON)):
                    for name, value in conn.exec_driver_sql(f"SELECT {name_column}, {column} FROM {table.name} "
                                                            f"WHERE {column} IS NOT NULL"):
                        try:
                            json.loads(value) if isinstance(value, str) else None
                        except ValueError:
                            return HistoryError(f"database {self.display}: {word.get(table.name, table.name)} "
                                                f"{name!r}, column {column}, holds {value[:40]!r}, which is not "
                                                "JSON; repair or delete that row")
            conn.rollback()
        return HistoryError(f"database {self.display} holds text that is not JSON in a JSON column")

    def _unwritable_directory(self) -> HistoryError | None:
        """SQLite writes need the file's directory (journal, WAL): the error if it is read-only."""
        if self.path is None or os.access(self.path.parent, os.W_OK | os.X_OK):
            return None
        sidecars = [Path(f"{self.path}-{s}") for s in ("wal", "shm")]
        if all(p.exists() and os.access(p, os.W_OK) for p in sidecars):
            return None  # a WAL file whose side files exist: writes need no new file
        return HistoryError(f"database {self.display} is read-only: its directory {self.path.parent} "
                            "is not writable (use --db or ADVISOR_DB to pick a writable one)")

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction (``BEGIN IMMEDIATE`` on SQLite). A unique-key
        race with another writer (possible on PostgreSQL) retries; ``fn`` re-checks."""
        attempts = 5
        for attempt in range(attempts):
            try:
                with self._guard(), self.engine.connect() as conn:
                    conn.execution_options(advisor_write=True)
                    with conn.begin():
                        with Session(bind=conn, expire_on_commit=False) as session:
                            result = fn(session)
                            session.flush()
                    return result
            except HistoryError as exc:
                if isinstance(exc.__context__, IntegrityError) and attempt < attempts - 1:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._guard(), Session(self._read_engine) as session:
            yield session

    def _migrate(self) -> None:
        with self._guard():
            engine = self._read_engine if self.path is None or self.path.exists() else self.engine
            with engine.connect() as conn:
                applied = applied_migrations(conn, self.display)
                conn.rollback()
            check_version(applied, self.display)
            if not pending(applied):
                return
            with self.engine.connect() as conn:
                conn.execution_options(advisor_write=True)
                with conn.begin():
                    if conn.dialect.name == "postgresql":  # SQLite: BEGIN IMMEDIATE already serialises
                        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242017)")
                    migrate(conn, self.display)

    def check_writable(self) -> None:
        """Refuse a history that cannot take a run, cheaply and BEFORE any training: a read-only
        file, directory, URL, server or role is a one-line ``HistoryError``. Writes nothing (a
        write transaction that inserts no row, rolled back)."""
        unwritable = self._unwritable_directory()
        if unwritable:
            raise unwritable
        with self._guard(), self.engine.connect() as conn:
            conn.execution_options(advisor_write="probe")  # BEGIN IMMEDIATE, journal mode left alone
            trans = conn.begin()
            try:
                conn.exec_driver_sql("INSERT INTO schema_migrations SELECT * FROM schema_migrations WHERE 1 = 0")
            finally:
                trans.rollback()

    def close(self) -> None:
        # Readers first: the writable connection closes last, so SQLite checkpoints and removes
        # the -wal file (a read-only connection closing last would leave it behind).
        if self._read_engine is not self.engine:
            self._read_engine.dispose()
        self.engine.dispose()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"History({self.display!r})"

    @property
    def schema_version(self) -> int:
        with self._read() as s:
            applied = applied_migrations(s.connection(), self.display)
        return max(applied.values(), default=0) if applied else 0

    # -- models, datasets, signal sets ---------------------------------------------------

    def _upsert_model(self, s: Session, desc: dict[str, Any]) -> Model:
        return _upsert(s, Model, model_key(desc), desc, MODEL_FIELDS, {"name": desc["name"],
                                                                      "pretrained": desc.get("pretrained")})

    def _upsert_dataset(self, s: Session, desc: dict[str, Any]) -> Dataset:
        return _upsert(s, Dataset, dataset_key(desc), desc, DATASET_FIELDS, {"name": desc["name"]})

    def _signal_set(self, s: Session, model: Model, dataset: Dataset, split_hash: str | None,
                    values: dict[str, float], versions: dict[str, str], seconds: dict[str, float],
                    created_at: str | None = None) -> SignalSetRow | None:
        if not values:
            return None
        versions = {k: v for k, v in versions.items() if k in values and v is not None}
        seconds = {k: v for k, v in seconds.items() if k in values and v is not None}
        chash = signal_content_hash(values, versions, seconds)
        existing = s.scalar(
            select(SignalSetRow).where(
                SignalSetRow.model_id == model.id,
                SignalSetRow.dataset_id == dataset.id,
                SignalSetRow.split_hash.is_not_distinct_from(split_hash),
                SignalSetRow.content_hash == chash,
            ).order_by(SignalSetRow.id.desc()).limit(1)
        )
        if existing is not None:
            return existing
        ss = SignalSetRow(model_id=model.id, dataset_id=dataset.id, split_hash=split_hash, content_hash=chash,
                       created_at=created_at or _now())
        ss.values = [SignalValue(name=k, value=float(v), version=versions.get(k), seconds=seconds.get(k))
                     for k, v in sorted(values.items())]
        s.add(ss)
        s.flush()
        return ss

    def store_signal_set(self, model_desc: dict[str, Any], dataset_desc: dict[str, Any], split_hash: str | None,
                         values: dict[str, float], versions: dict[str, str] | None = None,
                         seconds: dict[str, float] | None = None) -> int:
        """Store signals measured for a (model, dataset split); an identical set is reused."""
        if not values:
            raise HistoryError("cannot store an empty signal set")
        clean_values = {}
        for k, v in values.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise HistoryError(f"signal {k!r} is not a number ({v!r})") from None
            if not math.isfinite(f):
                raise HistoryError(f"signal {k!r} is not a finite number ({f!r})")
            clean_values[k] = f
        md = jsonable({**model_desc})
        dd = jsonable({**dataset_desc})
        for what, d in (("model", md), ("dataset", dd)):
            if not d.get("name"):
                raise HistoryError(f"{what} descriptors need a name")
            for field in ("name", "pretrained"):
                if isinstance(d.get(field), str):
                    d[field] = normal_name(d[field], f"{what} {field}")
        vers = {k: str(v) for k, v in (versions or {}).items()}
        secs = {k: float(v) for k, v in (seconds or {}).items()}

        def tx(s: Session) -> int:
            m = self._upsert_model(s, md)
            d = self._upsert_dataset(s, dd)
            ss = self._signal_set(s, m, d, split_hash or None, clean_values, vers, secs)
            assert ss is not None
            return ss.id

        return self._write(tx)

    def latest_signals(self, model_key: str, dataset_key: str) -> dict[str, float] | None:
        """Per metric, its newest value for this (model, dataset) pair; None if never measured."""
        model_key, dataset_key = normal_name(model_key, "model"), normal_name(dataset_key, "dataset")
        with self._read() as s:
            rows = s.execute(
                select(SignalValue.name, SignalValue.value)
                .join(SignalSetRow, SignalValue.signal_set_id == SignalSetRow.id)
                .join(Model, SignalSetRow.model_id == Model.id)
                .join(Dataset, SignalSetRow.dataset_id == Dataset.id)
                .where(Model.key == model_key, Dataset.key == dataset_key)
                .order_by(SignalSetRow.created_at, SignalSetRow.id)
            ).all()
        if not rows:
            return None
        return {name: value for name, value in rows}

    # -- runs ------------------------------------------------------------------------------

    def _insert_run(self, s: Session, run: RunResult, cfg: str, recorded_at: str | None,
                    seconds: dict[str, float]) -> str:
        """Insert one run (the callers have checked its keys; a concurrent writer's same key is
        an IntegrityError, which ``_write`` retries)."""
        rid = run_id_of(run, cfg)
        m = self._upsert_model(s, model_desc_of(run))
        d = self._upsert_dataset(s, dataset_desc_of(run))
        when = recorded_at or _now()
        s.add(Run(**self._run_values(s, run, cfg, rid, m, d, when, seconds, {})))
        s.flush()
        return rid

    def record_run(self, run: RunResult) -> str:
        """Record one run in ONE transaction (model + dataset upsert, run row, its signals as a
        signal set). A retry of an already recorded (configuration, seed) returns the existing
        id without writing. ``on_run_recorded`` hooks run after the commit."""
        clean = validate_run(run)
        cfg = config_hash(clean)

        def tx(s: Session) -> tuple[str, bool]:
            existing = s.scalar(select(Run.run_id).where(Run.config_hash == cfg, Run.seed == clean.seed))
            if existing is not None:
                return existing, False
            # PostgreSQL (read committed): the same run committed by another writer between the
            # two statements is a retry too, not an id clash.
            rid = run_id_of(clean, cfg)
            same = s.execute(select(Run.config_hash, Run.seed).where(Run.run_id == rid)).first()
            if same is not None:
                if tuple(same) == (cfg, clean.seed):
                    return rid, False
                raise HistoryError(f"run: run_id {rid!r} is already in {self.display}")
            return self._insert_run(s, clean, cfg, None, {}), True

        run_id, inserted = self._write(tx)
        if inserted:
            self._call_run_hooks(run, run_id, clean.adapter_path)
        return run_id

    def record_runs(self, runs: Sequence[RunResult]) -> list[tuple[str, bool]]:
        """``record_run`` for many runs in ONE transaction (``advisor history import-spool``):
        every run validated before anything is written, then all inserted in bulk or none; a
        run already recorded (same configuration and seed, also earlier in ``runs``) is not
        written again. Returns (run id, inserted) per run; ``on_run_recorded`` hooks run after
        the commit for the inserted ones."""
        clean = [validate_run(r) for r in runs]
        records = [ImportRecord(label=f"run {i}", run=r, recorded_at=None, signal_seconds={}, config=config_hash(r))
                   for i, r in enumerate(clean, start=1)]
        keys = [(rec.config, run_id_of(rec.run, rec.config)) for rec in records]

        def tx(s: Session) -> list[tuple[str, bool]]:
            owner: dict[tuple[str, int], str] = {}
            for start in range(0, len(keys), BATCH):
                chunk = keys[start:start + BATCH]
                for rid, cfg, seed in s.execute(select(Run.run_id, Run.config_hash, Run.seed)
                                                .where(Run.config_hash.in_(sorted({c for c, _ in chunk})))):
                    owner.setdefault((cfg, seed), rid)
            out: list[tuple[str, bool]] = []
            todo: list[int] = []
            for i, (rec, (cfg, rid)) in enumerate(zip(records, keys)):
                there = owner.get((cfg, rec.run.seed))
                if there is not None:
                    out.append((there, False))
                    continue
                owner[(cfg, rec.run.seed)] = rid
                out.append((rid, True))
                todo.append(i)
            if todo:
                known = set(s.scalars(select(Run.run_id).where(Run.run_id.in_([keys[i][1] for i in todo[:BATCH]]))))
                for start in range(BATCH, len(todo), BATCH):
                    known |= set(s.scalars(select(Run.run_id).where(
                        Run.run_id.in_([keys[i][1] for i in todo[start:start + BATCH]]))))
                clash = next((i for i in todo if keys[i][1] in known), None)
                if clash is not None:
                    raise HistoryError(f"run: run_id {keys[clash][1]!r} is already in {self.display}")
                self.add_records([records[i] for i in todo], session=s)
            return out

        result = self._write(tx)
        for run, done, (rid, inserted) in zip(runs, clean, result):
            if inserted:
                self._call_run_hooks(run, rid, done.adapter_path)
        return result

    def _call_run_hooks(self, run: RunResult, run_id: str, adapter_path: str | None) -> None:
        """``on_run_recorded`` after the commit, with the committed row (read when a hook first
        looks at it) and the adapter file: a failing hook is reported, the run stays."""
        from ..config import adapters_dir
        from ..plugins import _describe_exception, call_one, load_plugins

        row = _CommittedRow(self, run_id)
        adapter = None
        if adapter_path:
            adapter = Path(adapter_path) if Path(adapter_path).is_absolute() else adapters_dir(self.path) / adapter_path
        for impl in reversed(load_plugins().hook.on_run_recorded.get_hookimpls()):
            try:  # through the plugin manager, so ADVISOR_TRACE_PLUGINS sees it
                call_one("on_run_recorded", impl, run=run, run_id=run_id, db_url=self.url, row=row,
                         adapter_file=adapter)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - sys.exit in a hook must not end the command
                print(f"Warning: plugin {impl.plugin_name!r} on_run_recorded failed ({_describe_exception(exc)}); "
                      "the run was recorded", file=sys.stderr)

    @staticmethod
    def _already_present(s: Session, rec: ImportRecord, cfg: str, rid: str, skip_existing: bool) -> bool:
        """True when ``rec``'s run is already in the history and may be left out; raises when
        its id names a different run, or (without ``skip_existing``) when it is there."""
        run = rec.run
        same_id = s.execute(select(Run.config_hash, Run.seed).where(Run.run_id == rid)).first()
        if same_id is not None:
            if skip_existing and tuple(same_id) == (cfg, run.seed):
                return True  # this very run, already here
            raise HistoryError(f"{rec.label}: run_id {rid!r} is already in the database")
        existing = s.scalar(select(Run.run_id).where(Run.config_hash == cfg, Run.seed == run.seed))
        if existing is not None:
            if skip_existing:
                return True
            raise HistoryError(
                f"{rec.label}: a run with the same model, dataset, method, shots, hparams, split and "
                f"seed is already in the database (run {existing!r})"
            )
        return False

    def add_records(self, records: Sequence[ImportRecord], *, skip_existing: bool = False,
                    session: Session | None = None) -> int:
        """Insert validated import rows, all or nothing; returns how many were added. A run
        already present is an error, or with ``skip_existing`` is left out (the copy already in
        the history stays): merging another history's export, e.g. a newer shipped registry's,
        into your own.

        In bulk, in ONE transaction: the keys of every row are looked up ``BATCH`` at a time,
        each model, dataset and signal set is written once, and the runs go in as multi-row
        INSERTs of ``BATCH`` rows (progress on stderr from ``PROGRESS_FROM`` rows). The answer
        is the one a row-by-row insert gives: the same conflicts, named by the same row.
        ``session``: inside that open write transaction instead of a new one."""
        records = list(records)
        keys = []
        for rec in records:
            cfg = rec.config or config_hash(rec.run)
            keys.append((cfg, run_id_of(rec.run, cfg)))

        def tx(s: Session) -> int:
            todo = self._new_records(s, records, keys, skip_existing)
            if not todo:
                return 0
            from ..terminal import progress_bar

            bar = progress_bar(len(todo), "adding runs", "run") if len(todo) >= PROGRESS_FROM else None
            try:
                models, datasets = self._upsert_descs(s, [records[i].run for i in todo])
                sets = self._known_sets(s, models.values(), datasets.values())
                table = Run.__table__
                values: list[dict[str, Any]] = []
                for i in todo:
                    rec, (cfg, rid) = records[i], keys[i]
                    run = rec.run
                    m, d = models[model_key(model_desc_of(run))], datasets[dataset_key(dataset_desc_of(run))]
                    when = rec.recorded_at or _now()
                    values.append(self._run_values(s, run, cfg, rid, m, d, when, rec.signal_seconds, sets))
                    if len(values) >= BATCH:
                        s.execute(insert(table), values)
                        if bar is not None:
                            bar.update(len(values))
                        values = []
                if values:
                    s.execute(insert(table), values)
                    if bar is not None:
                        bar.update(len(values))
            finally:
                if bar is not None:
                    bar.close()
            return len(todo)

        return tx(session) if session is not None else self._write(tx)

    def _new_records(self, s: Session, records: Sequence[ImportRecord], keys: Sequence[tuple[str, str]],
                     skip_existing: bool) -> list[int]:
        """Indexes of ``records`` to insert, in order; raises on the first conflict a row-by-row
        insert would meet (``_already_present``'s rules), looking the keys up ``BATCH`` at a time."""
        by_id: dict[str, tuple[str, int]] = {}
        by_config: dict[tuple[str, int], str] = {}
        for start in range(0, len(keys), BATCH):
            chunk = keys[start:start + BATCH]
            ids = sorted({rid for _, rid in chunk})
            for rid, cfg, seed in s.execute(select(Run.run_id, Run.config_hash, Run.seed).where(Run.run_id.in_(ids))):
                by_id[rid] = (cfg, seed)
            # (configuration, seed) pairs, not configurations: a configuration run with many
            # seeds would return every one of its runs (all the copies of a large history)
            pairs = sorted({(cfg, records[start + j].run.seed) for j, (cfg, _) in enumerate(chunk)})
            for rid, cfg, seed in s.execute(select(Run.run_id, Run.config_hash, Run.seed)
                                            .where(tuple_(Run.config_hash, Run.seed).in_(pairs))):
                by_config.setdefault((cfg, seed), rid)
        todo = []
        for i, (rec, (cfg, rid)) in enumerate(zip(records, keys)):
            seed = rec.run.seed
            same_id = by_id.get(rid)
            if same_id is not None:
                if skip_existing and same_id == (cfg, seed):
                    continue
                raise HistoryError(f"{rec.label}: run_id {rid!r} is already in the database")
            existing = by_config.get((cfg, seed))
            if existing is not None:
                if skip_existing:
                    continue
                raise HistoryError(
                    f"{rec.label}: a run with the same model, dataset, method, shots, hparams, split and "
                    f"seed is already in the database (run {existing!r})"
                )
            todo.append(i)
            by_id[rid] = (cfg, seed)  # a later row of the same batch meets this one, as row by row
            by_config.setdefault((cfg, seed), rid)
        return todo

    def _upsert_descs(self, s: Session, runs: Sequence[RunResult]) -> tuple[dict[str, Model], dict[str, Dataset]]:
        """Each model and dataset of ``runs`` written once: their descriptors merged in row
        order (newest non-empty wins, extras merged), as one upsert per row would leave them."""
        mdescs: dict[str, dict[str, Any]] = {}
        ddescs: dict[str, dict[str, Any]] = {}
        for run in runs:
            for descs, desc, key, known in ((mdescs, model_desc_of(run), model_key, MODEL_FIELDS),
                                            (ddescs, dataset_desc_of(run), dataset_key, DATASET_FIELDS)):
                k = key(desc)
                have = descs.get(k)
                if have is None:
                    descs[k] = dict(desc)
                else:  # a known field: the newest non-empty value; any other descriptor: the newest
                    have.update({f: v for f, v in desc.items() if v is not None or f not in known or f not in have})
        models = {k: self._upsert_model(s, d) for k, d in mdescs.items()}
        datasets = {k: self._upsert_dataset(s, d) for k, d in ddescs.items()}
        return models, datasets

    @staticmethod
    def _known_sets(s: Session, models: Iterable[Model], datasets: Iterable[Dataset]) -> dict[tuple[Any, ...], int | None]:
        """The stored signal sets of these models and datasets by (model id, dataset id, split
        hash, content hash): the newest id of each, as ``_signal_set`` would find it, in one query."""
        out: dict[tuple[Any, ...], int | None] = {}
        mids, dids = sorted({m.id for m in models}), sorted({d.id for d in datasets})
        if len(mids) > BATCH or len(dids) > BATCH:
            return out  # looked up one by one instead
        for sid, m, d, split, chash in s.execute(
                select(SignalSetRow.id, SignalSetRow.model_id, SignalSetRow.dataset_id, SignalSetRow.split_hash, SignalSetRow.content_hash)
                .where(SignalSetRow.model_id.in_(mids), SignalSetRow.dataset_id.in_(dids)).order_by(SignalSetRow.id)):
            out[(m, d, split, chash)] = sid
        return out

    def _run_values(self, s: Session, run: RunResult, cfg: str, rid: str, m: Model, d: Dataset, when: str,
                    seconds: dict[str, float], sets: dict[tuple[Any, ...], int | None]) -> dict[str, Any]:
        """The ``runs`` row of one run, its signal set found or stored first (once per batch)."""
        set_id: int | None = None
        if run.signals:
            versions = {k: v for k, v in run.signal_versions.items() if k in run.signals and v is not None}
            secs = {k: v for k, v in seconds.items() if k in run.signals and v is not None}
            key = (m.id, d.id, run.split_hash or None, signal_content_hash(run.signals, versions, secs))
            if key in sets:
                set_id = sets[key]
            else:
                ss = self._signal_set(s, m, d, run.split_hash or None, run.signals, run.signal_versions, seconds, when)
                set_id = sets[key] = ss.id if ss else None
        return dict(
            run_id=rid, config_hash=cfg, model_id=m.id, dataset_id=d.id, signal_set_id=set_id,
            method=run.method, shots=run.shots, seed=run.seed, hparams=run.hparams or {},
            split_hash=run.split_hash or None, id_acc_before=run.id_acc_before, id_acc_after=run.id_acc_after,
            ood_before=run.ood_before or {}, ood_after=run.ood_after or {}, gap_before=run.gap_before,
            gap_after=run.gap_after, wall_time_s=run.wall_time_s, train_images_per_s=run.train_images_per_s,
            peak_memory_mb=run.peak_memory_mb, trainable_params=run.trainable_params, device=run.device or None,
            provenance=run.provenance or {}, losses=list(run.losses or []), curve=list(run.curve) or None,
            adapter_path=run.adapter_path or None, created_at=when,
        )

    def missing_count(self, records: Sequence[ImportRecord]) -> int:
        """How many of ``records`` ``add_records(records, skip_existing=True)`` would add (it
        raises on the same conflicts); nothing is written."""
        with self._read() as s:
            missing = 0
            for rec in records:
                cfg = config_hash(rec.run)
                missing += not self._already_present(s, rec, cfg, run_id_of(rec.run, cfg), True)
            return missing

    def import_file(self, path: str | os.PathLike[str], fmt: str | None = None) -> int:
        """Validate a CSV / JSON / JSON-lines file completely, then add all its rows or none."""
        from . import io as hio  # the file formats: not imported by commands that only read

        records = hio.parse_file(path, fmt)
        return self.add_records(records)

    def _run_query(self, model: str | None, dataset: str | None, method: str | None) -> Any:
        q = (
            select(Run)
            .join(Model, Run.model_id == Model.id)
            .join(Dataset, Run.dataset_id == Dataset.id)
            .options(selectinload(Run.model), selectinload(Run.dataset),
                     selectinload(Run.signal_set).selectinload(SignalSetRow.values))
            .order_by(Run.created_at, Run.id)
        )
        if model:
            q = q.where(Model.name.in_(_spellings(model, "--model")))
        if dataset:
            q = q.where(Dataset.name.in_(_spellings(dataset, "--dataset")))
        if method:
            q = q.where(Run.method.in_(_spellings(method, "--method")))
        return q

    def run_keys(self) -> list[tuple[str, str, int]]:
        """(run id, configuration hash, seed) of every run: what deciding "already recorded"
        needs, three columns read instead of every run's row."""
        with self._read() as s:
            return [(str(r), str(c), int(sd)) for r, c, sd in s.execute(select(Run.run_id, Run.config_hash, Run.seed))]

    def runs(self, model: str | None = None, dataset: str | None = None, method: str | None = None, *,
             limit: int | None = None, offset: int = 0, after: str | None = None) -> list[dict[str, Any]]:
        """Runs as flat rows (the export columns; see docs/history.md), oldest first; ``limit``,
        ``offset`` and ``after`` (a run id: the runs after it) as ``iter_runs``."""
        return list(self.iter_runs(model, dataset, method, limit=limit, offset=offset, after=after))

    def iter_runs(self, model: str | None = None, dataset: str | None = None, method: str | None = None, *,
                  limit: int | None = None, offset: int = 0, after: str | None = None,
                  page: int = PAGE) -> Iterator[dict[str, Any]]:
        """Flat rows, oldest first, filtered in SQL, read ``page`` runs at a time (keyset
        pagination on (recorded time, id)), so a million runs stream in bounded memory.
        ``after``: only the runs after that run (its id or an unambiguous prefix) in this order;
        ``offset`` skips that many more; ``limit`` stops after that many."""
        if limit is not None and limit < 0 or offset < 0:
            raise HistoryError("--limit and --offset must be 0 or more")
        base = self._run_query(model, dataset, method)
        cursor: tuple[str, int] | None = None
        if after is not None:
            cursor = self._position(after)
        left = limit
        skip = offset
        while left is None or left > 0:
            q = base
            if cursor is not None:
                q = q.where(tuple_(Run.created_at, Run.id) > tuple_(*cursor))
            n = page if left is None else min(page, left)
            if skip:
                q = q.offset(skip)
            with self._read() as s:
                batch = list(s.scalars(q.limit(n)))
                rows = [flat_row(r) for r in batch]
                last = (batch[-1].created_at, batch[-1].id) if batch else None
            skip = 0
            yield from rows
            if len(rows) < n or last is None:
                return
            cursor = last
            if left is not None:
                left -= len(rows)

    def _position(self, run_id: str) -> tuple[str, int]:
        """(recorded time, id) of a run given by id or unambiguous prefix, for ``after``."""
        if lone_surrogate(run_id) is not None:
            raise HistoryError(f"no run with id {run_id!r} in {self.display}")
        with self._read() as s:
            found = s.execute(select(Run.created_at, Run.id).where(Run.run_id == run_id)).first()
            if found is None:
                found_all = s.execute(select(Run.created_at, Run.id)
                                      .where(Run.run_id.startswith(run_id, autoescape=True)).limit(2)).all()
                if len(found_all) > 1:
                    raise HistoryError(f"run id prefix {run_id!r} is ambiguous in {self.display}")
                if not found_all:
                    raise HistoryError(f"no run with id {run_id!r} in {self.display}")
                found = found_all[0]
            return str(found[0]), int(found[1])

    def pairs(self) -> list[dict[str, Any]]:
        """Every (model, dataset) pair that has runs: the stored descriptors and the run count."""
        with self._read() as s:
            rows = s.execute(select(Model, Dataset, func.count(Run.id)).join(Run, Run.model_id == Model.id)
                             .join(Dataset, Run.dataset_id == Dataset.id).group_by(Model.id, Dataset.id)
                             .order_by(Model.id, Dataset.id)).all()
            return [{"model_desc": stored_model_desc(m), "dataset_desc": stored_dataset_desc(d), "runs": int(n)}
                    for m, d, n in rows]

    def use_signal_set(self, signal_set_id: int) -> int:
        """Point every run of the signal set's (model, dataset) pair at it (after recomputing a
        pair's signals with changed metric code); returns how many runs now point at it."""

        def tx(s: Session) -> int:
            ss = s.get(SignalSetRow, signal_set_id)
            if ss is None:
                raise HistoryError(f"no signal set {signal_set_id} in {self.display}")
            runs = list(s.scalars(select(Run).where(Run.model_id == ss.model_id, Run.dataset_id == ss.dataset_id)))
            for r in runs:
                r.signal_set_id = ss.id
            return len(runs)

        return self._write(tx)

    def models(self) -> list[dict[str, Any]]:
        """Descriptor dicts of every model the history knows (with or without runs), so a
        recommendation for a known model needs no weights loaded."""
        with self._read() as s:
            out = []
            for m in s.scalars(select(Model).order_by(Model.id)):
                desc = dict(m.extra or {})
                desc.update(name=m.name, pretrained=m.pretrained,
                            **{f: getattr(m, f) for f in MODEL_FIELDS})
                out.append(desc)
            return out

    def count(self) -> int:
        with self._read() as s:
            return int(s.scalar(select(func.count(Run.id))) or 0)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run as a flat row, by exact id or an unambiguous prefix."""
        if lone_surrogate(run_id) is not None:  # no stored id holds one (and drivers cannot send it)
            raise HistoryError(f"no run with id {run_id!r} in {self.display}")
        with self._read() as s:
            run = s.scalar(self._run_query(None, None, None).where(Run.run_id == run_id))
            if run is None:
                matches = list(s.scalars(self._run_query(None, None, None).where(Run.run_id.startswith(run_id, autoescape=True)).limit(2)))
                if len(matches) > 1:
                    raise HistoryError(f"run id prefix {run_id!r} is ambiguous in {self.display}")
                if not matches:
                    raise HistoryError(f"no run with id {run_id!r} in {self.display}")
                run = matches[0]
            return flat_row(run)

    def export(self, fmt: str, out: Any) -> int:
        """Write every run as CSV or JSON lines to a text stream; returns the number of rows."""
        if fmt not in ("csv", "jsonl"):
            raise HistoryError(f"unknown export format {fmt!r} (use csv or jsonl)")
        from . import io as hio

        return hio.write_rows(self.iter_runs(), fmt, out, columns=self.export_columns())

    def export_columns(self) -> list[str]:
        """The export's columns (``io.export_columns`` of every run), from one SQL query, so the
        export can stream: the fixed columns, then ``signal.<name>`` for every metric some run's
        own signal set holds, sorted by name."""
        from .rows import COLUMNS, SIGNAL_PREFIX

        with self._read() as s:
            names = s.scalars(select(SignalValue.name).distinct().where(
                SignalValue.signal_set_id.in_(select(Run.signal_set_id).where(Run.signal_set_id.is_not(None)))))
            return [c.name for c in COLUMNS] + sorted(SIGNAL_PREFIX + n for n in names)

    def training_rows(self, lean: bool = False) -> list[dict[str, Any]]:
        """One dict per run for the predictor: the RunResult fields, ``run_id``,
        ``recorded_at``, ``model_desc``, ``dataset_desc``, and ``signals``: the run's own
        signal set, completed with the newest value of any metric it lacks that was measured
        later for the same (model, dataset) pair (a newly installed metric plugin becomes a
        feature for old runs too). ``signal_versions`` likewise. Oldest first. ``lean``:
        without the fields the predictor never reads (``rows.LEAN_DROP``)."""
        return list(self.iter_training_rows(lean=lean))

    def iter_training_rows(self, lean: bool = False, page: int = PAGE) -> Iterator[dict[str, Any]]:
        """``training_rows`` as a stream: the runs are read with plain SQL ``page`` at a time
        (a server-side cursor on PostgreSQL), no ORM object per run, and the descriptors and
        signals that many runs share are one dict each (``rows.TrainingRows``)."""
        table = Run.__table__
        with self._read() as s:
            models = {m.id: m for m in s.scalars(select(Model))}
            datasets = {d.id: d for d in s.scalars(select(Dataset))}
            latest, own = _signal_maps(s)
            s.expunge_all()
        build = TrainingRows(models, datasets, latest, own, lean=lean)
        q = (select(table).join(Model.__table__, table.c.model_id == Model.__table__.c.id)
             .join(Dataset.__table__, table.c.dataset_id == Dataset.__table__.c.id)
             .order_by(table.c.created_at, table.c.id))
        with self._guard(), self._read_engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=page).execute(q)
            for r in result.mappings():
                yield build.row(r)
            conn.rollback()

    def state(self) -> dict[str, Any]:
        """What changes whenever the runs a predictor trains on change, read in constant time
        (primary-key maxima): the newest run's id and the newest signal set of a pair that
        has runs. Runs are only ever added, and new signals always come as a new set."""
        with self._read() as s:
            runs = s.scalar(select(func.max(Run.id)))
            sets = s.scalar(select(func.max(SignalSetRow.id)).where(
                select(Run.id).where(Run.model_id == SignalSetRow.model_id, Run.dataset_id == SignalSetRow.dataset_id)
                .limit(1).exists()))
        return {"max_run": runs, "max_signal_set": sets}

    def run_groups(self) -> list[dict[str, Any]]:
        """The runs grouped by what decides whether a run is similar to a case (model, dataset,
        signal set, shots, method): one entry per group with its ids, the model and dataset
        keys, the run count and the group's merged signals (as its training rows have them).
        Grows with the history's configurations, not with its seeds or repeats."""
        with self._read() as s:
            latest, own = _signal_maps(s)
            groups = s.execute(select(Run.model_id, Run.dataset_id, Run.signal_set_id, Run.shots, Run.method,
                                      func.count(Run.id), func.min(Run.id))
                               .group_by(Run.model_id, Run.dataset_id, Run.signal_set_id, Run.shots, Run.method)
                               .order_by(func.min(Run.id))).all()
            keys = {m.id: (m.key, stored_model_desc(m)) for m in s.scalars(select(Model))}
            dkeys = {d.id: (d.key, stored_dataset_desc(d)) for d in s.scalars(select(Dataset))}
        build = TrainingRows({}, {}, latest, own)
        out = []
        for model_id, dataset_id, set_id, shots, method, n, _ in groups:
            out.append({"model_id": model_id, "dataset_id": dataset_id, "signal_set_id": set_id, "shots": shots,
                        "method": method, "runs": int(n), "model_key": keys[model_id][0],
                        "dataset_key": dkeys[dataset_id][0], "model_desc": keys[model_id][1],
                        "dataset_desc": dkeys[dataset_id][1],
                        "signals": build.signals(model_id, dataset_id, set_id)[0]})
        return out

    def group_runs(self, method: str, groups: Sequence[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` runs (oldest first) of ``method`` in ``groups`` (``run_groups``
        entries: model, dataset, signal set, shots ids): model and dataset names, shots, seed and
        hyper-parameters. One SQL statement; each group is read through ``ix_runs_group`` only
        as far as ``limit``, so the answer is bounded however many runs the groups hold."""
        from sqlalchemy import union_all

        if not groups or limit <= 0:
            return []
        parts = []
        for g in groups:
            cond = [Run.method == method, Run.model_id == g["model_id"], Run.dataset_id == g["dataset_id"],
                    Run.shots.is_(None) if g["shots"] is None else Run.shots == g["shots"],
                    Run.signal_set_id.is_(None) if g["signal_set_id"] is None else Run.signal_set_id == g["signal_set_id"]]
            parts.append(select(Run.id, Run.created_at).where(*cond).order_by(Run.created_at, Run.id).limit(limit)
                         .subquery().select())
        ids = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
        q = (select(Run.run_id, Model.name, Dataset.name, Run.shots, Run.seed, Run.hparams, Run.method)
             .join(Model, Run.model_id == Model.id).join(Dataset, Run.dataset_id == Dataset.id)
             .where(Run.id.in_(select(ids.c.id))).order_by(Run.created_at, Run.id).limit(limit))
        with self._read() as s:
            return [{"run_id": rid, "model": mname, "dataset": dname, "shots": shots, "seed": seed,
                     "hparams": hp, "method": m} for rid, mname, dname, shots, seed, hp, m in s.execute(q)]

    # -- predictors ------------------------------------------------------------------------

    def save_predictor(self, name: str, blob: str, features: list[str], training_hash: str, scores: dict[str, Any],
                       summary: dict[str, Any] | None = None) -> int:
        """Store a trained predictor (older ones under the same name are kept as history), with
        ``summary``: what a recommendation needs from the whole history (``predictor.summary``)."""

        def tx(s: Session) -> int:
            p = Predictor(name=name, blob=blob, features=list(features), training_hash=training_hash,
                          scores=jsonable(scores), created_at=_now(),
                          summary=jsonable(summary) if summary is not None else None)
            s.add(p)
            s.flush()
            return p.id

        return self._write(tx)

    def load_predictor(self, name: str = "default") -> dict[str, Any] | None:
        """The newest predictor saved under ``name``."""
        with self._read() as s:
            p = s.scalar(select(Predictor).where(Predictor.name == name).order_by(Predictor.id.desc()).limit(1))
            if p is None:
                return None
            return {"id": p.id, "name": p.name, "blob": p.blob, "features": list(p.features),
                    "training_hash": p.training_hash, "scores": dict(p.scores), "created_at": p.created_at,
                    "summary": p.summary}


# ------------------------------------------------------------------------------- helpers


R = TypeVar("R", Model, Dataset)


class _CommittedRow(Mapping[str, Any]):
    """A recorded run as ``History.get_run`` gives it, read on first use: what ``on_run_recorded``
    hooks receive, so one that never looks at it (the MLflow mirror when it is off) costs no query."""

    def __init__(self, history: History, run_id: str) -> None:
        self._history, self._run_id = history, run_id
        self._row: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._row is None:
            self._row = self._history.get_run(self._run_id)
        return self._row

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"<committed row of run {self._run_id}>"


def _upsert(s: Session, table: type[R], key: str, desc: Mapping[str, Any], fields: Sequence[str],
            identity: dict[str, Any]) -> R:
    """The ``models`` or ``datasets`` row of ``key``, created from ``desc`` (its ``identity``
    columns, the descriptor ``fields``, every other key in ``extra``) or updated: the newest
    non-empty descriptor wins, an empty one never erases, extras are merged."""
    known = {f: desc.get(f) for f in fields}
    extra = {k: v for k, v in desc.items() if k not in fields and k not in identity}
    row = s.scalar(select(table).where(table.key == key))
    if row is None:
        row = table(key=key, extra=extra, created_at=_now(), **identity, **known)
        s.add(row)
        s.flush()
        return row
    for f, v in known.items():
        if v is not None:
            setattr(row, f, v)
    if extra:
        row.extra = {**(row.extra or {}), **extra}
    return row


def _signal_maps(s: Session) -> tuple[dict[tuple[int, int], dict[str, tuple[float, str | None]]],
                                       dict[int, dict[str, tuple[float, str | None]]]]:
    """(per (model id, dataset id): each metric's newest (value, version); per signal set: its
    own), the two halves ``training_rows`` merges. Grows with the signal sets, not the runs."""
    latest: dict[tuple[int, int], dict[str, tuple[float, str | None]]] = {}
    own: dict[int, dict[str, tuple[float, str | None]]] = {}
    for set_id, ss_model, ss_dataset, name, value, version in s.execute(
        select(SignalSetRow.id, SignalSetRow.model_id, SignalSetRow.dataset_id, SignalValue.name, SignalValue.value,
               SignalValue.version)
        .join(SignalSetRow, SignalValue.signal_set_id == SignalSetRow.id)
        .order_by(SignalSetRow.created_at, SignalSetRow.id)
    ):
        latest.setdefault((ss_model, ss_dataset), {})[name] = (value, version)
        own.setdefault(set_id, {})[name] = (value, version)
    return latest, own


def _spellings(name: str, what: str) -> list[str]:
    """A filter's name in NFC (how names are stored) and NFD (rows stored before they were
    normalised), so either spelling finds the runs; a lone surrogate is a one-line error."""
    nfc = normal_name(name, what)
    return sorted({nfc, unicodedata.normalize("NFD", nfc)})
