"""Issue 27, MLflow items: MLflow's own environment variables and run context, the line that
says where a run went, the derived metrics, MLflow's log lines, and tracking URIs that are not
MLflow stores. Against real SQLite-backed MLflow stores in temporary directories."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import file_sha, make_run, run_advisor

mlflow = pytest.importorskip("mlflow", reason="pip install 'advisor[mlflow]'")
from mlflow.tracking import MlflowClient

from advisor.history import open_history

MLFLOW_VARS = ("ADVISOR_MLFLOW_EXPERIMENT", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
               "MLFLOW_RUN_CONTEXT")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real MLflow SQLite store per module (creating its tables takes seconds)."""
    uri = "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture
def logging_on(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)
    for var in MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("ADVISOR_MLFLOW", "1")
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment(client: MlflowClient, name: str, tmp_path: Path) -> str:
    return client.create_experiment(name, artifact_location=(tmp_path / f"art-{name}").as_uri())


def _runs(client: MlflowClient, name: str) -> list[Any]:
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else list(client.search_runs([exp.experiment_id]))


# ------------------------------------------------------------------------------- out


@pytest.mark.slow
def test_advisor_run_inside_a_parent_run_is_its_child_in_MLFLOW_EXPERIMENT_NAME_with_mlflows_tags(
        logging_on: MlflowClient, tracking_uri: str, tmp_path: Path) -> None:
    exp_id = _experiment(logging_on, "team-e2e", tmp_path)
    parent = logging_on.create_run(exp_id, run_name="hyper-search").info.run_id
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": "team-e2e", "MLFLOW_RUN_ID": parent,
           "MLFLOW_RUN_CONTEXT": json.dumps({"team.owner": "vision"}), "ADVISOR_HOME": str(tmp_path / "home"),
           "ADVISOR_MLFLOW": ""}
    db = tmp_path / "h.db"
    out = run_advisor("run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop", "--shots", "2",
                      "--epochs", "1", "--max-images", "40", "--ood", "faces", "--db", str(db), "--mlflow", "--json",
                      env=env, cwd=tmp_path, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    (child,) = [r for r in _runs(logging_on, "team-e2e") if r.info.run_id != parent]
    tags, metrics = child.data.tags, child.data.metrics
    assert tags["mlflow.parentRunId"] == parent
    assert tags["team.owner"] == "vision"
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and "mlflow.source.name" in tags
    with open_history(str(db)) as h:
        (row,) = h.runs()
    assert child.info.run_name == row["run_id"]
    assert metrics["id_gain"] == pytest.approx(row["id_acc_after"] - row["id_acc_before"])
    assert metrics["ood_change"] == pytest.approx(row["ood_after"]["faces"] - row["ood_before"]["faces"])
    said = [line for line in out.stderr.splitlines() if line.startswith("Logged run")]
    assert said == [f"Logged run {row['run_id']} to MLflow experiment 'team-e2e' at {tracking_uri} "
                    f"(run id {child.info.run_id}, child of {parent})"]
    assert " INFO " not in out.stderr


def test_experiment_is_ADVISOR_MLFLOW_EXPERIMENT_then_MLflows_variables_then_advisor(logging_on: MlflowClient, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    by_id = _experiment(logging_on, "by-id", tmp_path)
    cases = [
        ({"MLFLOW_EXPERIMENT_NAME": "mlflow-name"}, "mlflow-name"),
        ({"MLFLOW_EXPERIMENT_NAME": "mlflow-name", "ADVISOR_MLFLOW_EXPERIMENT": "advisor-name"}, "advisor-name"),
        ({"MLFLOW_EXPERIMENT_ID": by_id}, "by-id"),
        ({"MLFLOW_EXPERIMENT_ID": by_id, "MLFLOW_EXPERIMENT_NAME": "mlflow-name"}, "mlflow-name"),
        ({}, "advisor"),
    ]
    for seed, (env, expected) in enumerate(cases):
        for var in MLFLOW_VARS:
            monkeypatch.delenv(var, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with open_history(str(tmp_path / "h.db")) as h:
            run_id = h.record_run(make_run(seed=seed))
        assert run_id in [r.info.run_name for r in _runs(logging_on, expected)], (env, expected)


def test_id_gain_and_ood_change_are_logged_and_import_reads_the_row_back(logging_on: MlflowClient, tmp_path: Path,
                                                                          tracking_uri: str, cli: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVISOR_MLFLOW_EXPERIMENT", "derived")
    source = tmp_path / "source.db"
    run = make_run(ood_before={"faces": 0.5, "mnist-5k": 0.25}, ood_after={"faces": 0.25, "mnist-5k": 0.5})
    with open_history(str(source)) as h:
        h.record_run(run)
    (ml,) = _runs(logging_on, "derived")
    assert ml.data.metrics["id_gain"] == 0.5 and ml.data.metrics["ood_change"] == 0.0
    res = cli("history", "import-mlflow", "--experiment", "derived", "--tracking-uri", tracking_uri,
              "--db", str(tmp_path / "target.db"), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["added"] == 1 and info["new"][0]["unmapped"] == []  # derived, not another team's key
    with open_history(str(source)) as a, open_history(str(tmp_path / "target.db")) as b:
        assert b.runs() == a.runs()


def test_mlflow_info_lines_stay_off_stderr_and_one_line_says_where_the_run_went(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    for var in MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)
    uri = "sqlite:///" + str(tmp_path / "fresh.db")  # MLflow creates its tables now, and says so at INFO
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ADVISOR_MLFLOW", "1")
    with open_history(str(tmp_path / "h.db")) as h:
        run_id = h.record_run(make_run())
    (ml,) = _runs(MlflowClient(tracking_uri=uri), "advisor")
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [f"Logged run {run_id} to MLflow experiment 'advisor' at {uri} (run id {ml.info.run_id})"]


def test_a_parent_run_that_does_not_exist_is_one_warning_and_the_exit_status_stays(tmp_path: Path,
                                                                                   tracking_uri: str) -> None:
    mlflow_env = {"MLFLOW_TRACKING_URI": tracking_uri, "ADVISOR_MLFLOW": "1", "MLFLOW_RUN_ID": "0" * 32}
    code = ("import json, os, sys; sys.path.insert(0, {tests!r}); from conftest import make_run; import advisor; "
            "os.environ.update(json.loads(sys.argv[1])); "  # after conftest, which clears MLflow's variables
            "print(advisor.record_run(make_run(), {db!r}))").format(tests=str(Path(__file__).parent),
                                                                      db=str(tmp_path / "h.db"))
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_VARS}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(mlflow_env)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Warning: run {run_id} is in the history but was not logged to MLflow")
    assert f"parent run {'0' * 32}" in lines[0]
    with open_history(str(tmp_path / "h.db")) as h:
        assert h.count() == 1


# ------------------------------------------------------------------------------- in: bad stores


def _advisor_history(tmp_path: Path) -> Path:
    db = tmp_path / "history.db"
    with open_history(str(db)) as h:
        h.record_run(make_run())
    return db


@pytest.mark.parametrize("kind, message", [
    ("missing file store", "no MLflow store at"),
    ("missing path", "no MLflow store at"),
    ("empty folder", "is not an MLflow file store"),
    ("unknown scheme", "unsupported MLflow tracking URI scheme 'bogus'"),
    ("missing sqlite", "no MLflow tracking database at"),
    ("not sqlite", "is not an MLflow tracking store"),
    ("other sqlite", "is not an MLflow tracking store (no experiments or alembic_version table)"),
    ("advisor history", "is an advisor history, not an MLflow tracking store"),
    ("older mlflow store", "is an MLflow store of another MLflow version (no latest_metrics table)"),
])
def test_a_tracking_uri_that_is_not_an_mlflow_store_is_one_line_and_changes_nothing(
        cli: Any, tmp_path: Path, tracking_uri: str, kind: str, message: str) -> None:
    target = tmp_path / "target.db"
    uris = {
        "missing file store": (tmp_path / "mlruns").as_uri(),
        "missing path": str(tmp_path / "mlruns"),
        "empty folder": str(tmp_path),
        "unknown scheme": "bogus://host/x",
        "missing sqlite": "sqlite:///" + str(tmp_path / "nothing.db"),
    }
    store: Path | None = None
    if kind == "not sqlite":
        store = tmp_path / "notes.db"
        store.write_text("not a database\n")
    elif kind == "other sqlite":
        store = tmp_path / "other.db"
        con = sqlite3.connect(store)
        con.execute("CREATE TABLE things (a)")
        con.commit()
        con.close()
    elif kind == "advisor history":
        store = _advisor_history(tmp_path)
    elif kind == "older mlflow store":  # MLflow would create the missing table (a write) on opening it
        store = tmp_path / "old-mlflow.db"
        shutil.copyfile(tracking_uri[len("sqlite:///"):], store)
        con = sqlite3.connect(store)
        con.execute("DROP TABLE latest_metrics")
        con.commit()
        con.close()
    if store is not None:
        uris[kind] = "sqlite:///" + str(store)
    before = file_sha(store) if store is not None else None
    res = cli("history", "import-mlflow", "--experiment", "advisor", "--tracking-uri", uris[kind],
              "--db", str(target))
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("Error:"), res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    if store is not None:
        assert file_sha(store) == before  # only read; MLflow created no table in it
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "nothing.db").exists()
    assert not target.exists()
