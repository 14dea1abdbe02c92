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
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from ..errors import HistoryError
from ..specs import RunResult
from . import io as hio
from .database import TIMEOUT_ENV, db_timeout, make_engines, quick_check, translate  # noqa: F401
from .keys import (  # noqa: F401  (re-exported: older imports from advisor.history.store)
    config_hash,
    dataset_desc_of,
    dataset_key,
    default_run_id,
    model_desc_of,
    model_key,
    run_id_of,
    signal_content_hash,
)
from .location import (  # noqa: F401  (re-exported likewise)
    DEFAULT_NAME,
    default_path,
    ensure_default_db,
    location,
    require_existing,
    resolve_url,
    sqlite_file,
    sqlite_url,
)
from .migrations import SCHEMA_VERSION, applied_migrations, check_version, migrate, pending  # noqa: F401
from .rows import DATASET_FIELDS, MODEL_FIELDS, ImportRecord, flat_row, jsonable, training_row
from .rows import dataset_desc as stored_dataset_desc
from .rows import model_desc as stored_model_desc
from .schema import Dataset, Model, Predictor, Run, SignalSet, SignalValue
from .validate import lone_surrogate, normal_name, validate_run

T = TypeVar("T")


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
        self.engine.dispose()
        if self._read_engine is not self.engine:
            self._read_engine.dispose()

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
        key = model_key(desc)
        known = {f: desc.get(f) for f in MODEL_FIELDS}
        extra = {k: v for k, v in desc.items() if k not in MODEL_FIELDS and k not in ("name", "pretrained")}
        row = s.scalar(select(Model).where(Model.key == key))
        if row is None:
            row = Model(key=key, name=desc["name"], pretrained=desc.get("pretrained"), extra=extra,
                        created_at=_now(), **known)
            s.add(row)
            s.flush()
            return row
        for f, v in known.items():  # newest non-empty descriptor wins; empty never erases
            if v is not None:
                setattr(row, f, v)
        if extra:
            row.extra = {**(row.extra or {}), **extra}
        return row

    def _upsert_dataset(self, s: Session, desc: dict[str, Any]) -> Dataset:
        key = dataset_key(desc)
        known = {f: desc.get(f) for f in DATASET_FIELDS}
        extra = {k: v for k, v in desc.items() if k not in DATASET_FIELDS and k != "name"}
        row = s.scalar(select(Dataset).where(Dataset.key == key))
        if row is None:
            row = Dataset(key=key, name=desc["name"], extra=extra, created_at=_now(), **known)
            s.add(row)
            s.flush()
            return row
        for f, v in known.items():
            if v is not None:
                setattr(row, f, v)
        if extra:
            row.extra = {**(row.extra or {}), **extra}
        return row

    def _signal_set(self, s: Session, model: Model, dataset: Dataset, split_hash: str | None,
                    values: dict[str, float], versions: dict[str, str], seconds: dict[str, float],
                    created_at: str | None = None) -> SignalSet | None:
        if not values:
            return None
        versions = {k: v for k, v in versions.items() if k in values and v is not None}
        seconds = {k: v for k, v in seconds.items() if k in values and v is not None}
        chash = signal_content_hash(values, versions, seconds)
        existing = s.scalar(
            select(SignalSet).where(
                SignalSet.model_id == model.id,
                SignalSet.dataset_id == dataset.id,
                SignalSet.split_hash.is_not_distinct_from(split_hash),
                SignalSet.content_hash == chash,
            ).order_by(SignalSet.id.desc()).limit(1)
        )
        if existing is not None:
            return existing
        ss = SignalSet(model_id=model.id, dataset_id=dataset.id, split_hash=split_hash, content_hash=chash,
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
                .join(SignalSet, SignalValue.signal_set_id == SignalSet.id)
                .join(Model, SignalSet.model_id == Model.id)
                .join(Dataset, SignalSet.dataset_id == Dataset.id)
                .where(Model.key == model_key, Dataset.key == dataset_key)
                .order_by(SignalSet.created_at, SignalSet.id)
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
        ss = self._signal_set(s, m, d, run.split_hash or None, run.signals, run.signal_versions, seconds, when)
        s.add(Run(
            run_id=rid, config_hash=cfg, model_id=m.id, dataset_id=d.id, signal_set_id=ss.id if ss else None,
            method=run.method, shots=run.shots, seed=run.seed, hparams=run.hparams or {},
            split_hash=run.split_hash or None, id_acc_before=run.id_acc_before, id_acc_after=run.id_acc_after,
            ood_before=run.ood_before or {}, ood_after=run.ood_after or {}, gap_before=run.gap_before,
            gap_after=run.gap_after, wall_time_s=run.wall_time_s, train_images_per_s=run.train_images_per_s,
            peak_memory_mb=run.peak_memory_mb, trainable_params=run.trainable_params, device=run.device or None,
            provenance=run.provenance or {}, losses=list(run.losses or []), curve=list(run.curve) or None,
            adapter_path=run.adapter_path or None, created_at=when,
        ))
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
            _call_run_hooks(run, run_id, self.url)
        return run_id

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

    def add_records(self, records: Sequence[ImportRecord], *, skip_existing: bool = False) -> int:
        """Insert validated import rows, all or nothing; returns how many were added. A run
        already present is an error, or with ``skip_existing`` is left out (the copy already in
        the history stays): merging another history's export, e.g. a newer shipped registry's,
        into your own."""

        def tx(s: Session) -> int:
            added = 0
            for rec in records:
                cfg = config_hash(rec.run)
                rid = run_id_of(rec.run, cfg)
                if self._already_present(s, rec, cfg, rid, skip_existing):
                    continue
                self._insert_run(s, rec.run, cfg, rec.recorded_at, rec.signal_seconds)
                added += 1
            return added

        return self._write(tx)

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
        records = hio.parse_file(path, fmt)
        return self.add_records(records)

    def _run_query(self, model: str | None, dataset: str | None, method: str | None) -> Any:
        q = (
            select(Run)
            .join(Model, Run.model_id == Model.id)
            .join(Dataset, Run.dataset_id == Dataset.id)
            .options(selectinload(Run.model), selectinload(Run.dataset),
                     selectinload(Run.signal_set).selectinload(SignalSet.values))
            .order_by(Run.created_at, Run.id)
        )
        if model:
            q = q.where(Model.name.in_(_spellings(model, "--model")))
        if dataset:
            q = q.where(Dataset.name.in_(_spellings(dataset, "--dataset")))
        if method:
            q = q.where(Run.method.in_(_spellings(method, "--method")))
        return q

    def runs(self, model: str | None = None, dataset: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Runs as flat rows (the export columns; see docs/history.md), oldest first."""
        with self._read() as s:
            return [flat_row(r) for r in s.scalars(self._run_query(model, dataset, method))]

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
            ss = s.get(SignalSet, signal_set_id)
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
        return hio.write_rows(self.runs(), fmt, out)

    def training_rows(self) -> list[dict[str, Any]]:
        """One dict per run for the predictor: the RunResult fields, ``run_id``,
        ``recorded_at``, ``model_desc``, ``dataset_desc``, and ``signals``: the run's own
        signal set, completed with the newest value of any metric it lacks that was measured
        later for the same (model, dataset) pair (a newly installed metric plugin becomes a
        feature for old runs too). ``signal_versions`` likewise."""
        with self._read() as s:
            runs = list(s.scalars(self._run_query(None, None, None)))
            latest: dict[tuple[int, int], dict[str, tuple[float, str | None]]] = {}
            for ss_model, ss_dataset, name, value, version in s.execute(
                select(SignalSet.model_id, SignalSet.dataset_id, SignalValue.name, SignalValue.value, SignalValue.version)
                .join(SignalSet, SignalValue.signal_set_id == SignalSet.id)
                .order_by(SignalSet.created_at, SignalSet.id)
            ):
                latest.setdefault((ss_model, ss_dataset), {})[name] = (value, version)
            out = []
            for r in runs:
                own = {v.name: (v.value, v.version) for v in (r.signal_set.values if r.signal_set else [])}
                out.append(training_row(r, {**latest.get((r.model_id, r.dataset_id), {}), **own}))
            return out

    # -- predictors ------------------------------------------------------------------------

    def save_predictor(self, name: str, blob: str, features: list[str], training_hash: str, scores: dict[str, Any]) -> int:
        """Store a trained predictor (older ones under the same name are kept as history)."""

        def tx(s: Session) -> int:
            p = Predictor(name=name, blob=blob, features=list(features), training_hash=training_hash,
                          scores=jsonable(scores), created_at=_now())
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
                    "training_hash": p.training_hash, "scores": dict(p.scores), "created_at": p.created_at}


    # -- predictors ------------------------------------------------------------------------

# ------------------------------------------------------------------------------- helpers


def _spellings(name: str, what: str) -> list[str]:
    """A filter's name in NFC (how names are stored) and NFD (rows stored before they were
    normalised), so either spelling finds the runs; a lone surrogate is a one-line error."""
    nfc = normal_name(name, what)
    return sorted({nfc, unicodedata.normalize("NFD", nfc)})


def _call_run_hooks(run: RunResult, run_id: str, url: str) -> None:
    """``on_run_recorded`` after the commit: a failing hook is reported, the run stays."""
    from ..plugins import _describe_exception, load_plugins

    pm = load_plugins()
    for impl in reversed(pm.hook.on_run_recorded.get_hookimpls()):
        try:
            impl.function(run=run, run_id=run_id, db_url=url)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - sys.exit in a hook must not end the command
            print(f"Warning: plugin {impl.plugin_name!r} on_run_recorded failed ({_describe_exception(exc)}); "
                  "the run was recorded", file=sys.stderr)
