"""Named schema migrations, applied in order when a history database is opened (llm-style).

Each migration is a function ``mNNN_description(conn)`` appended to ``MIGRATIONS``; its name is
recorded in ``schema_migrations`` together with its position (the schema version), so running
``migrate`` twice is a no-op. Migrations describe the tables *as they were at that version*
(frozen SQLAlchemy Core, never the ORM classes, which only describe the latest state), so an
old database upgrades step by step. To change the schema: edit ``schema.py``, append a new
migration and raise ``version.SCHEMA_VERSION``; ``tests/test_history_schema.py`` fails until
the schema and the migrations agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
)

from ..errors import HistoryError
from .version import SCHEMA_VERSION

Migration = Callable[[Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def _migrations_table(metadata: MetaData) -> Table:
    return Table(
        "schema_migrations",
        metadata,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("name", Text, nullable=False, unique=True),
        Column("applied_at", Text, nullable=False),
    )


@migration
def m001_initial(conn: Connection) -> None:
    """models, datasets, signal_sets + signal_values, runs, predictors."""
    md = MetaData()
    Table(
        "models",
        md,
        Column("id", Integer, primary_key=True),
        Column("key", Text, nullable=False, unique=True),
        Column("name", Text, nullable=False),
        Column("pretrained", Text),
        Column("image_size", Integer),
        Column("family", Text),
        Column("architecture", Text),
        Column("params", BigInteger),
        Column("embed_dim", Integer),
        Column("source", Text),
        Column("extra", JSON, nullable=False),
        Column("created_at", Text, nullable=False),
    )
    Table(
        "datasets",
        md,
        Column("id", Integer, primary_key=True),
        Column("key", Text, nullable=False, unique=True),
        Column("name", Text, nullable=False),
        Column("fingerprint", Text),
        Column("n_classes", Integer),
        Column("n_train", Integer),
        Column("n_test", Integer),
        Column("domain", JSON),
        Column("mean_side_px", Float),
        Column("is_grayscale", Boolean),
        Column("extra", JSON, nullable=False),
        Column("created_at", Text, nullable=False),
    )
    Table(
        "signal_sets",
        md,
        Column("id", Integer, primary_key=True),
        Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
        Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False, index=True),
        Column("split_hash", Text),
        Column("content_hash", Text, nullable=False),
        Column("created_at", Text, nullable=False),
    )
    Table(
        "signal_values",
        md,
        Column("id", Integer, primary_key=True),
        Column("signal_set_id", Integer, ForeignKey("signal_sets.id", ondelete="CASCADE"), nullable=False),
        Column("name", Text, nullable=False),
        Column("value", Float, nullable=False),
        Column("version", Text),
        Column("seconds", Float),
        UniqueConstraint("signal_set_id", "name", name="uq_signal_values_set_name"),
    )
    Table(
        "runs",
        md,
        Column("id", Integer, primary_key=True),
        Column("run_id", Text, nullable=False, unique=True),
        Column("config_hash", Text, nullable=False),
        Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
        Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False, index=True),
        Column("signal_set_id", Integer, ForeignKey("signal_sets.id")),
        Column("method", Text, nullable=False),
        Column("shots", Integer),
        Column("seed", Integer, nullable=False),
        Column("hparams", JSON, nullable=False),
        Column("split_hash", Text),
        Column("id_acc_before", Float, nullable=False),
        Column("id_acc_after", Float, nullable=False),
        Column("ood_before", JSON, nullable=False),
        Column("ood_after", JSON, nullable=False),
        Column("gap_before", Float),
        Column("gap_after", Float),
        Column("wall_time_s", Float),
        Column("train_images_per_s", Float),
        Column("peak_memory_mb", Float),
        Column("trainable_params", BigInteger),
        Column("device", Text),
        Column("provenance", JSON, nullable=False),
        Column("losses", JSON, nullable=False),
        Column("adapter_path", Text),
        Column("created_at", Text, nullable=False),
        UniqueConstraint("config_hash", "seed", name="uq_runs_config_seed"),
    )
    Table(
        "predictors",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", Text, nullable=False, index=True),
        Column("blob", Text, nullable=False),
        Column("features", JSON, nullable=False),
        Column("training_hash", Text, nullable=False),
        Column("scores", JSON, nullable=False),
        Column("created_at", Text, nullable=False),
    )
    md.create_all(conn)


@migration
def m002_run_indexes(conn: Connection) -> None:
    """Indexes for ``history list --method`` and newest-last ordering."""
    md = MetaData()
    runs = Table("runs", md, autoload_with=conn)
    Index("ix_runs_method", runs.c.method).create(conn)
    Index("ix_runs_created", runs.c.created_at, runs.c.id).create(conn)


@migration
def m003_sweeps(conn: Connection) -> None:
    """sweeps + sweep_jobs: resumable, observable ``advisor sweep`` grids."""
    md = MetaData()
    Table(
        "sweeps",
        md,
        Column("id", Integer, primary_key=True),
        Column("sweep_id", Text, nullable=False, unique=True),
        Column("name", Text),
        Column("spec", JSON, nullable=False),
        Column("executor", Text),
        Column("n_jobs", Integer, nullable=False),
        Column("created_at", Text, nullable=False),
        Column("updated_at", Text, nullable=False),
    )
    jobs = Table(
        "sweep_jobs",
        md,
        Column("id", Integer, primary_key=True),
        Column("sweep_id", Text, nullable=False),
        Column("job_key", Text, nullable=False),
        Column("position", Integer, nullable=False),
        Column("stage", Integer, nullable=False),
        Column("pair", Text, nullable=False),
        Column("config", JSON, nullable=False),
        Column("status", Text, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("worker", Text),
        Column("heartbeat_at", Float),
        Column("started_at", Float),
        Column("finished_at", Float),
        Column("run_id", Text),
        Column("log_path", Text),
        Column("error", Text),
        UniqueConstraint("sweep_id", "job_key", name="uq_sweep_jobs_key"),
    )
    Index("ix_sweep_jobs_status", jobs.c.sweep_id, jobs.c.status)
    md.create_all(conn)


@migration
def m004_run_curves(conn: Connection) -> None:
    """runs.curve: the learning curve of a run (``advisor.curves``); NULL for runs recorded
    before curves were (their per-epoch losses stay in ``losses``)."""
    from sqlalchemy import text

    if "curve" not in {c["name"] for c in inspect(conn).get_columns("runs")}:
        conn.execute(text("ALTER TABLE runs ADD COLUMN curve JSON"))


@migration
def m005_scale(conn: Connection) -> None:
    """Reads that do not grow with the history (issue 25): indexes for a filtered, newest-last
    page of runs (``history list --method X --limit N``), for the runs of one (model, dataset,
    method, shots) group (similar runs), for the signal sets of a pair; and ``predictors.summary``,
    what a recommendation needs from the whole history, computed once at training."""
    from sqlalchemy import text

    md = MetaData()
    runs = Table("runs", md, autoload_with=conn)
    sets = Table("signal_sets", md, autoload_with=conn)
    have = {i["name"] for t in ("runs", "signal_sets") for i in inspect(conn).get_indexes(t)}
    for index in (Index("ix_runs_method_created", runs.c.method, runs.c.created_at, runs.c.id),
                  Index("ix_runs_group", runs.c.model_id, runs.c.dataset_id, runs.c.method, runs.c.shots,
                        runs.c.created_at, runs.c.id),
                  Index("ix_signal_sets_pair", sets.c.model_id, sets.c.dataset_id, sets.c.created_at, sets.c.id)):
        if index.name not in have:  # idempotent: a half-recorded upgrade runs again
            index.create(conn)
    if "summary" not in {c["name"] for c in inspect(conn).get_columns("predictors")}:
        conn.execute(text("ALTER TABLE predictors ADD COLUMN summary JSON"))


if len(MIGRATIONS) != SCHEMA_VERSION:  # a migration was appended: raise version.SCHEMA_VERSION with it
    raise ImportError(f"advisor.history.version.SCHEMA_VERSION is {SCHEMA_VERSION} but there are "
                      f"{len(MIGRATIONS)} migrations")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def applied_migrations(conn: Connection, display: str = "") -> dict[str, int] | None:
    """name -> version of applied migrations; None when the table does not exist yet."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "schema_migrations" not in tables:
        if tables:
            shown = ", ".join(sorted(tables)[:5])
            raise HistoryError(
                f"database {display} is not an advisor history (it already has other tables: {shown})"
            )
        return None
    table = _migrations_table(MetaData())
    return {name: version for version, name in conn.execute(select(table.c.version, table.c.name))}


