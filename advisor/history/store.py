"""The run history: where it lives, how it is opened, and every read and write.

SQLite by default (WAL mode, a busy timeout, foreign keys on, each write one ``BEGIN
IMMEDIATE`` transaction so concurrent writers queue instead of failing); any SQLAlchemy URL
(PostgreSQL) for teams. Every database problem a user can cause becomes a one-line
``HistoryError``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import fields as dc_fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.pool import StaticPool

from .. import config
from ..errors import HistoryError, InputFileError
from ..specs import RunResult, stable_hash
from . import io as hio
from .migrations import SCHEMA_VERSION, applied_migrations, check_version, migrate, pending
from .schema import Dataset, Model, Predictor, Run, SignalSet, SignalValue

T = TypeVar("T")

TIMEOUT_ENV = "ADVISOR_DB_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
DEFAULT_NAME = "registry.db"

MODEL_FIELDS = hio.MODEL_FIELDS
DATASET_FIELDS = hio.DATASET_FIELDS


# ------------------------------------------------------------------------------- keys


def model_key(desc: dict[str, Any]) -> str:
    """``name|pretrained|image_size``: the same model at another resolution is another model."""
    return f"{desc.get('name') or ''}|{desc.get('pretrained') or ''}|{desc.get('image_size') or ''}"


def dataset_key(desc: dict[str, Any]) -> str:
    """``name|fingerprint``: changed data is another dataset."""
    return f"{desc.get('name') or ''}|{desc.get('fingerprint') or ''}"


def model_desc_of(run: RunResult) -> dict[str, Any]:
    """The run's model descriptors; the run's own ``model`` and ``pretrained`` win."""
    desc = {k: v for k, v in (run.model_desc or {}).items() if k not in ("name", "pretrained")}
    return {"name": run.model, "pretrained": run.pretrained or None, **desc}


def dataset_desc_of(run: RunResult) -> dict[str, Any]:
    desc = {k: v for k, v in (run.dataset_desc or {}).items() if k != "name"}
    return {"name": run.dataset, **desc}


def config_hash(run: RunResult, model_desc: dict[str, Any], dataset_desc: dict[str, Any]) -> str:
    """What makes two runs "the same run": with the seed, unique in the ``runs`` table."""
    return stable_hash(
        {
            "model": model_key(model_desc),
            "dataset": dataset_key(dataset_desc),
            "method": run.method,
            "shots": run.shots,
            "hparams": run.hparams or {},
            "split_hash": run.split_hash or None,
        },
        32,
    )


def default_run_id(run: RunResult, cfg: str) -> str:
    """Deterministic, so a retried run gets the id of its first attempt."""
    slug = re.sub(r"[^a-z0-9]+", "-", run.method.lower()).strip("-") or "run"
    return f"{slug}-{stable_hash([cfg, run.seed], 12)}"


def signal_content_hash(values: dict[str, float], versions: dict[str, str], seconds: dict[str, float]) -> str:
    return stable_hash({"values": values, "versions": versions, "seconds": seconds}, 32)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------- location


def default_path() -> Path:
    """``<user data dir>/registry.db`` (``ADVISOR_HOME`` moves the user data dir)."""
    return config.user_dir() / DEFAULT_NAME


def _sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.absolute())


def resolve_url(db: str | os.PathLike[str] | None) -> str:
    """None -> the user-data database; a path -> a SQLite URL; a URL (``scheme://``) as is."""
    if db is None or str(db) == "":
        return _sqlite_url(default_path())
    text = str(db)
    if "://" in text:
        try:
            make_url(text)
        except ArgumentError:
            raise HistoryError(f"bad database URL {text!r} (expected a path or e.g. postgresql://host/db)") from None
        return text
    return _sqlite_url(Path(text).expanduser())


def location(db: str | os.PathLike[str] | None) -> str:
    """Where ``db`` points, for people: a file path for SQLite, else the URL without password."""
    url = make_url(resolve_url(db))
    path = _sqlite_file(url) if url.get_backend_name() == "sqlite" else None
    return str(path) if path else url.render_as_string(hide_password=True)


def ensure_default_db(path: Path | None = None) -> Path:
    """Create the user-data database by copying the shipped ``registry.db`` (never writing to
    it). Safe against concurrent first use: the copy appears atomically or not at all."""
    path = path or default_path()
    if path.exists():
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


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory databases."""
    db = url.database
    if not db or db == ":memory:" or "mode=memory" in db:
        return None
    if db.startswith("file:"):
        db = db[len("file:"):].split("?", 1)[0]
    return Path(db)


# ------------------------------------------------------------------------------- opening


def open_history(db: str | os.PathLike[str] | None = None, *, timeout: float | None = None) -> "History":
    """Open (creating and migrating) the history at ``db`` (see ``resolve_url``)."""
    if db is None or str(db) == "":
        path = default_path()
        ensure_default_db(path)
        return History(_sqlite_url(path), timeout=timeout)
    return History(resolve_url(db), timeout=timeout)


def record_run(run: RunResult, db: str | None = None) -> str:
    """Record one run in the history at ``db``; returns its run id."""
    with open_history(db) as h:
        return h.record_run(run)


class History:
    """One history database. Use as a context manager or call ``close()``."""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = url
        if timeout is None:
            env = os.environ.get(TIMEOUT_ENV)
            try:
                timeout = float(env) if env else DEFAULT_TIMEOUT
            except ValueError:
                raise HistoryError(f"{TIMEOUT_ENV}={env!r} is not a number of seconds") from None
        self.timeout = timeout
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise HistoryError(f"bad database URL {url!r}") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path = _sqlite_file(parsed) if self.is_sqlite else None
        self.display = str(self.path) if self.path else parsed.render_as_string(hide_password=True)
        if self.path is not None:
            if self.path.is_dir():
                raise HistoryError(f"database path {self.path} is a directory")
            if not self.path.parent.is_dir():
                raise HistoryError(f"cannot create database {self.path}: directory {self.path.parent} does not exist")
        self.engine = self._make_engine(parsed)
        try:
            self._migrate()
        except BaseException:
            self.engine.dispose()
            raise

    # -- plumbing --------------------------------------------------------------------------

    def _make_engine(self, url: URL) -> Engine:
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": self.timeout}
            if self.path is None:
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"]["check_same_thread"] = False
        try:
            engine = create_engine(url, **kwargs)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            raise HistoryError(f"cannot use database URL {self.display}: driver not installed ({exc})") from None
        except ArgumentError as exc:
            raise HistoryError(f"bad database URL {self.display} ({exc})") from None
        if self.is_sqlite:
            busy_ms = int(self.timeout * 1000)
            in_memory = self.path is None

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
                cur = dbapi_conn.cursor()
                try:
                    cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                    cur.execute("PRAGMA foreign_keys = ON")
                    if not in_memory:
                        try:
                            cur.execute("PRAGMA journal_mode = WAL")
                        except sqlite3.OperationalError as exc:
                            # A read-only file (mode=ro URL) can still be read; writes fail later
                            # with their own one-line error.
                            if "readonly" not in str(exc).replace("-", "").replace(" ", ""):
                                raise
                finally:
                    cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Any) -> None:
                write = conn.get_execution_options().get("advisor_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def _translate(self, exc: BaseException) -> HistoryError:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip()
        msg = text.splitlines()[0] if text else type(orig).__name__
        low = msg.lower()
        d = self.display
        if "readonly" in low or "read-only" in low or "read only" in low:
            return HistoryError(f"database {d} is read-only (use --db or ADVISOR_DB to pick a writable one)")
        if "locked" in low or "busy" in low:
            return HistoryError(
                f"database {d} is locked by another process (gave up after {self.timeout:g} s; "
                f"{TIMEOUT_ENV} sets the wait)"
            )
        if "not a database" in low or "malformed" in low or "encrypted" in low:
            return HistoryError(f"{d} is not a valid SQLite database ({msg})")
        if "unable to open" in low:
            return HistoryError(f"cannot open database {d} ({msg})")
        if isinstance(exc, OperationalError) and not self.is_sqlite:
            return HistoryError(f"cannot use database {d} ({msg})")
        return HistoryError(f"database error on {d}: {msg}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except HistoryError:
            raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise self._translate(exc) from None

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction (``BEGIN IMMEDIATE`` on SQLite). A unique-key
        race with another writer (possible on PostgreSQL) retries; ``fn`` re-checks."""
        attempts = 3
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
        with self._guard(), Session(self.engine) as session:
            yield session

    def _migrate(self) -> None:
        with self._guard():
            with self.engine.connect() as conn:
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

    def close(self) -> None:
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
        md = _jsonable({**model_desc})
        dd = _jsonable({**dataset_desc})
        for what, d in (("model", md), ("dataset", dd)):
            if not d.get("name"):
                raise HistoryError(f"{what} descriptors need a name")
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

    def _insert_run(self, s: Session, run: RunResult, md: dict[str, Any], dd: dict[str, Any], cfg: str,
                    recorded_at: str | None, seconds: dict[str, float], label: str) -> str:
        rid = run.run_id or default_run_id(run, cfg)
        if s.scalar(select(Run.id).where(Run.run_id == rid)) is not None:
            raise HistoryError(f"{label}: run_id {rid!r} is already in {self.display}")
        m = self._upsert_model(s, md)
        d = self._upsert_dataset(s, dd)
        when = recorded_at or _now()
        ss = self._signal_set(s, m, d, run.split_hash or None, run.signals, run.signal_versions, seconds, when)
        s.add(Run(
            run_id=rid, config_hash=cfg, model_id=m.id, dataset_id=d.id, signal_set_id=ss.id if ss else None,
            method=run.method, shots=run.shots, seed=run.seed, hparams=run.hparams or {},
            split_hash=run.split_hash or None, id_acc_before=run.id_acc_before, id_acc_after=run.id_acc_after,
            ood_before=run.ood_before or {}, ood_after=run.ood_after or {}, gap_before=run.gap_before,
            gap_after=run.gap_after, wall_time_s=run.wall_time_s, train_images_per_s=run.train_images_per_s,
            peak_memory_mb=run.peak_memory_mb, trainable_params=run.trainable_params, device=run.device or None,
            provenance=run.provenance or {}, losses=list(run.losses or []), adapter_path=run.adapter_path or None,
            created_at=when,
        ))
        s.flush()
        return rid

    def record_run(self, run: RunResult) -> str:
        """Record one run in ONE transaction (model + dataset upsert, run row, its signals as a
        signal set). A retry of an already recorded (configuration, seed) returns the existing
        id without writing. ``on_run_recorded`` hooks run after the commit."""
        rec = validate_run(run)
        clean = rec.run
        md, dd = model_desc_of(clean), dataset_desc_of(clean)
        cfg = config_hash(clean, md, dd)

        def tx(s: Session) -> tuple[str, bool]:
            existing = s.scalar(select(Run.run_id).where(Run.config_hash == cfg, Run.seed == clean.seed))
            if existing is not None:
                return existing, False
            return self._insert_run(s, clean, md, dd, cfg, None, rec.signal_seconds, "run"), True

        run_id, inserted = self._write(tx)
        if inserted:
            _call_run_hooks(run, run_id, self.url)
        return run_id

    def add_records(self, records: Sequence[hio.ImportRecord]) -> int:
        """Insert validated import rows, all or nothing; a run already present is an error."""

        def tx(s: Session) -> int:
            for rec in records:
                run = rec.run
                md, dd = model_desc_of(run), dataset_desc_of(run)
                cfg = config_hash(run, md, dd)
                rid = run.run_id or default_run_id(run, cfg)
                if s.scalar(select(Run.id).where(Run.run_id == rid)) is not None:
                    raise HistoryError(f"{rec.label}: run_id {rid!r} is already in the database")
                existing = s.scalar(select(Run.run_id).where(Run.config_hash == cfg, Run.seed == run.seed))
                if existing is not None:
                    raise HistoryError(
                        f"{rec.label}: a run with the same model, dataset, method, shots, hparams, split and "
                        f"seed is already in the database (run {existing!r})"
                    )
                self._insert_run(s, run, md, dd, cfg, rec.recorded_at, rec.signal_seconds, rec.label)
            return len(records)

        return self._write(tx)

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
            q = q.where(Model.name == model)
        if dataset:
            q = q.where(Dataset.name == dataset)
        if method:
            q = q.where(Run.method == method)
        return q

    def runs(self, model: str | None = None, dataset: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Runs as flat rows (the export columns; see docs/history.md), oldest first."""
        with self._read() as s:
            return [_flat_row(r) for r in s.scalars(self._run_query(model, dataset, method))]

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
        with self._read() as s:
            run = s.scalar(self._run_query(None, None, None).where(Run.run_id == run_id))
            if run is None:
                matches = list(s.scalars(self._run_query(None, None, None).where(Run.run_id.startswith(run_id, autoescape=True)).limit(2)))
                if len(matches) > 1:
                    raise HistoryError(f"run id prefix {run_id!r} is ambiguous in {self.display}")
                if not matches:
                    raise HistoryError(f"no run with id {run_id!r} in {self.display}")
                run = matches[0]
            return _flat_row(run)

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
                merged = {**latest.get((r.model_id, r.dataset_id), {}), **own}
                row = _run_fields(r)
                row.update(
                    run_id=r.run_id,
                    recorded_at=r.created_at,
                    signals={k: v[0] for k, v in sorted(merged.items())},
                    signal_versions={k: v[1] for k, v in sorted(merged.items()) if v[1] is not None},
                    model_desc=_model_desc(r.model),
                    dataset_desc=_dataset_desc(r.dataset),
                )
                out.append(row)
            return out

    # -- predictors ------------------------------------------------------------------------

    def save_predictor(self, name: str, blob: str, features: list[str], training_hash: str, scores: dict[str, Any]) -> int:
        """Store a trained predictor (older ones under the same name are kept as history)."""

        def tx(s: Session) -> int:
            p = Predictor(name=name, blob=blob, features=list(features), training_hash=training_hash,
                          scores=_jsonable(scores), created_at=_now())
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


# ------------------------------------------------------------------------------- helpers


def _json_dumps(obj: Any) -> str:
    import json

    return json.dumps(_jsonable(obj), sort_keys=True, ensure_ascii=False)


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples and paths -> plain JSON types (recursively)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy scalar
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    tolist = getattr(obj, "tolist", None)  # numpy array
    if callable(tolist):
        return _jsonable(tolist())
    return str(obj)


def flatten_run(run: RunResult) -> dict[str, Any]:
    """A RunResult as one flat row (the import/export columns)."""
    row: dict[str, Any] = {}
    for col in hio.COLUMNS:
        name = col.name
        if "." in name or name in ("recorded_at", "signal_versions", "signal_seconds"):
            continue
        row[name] = getattr(run, name)
    md = {k: v for k, v in (run.model_desc or {}).items() if k not in ("name", "pretrained")}
    dd = {k: v for k, v in (run.dataset_desc or {}).items() if k != "name"}
    for f in MODEL_FIELDS:
        row[f"model.{f}"] = md.pop(f, None)
    row["model.extra"] = md
    for f in DATASET_FIELDS:
        row[f"dataset.{f}"] = dd.pop(f, None)
    row["dataset.extra"] = dd
    # Versions of metrics that produced no value (a failed metric) are not an error here.
    row["signal_versions"] = {k: v for k, v in (run.signal_versions or {}).items() if k in (run.signals or {})}
    for k, v in (run.signals or {}).items():
        row[f"signal.{k}"] = v
    row = _jsonable(row)
    for name, col in hio.BY_NAME.items():  # 224.0 from a computation is the integer 224
        if col.kind == "int" and isinstance(row.get(name), float) and row[name].is_integer():
            row[name] = int(row[name])
    return row


def validate_run(run: RunResult) -> hio.ImportRecord:
    """Validate a RunResult with the same rules as an imported row; HistoryError names the field."""
    row = flatten_run(run)
    bad = [k for k in row if hio.column_for(k) is None]
    if bad:
        raise HistoryError(f"cannot record run: bad signal name {bad[0][len('signal.'):]!r}")
    try:
        import json

        json.dumps(row, allow_nan=False)
    except ValueError:
        raise HistoryError("cannot record run: hparams, provenance or descriptors contain NaN or infinity") from None
    # Programmatic fields may be empty strings where files have empty cells.
    for k in ("run_id", "pretrained", "split_hash", "device", "adapter_path"):
        if row.get(k) == "":
            row[k] = None
    try:
        return hio.parse_row(row, False, "run")
    except InputFileError as exc:
        raise HistoryError(f"cannot record {exc}") from None


def _run_fields(r: Run) -> dict[str, Any]:
    """The RunResult fields of a stored run (without signals/descriptors)."""
    out = {}
    for f in dc_fields(RunResult):
        if f.name in ("signals", "signal_versions", "model_desc", "dataset_desc"):
            continue
        if f.name == "model":
            out["model"] = r.model.name
        elif f.name == "pretrained":
            out["pretrained"] = r.model.pretrained
        elif f.name == "dataset":
            out["dataset"] = r.dataset.name
        else:
            out[f.name] = getattr(r, f.name)
    return out


def _model_desc(m: Model) -> dict[str, Any]:
    d = {"name": m.name, "pretrained": m.pretrained}
    d.update({f: getattr(m, f) for f in MODEL_FIELDS})
    d.update(m.extra or {})
    return d


def _dataset_desc(d: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name}
    out.update({f: getattr(d, f) for f in DATASET_FIELDS})
    out.update(d.extra or {})
    return out


def _flat_row(r: Run) -> dict[str, Any]:
    row = _run_fields(r)
    flat: dict[str, Any] = {}
    for col in hio.COLUMNS:
        name = col.name
        if name == "recorded_at":
            flat[name] = r.created_at
        elif name.startswith("model."):
            f = name[len("model."):]
            flat[name] = (r.model.extra or {}) if f == "extra" else getattr(r.model, f)
        elif name.startswith("dataset."):
            f = name[len("dataset."):]
            flat[name] = (r.dataset.extra or {}) if f == "extra" else getattr(r.dataset, f)
        elif name == "signal_versions":
            vals = r.signal_set.values if r.signal_set else []
            flat[name] = {v.name: v.version for v in vals if v.version is not None}
        elif name == "signal_seconds":
            vals = r.signal_set.values if r.signal_set else []
            flat[name] = {v.name: v.seconds for v in vals if v.seconds is not None}
        else:
            flat[name] = row[name]
    for v in (r.signal_set.values if r.signal_set else []):
        flat[f"signal.{v.name}"] = v.value
    return flat


def _call_run_hooks(run: RunResult, run_id: str, url: str) -> None:
    """``on_run_recorded`` after the commit: a failing hook is reported, the run stays."""
    from ..plugins import load_plugins

    pm = load_plugins()
    for impl in reversed(pm.hook.on_run_recorded.get_hookimpls()):
        try:
            impl.function(run=run, run_id=run_id, db_url=url)
        except Exception as exc:  # noqa: BLE001
            print(f"Warning: plugin {impl.plugin_name!r} on_run_recorded failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


# ------------------------------------------------------------------------------- shipped registry


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
    ``source`` (everything: runs, signal sets, predictors), or an empty migrated history when
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
        History(_sqlite_url(p)).close()
    else:
        with open_history(source) as src:  # migrates the source to the current schema
            if src.path is None:
                raise HistoryError(f"registry source {src.display} must be a SQLite file")
            src_path = src.path
        with sqlite3.connect(str(src_path)) as src_con, sqlite3.connect(str(p)) as dst_con:
            src_con.backup(dst_con)
        src_con.close()
        dst_con.close()
    compact(p)
    with History(_sqlite_url(p)) as h:
        n = h.count()
    compact(p)
    return n


__all__ = [
    "History", "open_history", "record_run", "resolve_url", "model_key", "dataset_key", "default_path",
    "ensure_default_db", "location", "create_registry", "compact", "SCHEMA_VERSION", "flatten_run", "validate_run",
]
