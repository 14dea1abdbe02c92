"""Migrations: named, recorded, idempotent, equal to the ORM models; newer schemas refused."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, inspect

from advisor.errors import HistoryError
from advisor.history import MIGRATIONS, SCHEMA_VERSION, open_history
from advisor.history.schema import Base


def test_migrations_are_named_and_recorded(tmp_db):
    open_history(str(tmp_db)).close()
    con = sqlite3.connect(tmp_db)
    rows = con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    con.close()
    assert rows == [(i, fn.__name__) for i, fn in enumerate(MIGRATIONS, start=1)]
    assert rows[0][1] == "m001_initial"
    assert SCHEMA_VERSION == len(MIGRATIONS)


def test_opening_twice_applies_nothing_new(tmp_db):
    open_history(str(tmp_db)).close()
    con = sqlite3.connect(tmp_db)
    first = con.execute("SELECT * FROM schema_migrations").fetchall()
    con.close()
    with open_history(str(tmp_db)) as h:
        assert h.schema_version == SCHEMA_VERSION
    con = sqlite3.connect(tmp_db)
    assert con.execute("SELECT * FROM schema_migrations").fetchall() == first
    con.close()


def test_migrated_database_matches_the_orm_models(tmp_db):
    """The frozen migrations and schema.py must describe the same tables."""
    open_history(str(tmp_db)).close()
    engine = create_engine(f"sqlite:///{tmp_db}")
    insp = inspect(engine)
    assert set(insp.get_table_names()) == set(Base.metadata.tables)
    for name, table in Base.metadata.tables.items():
        db_cols = {c["name"]: (str(c["type"]), c["nullable"]) for c in insp.get_columns(name)}
        orm_cols = {c.name: (str(c.type.compile(engine.dialect)), c.nullable) for c in table.columns}
        assert db_cols == orm_cols, name
        db_idx = {(i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(name)}
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


def test_sqlite_settings(history, tmp_db):
    with history.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == int(history.timeout * 1000)


def test_newer_schema_is_refused_without_writing(tmp_db):
    open_history(str(tmp_db)).close()
    con = sqlite3.connect(tmp_db)
    con.execute("INSERT INTO schema_migrations VALUES (99, 'm099_from_the_future', '2030-01-01T00:00:00+00:00')")
    con.commit()
    con.close()
    before = tmp_db.read_bytes()
    with pytest.raises(HistoryError) as err:
        open_history(str(tmp_db))
    assert str(err.value) == (
        f"database schema version 99 is newer than this advisor supports ({SCHEMA_VERSION}); "
        f"upgrade advisor ({tmp_db})"
    )
    assert tmp_db.read_bytes() == before


def test_foreign_database_is_not_taken_over(tmp_db):
    con = sqlite3.connect(tmp_db)
    con.execute("CREATE TABLE logs (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(HistoryError, match="is not an advisor history .*tables: logs"):
        open_history(str(tmp_db))
    con = sqlite3.connect(tmp_db)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["logs"]
    con.close()


def test_partially_migrated_database_is_completed(tmp_db):
    """An old database (only m001 applied) is upgraded step by step on open."""
    from sqlalchemy import MetaData, Table, Column, Integer, Text

    engine = create_engine(f"sqlite:///{tmp_db}")
    with engine.begin() as conn:
        MIGRATIONS[0](conn)
        md = MetaData()
        t = Table("schema_migrations", md, Column("version", Integer, primary_key=True),
                  Column("name", Text, nullable=False, unique=True), Column("applied_at", Text, nullable=False))
        t.create(conn)
        conn.execute(t.insert().values(version=1, name="m001_initial", applied_at="2024-01-01T00:00:00+00:00"))
    engine.dispose()
    with open_history(str(tmp_db)) as h:
        assert h.schema_version == SCHEMA_VERSION
    engine = create_engine(f"sqlite:///{tmp_db}")
    assert "ix_runs_method" in {i["name"] for i in inspect(engine).get_indexes("runs")}
    engine.dispose()
