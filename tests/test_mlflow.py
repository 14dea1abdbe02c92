"""MLflow out (the opt-in on_run_recorded plugin) and in (history import-mlflow), against a real
SQLite-backed MLflow tracking store in a temporary directory."""

from __future__ import annotations

import json
import socket
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from conftest import make_run

mlflow = pytest.importorskip("mlflow", reason="pip install 'advisor[mlflow]'")
from mlflow.tracking import MlflowClient

from advisor.history import open_history
from advisor.history.mlflow_fields import member_text, member_value, to_mlflow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real MLflow SQLite store per module (creating its tables takes seconds)."""
    uri = "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture
def experiment(request: pytest.FixtureRequest, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh experiment (artifacts under tmp_path) that the plugin logs to."""
    name = f"exp-{request.node.name}"
    MlflowClient(tracking_uri=tracking_uri).create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("ADVISOR_MLFLOW", "1")
    monkeypatch.setenv("ADVISOR_MLFLOW_EXPERIMENT", name)
    return name


def _mlflow_runs(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]))


def _export(db: Path) -> str:
    out = StringIO()
    with open_history(str(db)) as h:
        h.export("csv", out)
    return out.getvalue()


def _import(cli: Any, uri: str, experiment: str, db: Path, *extra: str) -> Any:
    return cli("history", "import-mlflow", "--experiment", experiment, "--tracking-uri", uri, "--db", str(db), *extra)


# ------------------------------------------------------------------------------- out


def test_recorded_run_appears_in_mlflow_with_params_metrics_and_artifact(experiment: str, tracking_uri: str,
                                                                         tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"real adapter bytes \x00\x01")
    run = make_run(adapter_path=str(adapter))
    with open_history(str(tmp_path / "h.db")) as h:
        run_id = h.record_run(run)
        stored = h.get_run(run_id)
    assert capfd.readouterr().err.count("Warning") == 0

    (ml,) = _mlflow_runs(tracking_uri, experiment)
    assert ml.info.status == "FINISHED" and ml.info.run_name == run_id
    params, metrics, tags = ml.data.params, ml.data.metrics, ml.data.tags
    assert {k: params[k] for k in ("model", "dataset", "method", "shots", "seed", "split_hash", "device")} == {
        "model": "tiny-vit", "dataset": "digits", "method": "lora", "shots": "4", "seed": "0",
        "split_hash": "abc123", "device": "cpu"}
    assert params["hparams.lr"] == "0.001" and params["hparams.rank"] == "4"
    assert params["model.image_size"] == "64" and params["dataset.domain"] == '["digits","grayscale"]'
    assert metrics["id_acc_before"] == 0.25 and metrics["id_acc_after"] == 0.75
    assert metrics["ood_before.mnist-5k"] == 0.5 and metrics["ood_after.mnist-5k"] == 0.375
    assert metrics["gap_before"] == 0.8125 and metrics["gap_after"] == 0.6875
    assert metrics["wall_time_s"] == 12.5 and metrics["train_images_per_s"] == 100.0
    assert metrics["signal.iimm"] == 0.3125 and metrics["signal.modality_gap"] == 0.8125
    assert tags["advisor.run_id"] == run_id and tags["advisor.recorded_at"] == stored["recorded_at"]
    assert tags["provenance.torch"] == "2.14.1" and tags["signal_versions.iimm"] == '"1"'
    client = MlflowClient(tracking_uri=tracking_uri)
    assert [m.value for m in sorted(client.get_metric_history(ml.info.run_id, "loss"), key=lambda m: m.step)] == [
        2.25, 1.5, 0.75]
    (art,) = client.list_artifacts(ml.info.run_id, "adapter")
    assert art.path == "adapter/adapter.safetensors"
    got = Path(client.download_artifacts(ml.info.run_id, art.path, str(tmp_path / "dl")))
    assert got.read_bytes() == adapter.read_bytes()


def test_unreachable_mlflow_keeps_the_history_row_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capfd: pytest.CaptureFixture) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("ADVISOR_MLFLOW", "1")
    run = make_run()
    with open_history(str(tmp_path / "h.db")) as h:
        run_id = h.record_run(run)
        assert h.count() == 1
        assert h.get_run(run_id)["id_acc_after"] == 0.75
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Warning: run {run_id} is in the history but was not logged to MLflow")
    assert f"127.0.0.1:{port}" in lines[0]


