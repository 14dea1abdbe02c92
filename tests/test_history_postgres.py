"""What only PostgreSQL has (the team/cluster set-up), on the real server of tests/pg.py: a SQLite
history moved to it byte for byte, a server that cannot be reached, a database that is
read-only. Everything else runs on both backends through ``history_url``."""

from __future__ import annotations

import io

import pytest
from conftest import count_rows, make_run, run_advisor

from advisor.errors import HistoryError
from advisor.history import SCHEMA_VERSION, open_history


@pytest.fixture
def pg_url(postgres_server):
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


def test_postgres_history_round_trips_with_sqlite(pg_url, tmp_path):
    sqlite_db = tmp_path / "local.db"
    with open_history(str(sqlite_db)) as local:
        local.record_run(make_run())
        local.record_run(make_run(method="coop", hparams={"ctx": 4}, signals={"iimm": 0.5}))
        local.record_run(make_run(dataset="textile", dataset_desc={"fingerprint": "t", "domain": ["texture"]}))
        local_csv = io.StringIO()
        local.export("csv", local_csv)
    path = tmp_path / "runs.csv"
    path.write_text(local_csv.getvalue(), encoding="utf-8")
    with open_history(pg_url) as team:
        assert team.schema_version == SCHEMA_VERSION
        assert team.import_file(path) == 3
        team_csv = io.StringIO()
        team.export("csv", team_csv)
        assert team_csv.getvalue() == local_csv.getvalue()  # byte-identical across back ends
        # A retried run (same configuration and seed) is not recorded twice on PostgreSQL either.
        before = team.count()
        assert team.record_run(make_run()) == team.runs()[0]["run_id"]
        assert team.count() == before
        assert team.latest_signals("tiny-vit||64", "digits|fp-digits") == {"iimm": 0.5, "modality_gap": 0.8125}
    with open_history(pg_url) as again:  # reopening applies no migration twice
        assert again.schema_version == SCHEMA_VERSION and again.count() == 3


def test_unreachable_server_is_one_line(postgres_server):
    """A URL to a closed port: one line on stderr, exit 1, within the connect timeout."""
    from pg import _free_port

    url = f"postgresql+psycopg://advisor@127.0.0.1:{_free_port()}/postgres"
    p = run_advisor("history", "list", "--db", url, env={"ADVISOR_DB_TIMEOUT": "2"}, timeout=60)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot use database {url}"), p.stderr


def test_read_only_database_is_read_and_refused_before_any_write(pg_url, postgres_server):
    """A database whose sessions are read-only (e.g. a hot standby or a read-only role): every
    query works, ``check_writable`` refuses it in one line, and so does a write."""
    with open_history(pg_url) as h:
        h.record_run(make_run())
    name = pg_url.rsplit("/", 1)[-1]
    postgres_server._admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with open_history(pg_url) as h:
        assert h.count() == 1 and h.runs()[0]["method"] == "lora"
        with pytest.raises(HistoryError, match="is read-only"):
            h.check_writable()
        with pytest.raises(HistoryError, match="is read-only"):
            h.record_run(make_run(seed=5))
    postgres_server._admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
    assert count_rows(pg_url, "runs") == 1


def test_timeout_becomes_lock_timeout_and_url_options_are_kept(pg_url):
    """ADVISOR_DB_TIMEOUT is PostgreSQL's lock_timeout (so a held lock ends in the one-line
    'locked' error, as on SQLite); options given in the URL stay in force."""
    with open_history(pg_url + "?options=-c%20statement_timeout%3D12345", timeout=3) as h:
        with h.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "3s"
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "12345ms"