def check_version(applied: dict[str, int] | None, display: str = "") -> None:
    found = max(applied.values(), default=0) if applied else 0
    if found > SCHEMA_VERSION:
        raise HistoryError(
            f"database schema version {found} is newer than this advisor supports "
            f"({SCHEMA_VERSION}); upgrade advisor ({display})"
        )


def pending(applied: dict[str, int] | None) -> list[tuple[int, Migration]]:
    done = applied or {}
    return [(i, fn) for i, fn in enumerate(MIGRATIONS, start=1) if fn.__name__ not in done]


def migrate(conn: Connection, display: str = "") -> list[str]:
    """Apply pending migrations inside the caller's (write) transaction; return their names.

    The caller holds the write lock (``BEGIN IMMEDIATE`` on SQLite), so two processes opening
    a fresh database at once migrate it exactly once.
    """
    applied = applied_migrations(conn, display)
    check_version(applied, display)
    table = _migrations_table(MetaData())
    if applied is None:
        table.create(conn)
    names = []
    for version, fn in pending(applied):
        fn(conn)
        conn.execute(table.insert().values(version=version, name=fn.__name__, applied_at=_now()))
        names.append(fn.__name__)
    return names


def schema_version(engine: Engine) -> int:
    """The version recorded in an existing database (0 for an empty one)."""
    with engine.connect() as conn:
        applied = applied_migrations(conn)
    return max(applied.values(), default=0) if applied else 0
