"""Migrations: named, recorded, idempotent, equal to the ORM models; newer schemas refused. On a
real SQLite file and a real PostgreSQL database (``history_url``)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import BigInteger, Boolean, Float, Integer, Text, create_engine, inspect, text
from sqlalchemy import JSON as JSONType

from advisor.errors import HistoryError
from advisor.history import MIGRATIONS, SCHEMA_VERSION, location, open_history
from advisor.history.schema import Base


def _rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql))
    finally:
        engine.dispose()


def _kind(sql_type: object) -> str:
    """A column type as a backend-neutral kind (PostgreSQL reflects FLOAT as DOUBLE PRECISION)."""
    for cls, name in ((BigInteger, "bigint"), (Integer, "integer"), (Float, "float"), (Boolean, "boolean"),
                      (JSONType, "json"), (Text, "text")):
        if isinstance(sql_type, cls):
            return name
    return type(sql_type).__name__


def test_migrations_are_named_and_recorded(history_url):
    open_history(history_url).close()
    rows = _rows(history_url, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [(i, fn.__name__) for i, fn in enumerate(MIGRATIONS, start=1)]
    assert rows[0][1] == "m001_initial"
    assert SCHEMA_VERSION == len(MIGRATIONS)


def test_opening_twice_applies_nothing_new(history_url):
    open_history(history_url).close()
    first = _rows(history_url, "SELECT * FROM schema_migrations ORDER BY version")
    with open_history(history_url) as h:
        assert h.schema_version == SCHEMA_VERSION
    assert _rows(history_url, "SELECT * FROM schema_migrations ORDER BY version") == first


def test_migrated_database_matches_the_orm_models(history_url):
    """The frozen migrations and schema.py must describe the same tables, on every backend."""
    open_history(history_url).close()
    engine = create_engine(history_url)
    insp = inspect(engine)
    assert set(insp.get_table_names()) == set(Base.metadata.tables)
    for name, table in Base.metadata.tables.items():
        db_cols = {c["name"]: (_kind(c["type"]), c["nullable"]) for c in insp.get_columns(name)}
        orm_cols = {c.name: (_kind(c.type), c.nullable) for c in table.columns}
        assert db_cols == orm_cols, name
        # PostgreSQL lists the indexes behind unique constraints too; those are compared below.
        db_idx = {(i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(name)
                  if "duplicates_constraint" not in i}
        orm_idx = {(i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes}
        assert db_idx == orm_idx, name
        db_uniq = {tuple(sorted(u["column_names"])) for u in insp.get_unique_constraints(name)}
        orm_uniq = {tuple(sorted(c.name for c in u.columns)) for u in table.constraints
                    if type(u).__name__ == "UniqueConstraint"}
        orm_uniq |= {(c.name,) for c in table.columns if c.unique}
        assert db_uniq == orm_uniq, name
        db_fks = {(tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(name)}
        orm_fks = {((f.parent.name,), f.column.table.name) for f in table.foreign_keys}
        assert db_fks == orm_fks, name
    engine.dispose()


def test_sqlite_settings(tmp_db):
    """WAL, foreign keys and the busy timeout on a file that has been written to."""
    with open_history(str(tmp_db)) as history:  # creating it is a write
        with history.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == int(history.timeout * 1000)


def test_journal_mode_is_set_by_writes_only(tmp_db, run_factory):
    """Issue 16: opening and reading a rollback-journal file (as shipped) leaves it in that mode;
    the first write switches it to WAL."""
    open_history(str(tmp_db)).close()
    with sqlite3.connect(tmp_db) as con:
        con.execute("PRAGMA journal_mode = DELETE")
    with open_history(str(tmp_db)) as h:
        assert h.count() == 0 and h.runs() == []
    con = sqlite3.connect(f"file:{tmp_db}?mode=ro", uri=True)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    with open_history(str(tmp_db)) as h:
        h.record_run(run_factory())
    con = sqlite3.connect(f"file:{tmp_db}?mode=ro", uri=True)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_newer_schema_is_refused_without_writing(history_url):
    open_history(history_url).close()
    _execute(history_url, "INSERT INTO schema_migrations VALUES (99, 'm099_from_the_future', '2030-01-01T00:00:00+00:00')")
    before = _rows(history_url, "SELECT * FROM schema_migrations ORDER BY version")
    with pytest.raises(HistoryError) as err:
        open_history(history_url)
    assert str(err.value) == (
        f"database schema version 99 is newer than this advisor supports ({SCHEMA_VERSION}); "
        f"upgrade advisor ({location(history_url)})"
    )
    assert _rows(history_url, "SELECT * FROM schema_migrations ORDER BY version") == before
    assert "runs" in inspect(create_engine(history_url)).get_table_names()


def test_newer_schema_file_is_byte_identical(tmp_db):
    open_history(str(tmp_db)).close()
    con = sqlite3.connect(tmp_db)
    con.execute("INSERT INTO schema_migrations VALUES (99, 'm099_from_the_future', '2030-01-01T00:00:00+00:00')")
    con.commit()
    con.close()
    before = tmp_db.read_bytes()
    with pytest.raises(HistoryError, match="newer than this advisor supports"):
        open_history(str(tmp_db))
    assert tmp_db.read_bytes() == before


def test_foreign_database_is_not_taken_over(history_url):
    _execute(history_url, "CREATE TABLE logs (id INTEGER)")
    with pytest.raises(HistoryError, match="is not an advisor history .*tables: logs"):
        open_history(history_url)
    assert inspect(create_engine(history_url)).get_table_names() == ["logs"]


def test_partially_migrated_database_is_completed(history_url):
    """An old database (only m001 applied) is upgraded step by step on open."""
    from sqlalchemy import Column, MetaData, Table

    engine = create_engine(history_url)
    with engine.begin() as conn:
        MIGRATIONS[0](conn)
        md = MetaData()
        t = Table("schema_migrations", md, Column("version", Integer, primary_key=True, autoincrement=False),
                  Column("name", Text, nullable=False, unique=True), Column("applied_at", Text, nullable=False))
        t.create(conn)
        conn.execute(t.insert().values(version=1, name="m001_initial", applied_at="2024-01-01T00:00:00+00:00"))
    engine.dispose()
    with open_history(history_url) as h:
        assert h.schema_version == SCHEMA_VERSION
    engine = create_engine(history_url)
    assert "ix_runs_method" in {i["name"] for i in inspect(engine).get_indexes("runs")}
    engine.dispose()
