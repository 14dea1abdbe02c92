"""The same history on PostgreSQL (the team/cluster set-up): a throwaway server in a temporary
directory. Skipped when no PostgreSQL server binaries or no psycopg driver are installed."""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import make_run

from advisor.history import SCHEMA_VERSION, open_history

psycopg = pytest.importorskip("psycopg")


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def pg_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed")
    # Under /tmp itself (not pytest's private, root-only directory) so the server can reach it.
    base = Path(tempfile.mkdtemp(prefix="advisor-pg-"))
    # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root and there is no postgres user")
        shutil.chown(base, "postgres")
        as_user = ["su", "postgres", "-s", "/bin/sh", "-c"]
    data, port = base / "data", "54329"

    def run(cmd: str) -> subprocess.CompletedProcess[str]:
        full = as_user + [cmd] if as_user else ["/bin/sh", "-c", cmd]
        return subprocess.run(full, capture_output=True, text=True, timeout=60)

    # Unix socket only: the port just names the socket file inside our own directory.
    try:
        for cmd in (f"{initdb} -D {data} -A trust -U advisor",
                    f"{pg_ctl} -D {data} -o '-k {base} -p {port} -c listen_addresses=' -l {base}/log -w start"):
            done = run(cmd)
            if done.returncode != 0:
                pytest.skip(f"cannot start a throwaway PostgreSQL: {done.stderr.strip().splitlines()[-1:]}")
        yield f"postgresql+psycopg://advisor@/postgres?host={base}&port={port}"
    finally:
        run(f"{pg_ctl} -D {data} -m immediate stop")
        shutil.rmtree(base, ignore_errors=True)


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