def test_plugin_is_off_by_default_and_does_not_import_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, {tests!r}); from conftest import make_run; "
        "from advisor.history import open_history; h = open_history({db!r}); h.record_run(make_run()); "
        "from advisor.plugins import load_plugins; assert 'advisor_plugins.tracking.mlflow' in "
        "[n for n, _ in load_plugins().list_name_plugin()]; print('mlflow' in sys.modules)"
    ).format(tests=str(Path(__file__).parent), db=str(tmp_path / "h.db"))
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("ADVISOR_MLFLOW", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


# ------------------------------------------------------------------------------- in


def test_export_then_import_into_an_empty_history_round_trips_the_rows(experiment: str, tracking_uri: str,
                                                                       tmp_path: Path, cli: Any) -> None:
    adapter = tmp_path / "a.safetensors"
    adapter.write_bytes(b"x")
    runs = [
        make_run(adapter_path=str(adapter)),
        make_run(seed=1, pretrained="openai", shots=None, device=None, gap_before=None, gap_after=None,
                 hparams={"lr": 1e-3, "opt": "adam", "tag": "1", "on": True, "sched": {"kind": "cos", "warmup": 2},
                          "none": None, "empty": ""},
                 ood_before={"faces": 0.5, "mnist-5k": 0.125}, ood_after={"faces": 0.25, "mnist-5k": 0.0625},
                 provenance={"packages": {"torch": "2.14.1", "peft": None}, "git_sha": "abc-dirty", "seed": 1},
                 model_desc={"image_size": 224, "family": "vit", "quick_gelu": True, "note": "null"},
                 dataset_desc={"fingerprint": "fp-digits", "n_classes": 10, "source_url": "file:///x"},
                 signals={"iimm": 0.1, "zs:top1": 0.5}, signal_versions={"iimm": "1"}, losses=[],
                 train_images_per_s=None, peak_memory_mb=None, trainable_params=None),
        make_run(method="coop", signals={}, signal_versions={}, hparams={}, ood_before={}, ood_after={}),
    ]
    source = tmp_path / "source.db"
    with open_history(str(source)) as h:
        for r in runs:
            h.record_run(r)
    assert len(_mlflow_runs(tracking_uri, experiment)) == 3

    target = tmp_path / "target.db"
    res = _import(cli, tracking_uri, experiment, target, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["added"] == 3 and info["skipped"] == []
    with open_history(str(source)) as a, open_history(str(target)) as b:
        assert b.runs() == a.runs()
    assert _export(target) == _export(source)


def _team_run(client: MlflowClient, exp_id: str, name: str, params: dict[str, str], metrics: dict[str, float],
              finished: bool = True) -> str:
    r = client.create_run(exp_id, run_name=name)
    for k, v in params.items():
        client.log_param(r.info.run_id, k, v)
    for k, v in metrics.items():
        client.log_metric(r.info.run_id, k, v)
    if finished:
        client.set_terminated(r.info.run_id, "FINISHED")
    return r.info.run_id


TEAM_MAP = ("--map", "params.base_model=model", "--map", "params.data=dataset", "--map", "params.algo=method",
            "--map", "metrics.zs_acc=id_acc_before", "--map", "metrics.val_acc=id_acc_after",
            "--map", "params.cfg.*=hparams.*")


@pytest.fixture
def team_experiment(tracking_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """Another team's runs under their own names: one complete, one without the zero-shot
    accuracy, one still running."""
    client = MlflowClient(tracking_uri=tracking_uri)
    name = f"team-{request.node.name}"
    exp_id = client.create_experiment(name, artifact_location=(tmp_path / "team-artifacts").as_uri())
    base = {"base_model": "no-such-model", "data": "digits", "algo": "lora", "seed": "7", "cfg.lr": "0.0005",
            "cfg.optimizer": "adamw"}
    ids = {
        "complete": _team_run(client, exp_id, "good", base, {"zs_acc": 0.5, "val_acc": 0.875}),
        "missing": _team_run(client, exp_id, "no-zero-shot", {**base, "seed": "8"}, {"val_acc": 0.75}),
        "running": _team_run(client, exp_id, "running", {**base, "seed": "9"}, {"zs_acc": 0.5, "val_acc": 0.5},
                             finished=False),
    }
    return name, ids


def test_run_missing_a_required_field_is_skipped_with_its_reason(team_experiment: tuple[str, dict[str, str]],
                                                                 tracking_uri: str, tmp_path: Path, cli: Any) -> None:
    name, ids = team_experiment
    db = tmp_path / "h.db"
    res = _import(cli, tracking_uri, name, db, *TEAM_MAP)
    assert res.exit_code == 0, res.output
    assert (f"Skipped MLflow run {ids['missing']} (no-zero-shot): missing id_acc_before (no metrics.zs_acc)"
            in res.stderr)
    assert ids["running"] not in res.output  # unfinished runs are not read
    assert "Imported 1 run from experiment" in res.stdout
    with open_history(str(db)) as h:
        (row,) = h.runs()
    assert (row["model"], row["dataset"], row["method"], row["seed"]) == ("no-such-model", "digits", "lora", 7)
    assert (row["id_acc_before"], row["id_acc_after"]) == (0.5, 0.875)
    assert row["hparams"] == {"lr": 0.0005, "optimizer": "adamw"}


def test_importing_twice_adds_nothing_and_a_dry_run_writes_nothing(team_experiment: tuple[str, dict[str, str]],
                                                                   tracking_uri: str, tmp_path: Path, cli: Any) -> None:
    name, ids = team_experiment
    db = tmp_path / "h.db"
    dry = _import(cli, tracking_uri, name, db, *TEAM_MAP, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert [r["mlflow_run_id"] for r in json.loads(dry.stdout)["new"]] == [ids["complete"]]
    assert not db.exists()
    first = _import(cli, tracking_uri, name, db, *TEAM_MAP)
    assert "Imported 1 run" in first.stdout
    before = _export(db)
    second = _import(cli, tracking_uri, name, db, *TEAM_MAP, "--json")
    info = json.loads(second.stdout)
    assert info["added"] == 0 and info["new"] == []
    assert [r["mlflow_run_id"] for r in info["already_present"]] == [ids["complete"]]
    assert _export(db) == before


def test_pairs_without_signals_are_kept_and_named_by_history_list(team_experiment: tuple[str, dict[str, str]],
                                                                  tracking_uri: str, tmp_path: Path, cli: Any) -> None:
    name, _ = team_experiment
    db = tmp_path / "h.db"
    res = _import(cli, tracking_uri, name, db, *TEAM_MAP, "--compute-signals")
    assert res.exit_code == 0, res.output
    assert "Signals for no-such-model on digits: not computed: unknown model 'no-such-model'" in res.output
    listed = cli("history", "list", "--db", str(db))
    assert ("Note: no-such-model on digits (1 run) has no signals yet: its runs lack model.image_size or "
            "dataset.fingerprint") in listed.stderr
    with open_history(str(db)) as h:  # a pair that carries its full key gets the `advisor signals` command
        h.record_run(make_run(signals={}, signal_versions={}))
    listed = cli("history", "list", "--db", str(db))
    assert ("Note: tiny-vit on digits (1 run) has no signals yet: advisor signals --model tiny-vit "
            "--dataset digits") in listed.stderr


def test_compute_signals_uses_the_normal_signal_path_when_the_pair_loads(tracking_uri: str, tmp_path: Path,
                                                                         cli: Any) -> None:
    from advisor.history import dataset_key, model_key
    from advisor.signals import compute_signals

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = client.create_experiment("team-tiny", artifact_location=(tmp_path / "art").as_uri())
    _team_run(client, exp_id, "tiny", {"base_model": "tiny-vit", "data": "digits", "algo": "coop", "seed": "0"},
              {"zs_acc": 0.125, "val_acc": 0.25})
    reference = compute_signals("tiny-vit", "digits", seed=0, device="cpu", quiet=True)
    assert reference.values

    # New rows get the signals as their own signal set, in the import's transaction.
    db = tmp_path / "h.db"
    res = _import(cli, tracking_uri, "team-tiny", db, *TEAM_MAP, "--compute-signals")
    assert res.exit_code == 0, res.output
    assert f"Signals for tiny-vit on digits: computed {len(reference.values)} signals" in res.output
    with open_history(str(db)) as h:
        (row,) = h.runs()
    assert {k[len("signal."):]: v for k, v in row.items() if k.startswith("signal.")} == reference.values
    assert "no signals yet" not in cli("history", "list", "--db", str(db)).output

    # Rows imported earlier without signals get them as the pair's signal set.
    later = tmp_path / "later.db"
    assert _import(cli, tracking_uri, "team-tiny", later, *TEAM_MAP).exit_code == 0
    assert "no signals yet" in cli("history", "list", "--db", str(later)).stderr
    again = _import(cli, tracking_uri, "team-tiny", later, *TEAM_MAP, "--compute-signals", "--json")
    assert json.loads(again.stdout)["added"] == 0
    with open_history(str(later)) as h:
        (row,) = h.runs()
        pair = (model_key({"name": "tiny-vit"}), dataset_key({"name": "digits"}))
        assert h.latest_signals(*pair) == reference.values
    assert "no signals yet" not in cli("history", "list", "--db", str(later)).output


def test_bad_input_is_one_line_before_mlflow_is_touched(tracking_uri: str, tmp_path: Path, cli: Any) -> None:
    missing_store = tmp_path / "nope.db"
    cases = [
        (["--map", "val_acc=id_acc_after"], "the key must start with params., metrics. or tags."),
        (["--map", "metrics.val_acc=accuracy"], "unknown history field 'accuracy'"),
        (["--map", "params.*=hparams"], "use * on both sides"),
    ]
    for extra, message in cases:
        res = _import(cli, "sqlite:///" + str(missing_store), "x", tmp_path / "h.db", *extra)
        assert res.exit_code == 1 and message in res.stderr, res.output
    res = _import(cli, "sqlite:///" + str(missing_store), "x", tmp_path / "h.db")
    assert res.exit_code == 1 and "no MLflow tracking database at" in res.stderr
    res = _import(cli, tracking_uri, "no-such-experiment", tmp_path / "h.db")
    assert res.exit_code == 1 and "no MLflow experiment named 'no-such-experiment'" in res.stderr
    assert not missing_store.exists()


# ------------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize("value", ["adam", "1", "true", "null", "", "NaN", "[1]", '"q"', 1, 0.1, 1e-300, True, None,
                                   [1, "a"], {"b": {"c": [None]}}])
def test_member_values_read_back_as_the_same_json_value(value: Any) -> None:
    text = member_text(value)
    assert isinstance(text, str)
    back = member_value(text)
    assert back == value and type(back) is type(value)


def test_keys_mlflow_refuses_are_reported_not_logged() -> None:
    rec = to_mlflow({"model": "m", "hparams": {"ok": 1, "bad/../key": 2}, "ood_after": {"//x": 0.5}})
    assert rec.params == {"model": "m", "hparams.ok": "1"}
    assert set(rec.rejected) == {"params.hparams.bad/../key", "metrics.ood_after.//x"}


# ------------------------------------------------------------------------------- a real run


def test_real_advisor_run_with_mlflow_flag_round_trips(tracking_uri: str, tmp_path: Path, cli: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ADVISOR_MLFLOW", "ADVISOR_MLFLOW_EXPERIMENT"):
        # The flag sets them in this process: setenv (unlike delenv of an unset variable) makes
        # monkeypatch restore them afterwards, so later tests do not log to MLflow.
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.chdir(tmp_path)
    MlflowClient(tracking_uri=tracking_uri).create_experiment("real-run", artifact_location=(tmp_path / "art").as_uri())
    db = tmp_path / "h.db"
    res = cli("run", "--model", "tiny-vit", "--dataset", "digits", "--method", "coop", "--shots", "2", "--epochs", "1",
              "--ood", "faces", "--max-images", "30", "--db", str(db), "--quiet", "--json",
              "--mlflow", "--mlflow-experiment", "real-run")
    assert res.exit_code == 0, res.output
    assert "Warning" not in res.stderr, res.stderr
    run_id = json.loads(res.stdout)["run_id"]
    (ml,) = _mlflow_runs(tracking_uri, "real-run")
    assert ml.data.tags["advisor.run_id"] == run_id
    assert [a.path for a in MlflowClient(tracking_uri=tracking_uri).list_artifacts(ml.info.run_id, "adapter")]
    target = tmp_path / "target.db"
    assert _import(cli, tracking_uri, "real-run", target).exit_code == 0
    assert _export(target) == _export(db)


def test_mlflow_switch_does_not_outlive_the_test_that_set_it() -> None:
    import os

    assert os.environ.get("ADVISOR_MLFLOW", "") == "" and os.environ.get("ADVISOR_MLFLOW_EXPERIMENT", "") == ""
