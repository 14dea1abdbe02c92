"""Shared test set-up: a private user directory and cache per test session, third-party plugins
blocked, Hugging Face offline; fixtures for temporary history databases and the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

# Before anything imports advisor, huggingface_hub or transformers.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="advisor-tests-"))
os.environ["ADVISOR_HOME"] = str(_SESSION_DIR / "home")
os.environ["ADVISOR_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["ADVISOR_BLOCK_PLUGINS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
for _var in ("ADVISOR_DB", "ADVISOR_LOAD_PLUGINS", "ADVISOR_TRACE_PLUGINS", "ADVISOR_REGISTRY", "ADVISOR_DB_TIMEOUT",
             "ADVISOR_MLFLOW", "ADVISOR_MLFLOW_EXPERIMENT", "MLFLOW_TRACKING_URI",  # no test logs to your MLflow
             "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_RUN_CONTEXT"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402
from click.testing import CliRunner, Result  # noqa: E402

from advisor.specs import RunResult  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture
def tmp_db(tmp_path: Path) -> Path:
    """Path of a history database file that does not exist yet (opening it creates it)."""
    return tmp_path / "history.db"


@pytest.fixture
def history(history_url: str) -> Any:
    """An open, migrated, empty history: a real SQLite file, then a real PostgreSQL database."""
    from advisor.history import open_history

    h = open_history(history_url)
    yield h
    h.close()


def file_sha(p: Path) -> str:
    """A file's SHA-256: that a command left a file byte-identical."""
    return hashlib.sha256(p.read_bytes()).hexdigest()


def make_run(**overrides: Any) -> RunResult:
    """A complete, plausible RunResult; keyword arguments replace fields."""
    fields: dict[str, Any] = dict(
        model="tiny-vit",
        pretrained=None,
        dataset="digits",
        method="lora",
        shots=4,
        seed=0,
        hparams={"lr": 0.001, "rank": 4},
        split_hash="abc123",
        id_acc_before=0.25,
        id_acc_after=0.75,
        ood_before={"mnist-5k": 0.5},
        ood_after={"mnist-5k": 0.375},
        gap_before=0.8125,
        gap_after=0.6875,
        wall_time_s=12.5,
        train_images_per_s=100.0,
        peak_memory_mb=512.0,
        trainable_params=1024,
        device="cpu",
        provenance={"advisor": "0.1.0", "torch": "2.14.1"},
        signals={"iimm": 0.3125, "modality_gap": 0.8125},
        signal_versions={"iimm": "1", "modality_gap": "2"},
        model_desc={"image_size": 64, "family": "vit", "architecture": "tiny-vit", "params": 123456, "embed_dim": 32},
        dataset_desc={"fingerprint": "fp-digits", "n_classes": 10, "n_train": 1437, "n_test": 360,
                      "domain": ["digits", "grayscale"], "mean_side_px": 8.0, "is_grayscale": True},
        losses=[2.25, 1.5, 0.75],
    )
    fields.update(overrides)
    return RunResult(**fields)


@pytest.fixture
def run_factory() -> Callable[..., RunResult]:
    return make_run


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke ``advisor ARGS...`` in-process; returns click's Result (stdout and stderr apart)."""
    from advisor.cli import cli as advisor_cli

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(advisor_cli, list(args), input=input, env=env, catch_exceptions=False,
                                  prog_name="advisor")

    return invoke


def run_advisor(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``advisor`` command line in a fresh Python process."""
    full_env = {**os.environ, **(env or {})}
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)


def popen_advisor(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, **(env or {})}
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env)


# --------------------------------------------------------------------------- SQLite and PostgreSQL

REQUIRE_POSTGRES = "ADVISOR_REQUIRE_POSTGRES"  # set by .ci/run: no PostgreSQL server is a failure, not a skip


@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """A real PostgreSQL server for the session (tests/pg.py); skipped, with the reason, when
    it cannot be started here, unless ADVISOR_REQUIRE_POSTGRES=1."""
    from pg import PostgresServer, Unavailable

    try:
        server = PostgresServer()
    except Unavailable as exc:
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"PostgreSQL required ({REQUIRE_POSTGRES}=1) but unavailable: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: Any, tmp_path: Path) -> Any:
    """The URL of an empty history database (not created yet), once per backend."""
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "history.db")
        return
    server = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


def count_rows(url: str, table: str) -> int:
    """Rows of ``table`` seen by an independent connection (0 when the table does not exist)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if table not in inspect(conn).get_table_names():
                return 0
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()
