"""A real, throwaway PostgreSQL server for the tests (not a mock): ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free loopback port, one fresh database per test, torn down at
the end of the session. Run as the ``postgres`` user when the tests run as root (the server
refuses root). Debian: ``apt-get install postgresql``; driver: ``psycopg[binary]``.

Not a test module: ``conftest.py`` uses it for the ``history_url`` fixture.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "advisor"  # the database superuser initdb creates (trust authentication, loopback only)
# Test speed only: a crashed test server loses nothing anyone needs.
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"


class Unavailable(Exception):
    """Why no server could be started (the reason a test is skipped with)."""


def _binary(name: str) -> str:
    for candidate in [shutil.which(name), f"/usr/local/bin/{name}", *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[::-1]]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise Unavailable(f"PostgreSQL server binary {name!r} not found (Debian: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; ``new_database()`` hands out an empty database per test."""

    def __init__(self) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg is not installed (pip install 'psycopg[binary]')") from None
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
                raise Unavailable("running as root and there is no 'postgres' user to run the server as")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Under /tmp itself, not pytest's root-only directory, so the postgres user can reach it.
        self.base = Path(tempfile.mkdtemp(prefix="advisor-pg-"))
        if self.as_user:
            shutil.chown(self.base, "postgres")
        self.data = self.base / "data"
        self.port = _free_port()
        self._names = itertools.count()
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"])
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60",
                   "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} {FAST}", "start"])
        self.running = True

    def _run(self, cmd: list[str]) -> None:
        try:
            done = subprocess.run(self.as_user + cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.stop()
            raise Unavailable(f"{Path(cmd[0]).name} failed: {exc}") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            self.stop()
            raise Unavailable(f"{Path(cmd[0]).name} failed: {last}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as c:
            c.execute(sql)

    def new_database(self) -> str:
        """An empty database of its own: its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')  # faster than WAL_LOG here
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if getattr(self, "running", False):
            subprocess.run(self.as_user + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)
