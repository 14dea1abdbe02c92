"""Mirror every recorded run to MLflow (opt-in: ``ADVISOR_MLFLOW=1``, or ``--mlflow``).

The history row as committed is written by the default mapping of
``advisor.history.mlflow_fields``: configuration as params, measured outcomes as metrics, the
signals as ``signal.*`` metrics, provenance as tags, the adapter file as an artifact. MLflow's
own ``MLFLOW_TRACKING_URI`` picks the store (MLflow's default: ``./mlflow.db``);
``ADVISOR_MLFLOW_EXPERIMENT`` names the experiment (default ``advisor``).

The run is already committed when this hook runs; any MLflow failure is one warning line on
stderr and never touches the history. mlflow is imported only when enabled.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from advisor.hookspecs import hookimpl

ENABLE_ENV = "ADVISOR_MLFLOW"
EXPERIMENT_ENV = "ADVISOR_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "advisor"
ADAPTER_ARTIFACT_DIR = "adapter"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, "").strip() or DEFAULT_EXPERIMENT


@hookimpl
def on_run_recorded(run: Any, run_id: str, db_url: str) -> None:
    if not enabled():
        return
    try:
        mirror_run(run, run_id, db_url)
    except Exception as exc:  # noqa: BLE001 - the run is committed; MLflow is a mirror
        print(f"Warning: run {run_id} is in the history but was not logged to MLflow "
              f"({_where()}): {_one_line(exc)}", file=sys.stderr)


def mirror_run(run: Any, run_id: str, db_url: str) -> str:
    """Log one recorded run to MLflow; returns the MLflow run id. Raises on any failure."""
    from advisor.history.mlflow_fields import to_mlflow

    row, adapter = _stored_row(run_id, db_url)
    rec = to_mlflow(row)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name)
        except MlflowException:  # another sweep worker created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    ml_run = client.create_run(experiment_id, run_name=run_id)
    ml_id = ml_run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in sorted(rec.metrics.items())]
        metrics += [Metric("loss", v, now, step) for step, v in enumerate(rec.loss)]
        metrics += [Metric(key, v, now, step) for key, v, step in rec.curve_metrics()]
        client.log_batch(ml_id, metrics=metrics, params=[Param(k, v) for k, v in sorted(rec.params.items())],
                         tags=[RunTag(k, v) for k, v in sorted(rec.tags.items())])
        if adapter is not None and adapter.is_file():
            client.log_artifact(ml_id, adapter, artifact_path=ADAPTER_ARTIFACT_DIR)
        client.set_terminated(ml_id, "FINISHED")
    except BaseException:
        try:  # a half-logged run must not look finished (import reads finished runs only)
            client.set_terminated(ml_id, "FAILED")
        except Exception:  # noqa: BLE001
            pass
        raise
    if rec.rejected:
        keys = ", ".join(f"{k} ({why})" for k, why in sorted(rec.rejected.items()))
        print(f"Warning: run {run_id} logged to MLflow without {keys}", file=sys.stderr)
    if adapter is not None and not adapter.is_file():
        print(f"Warning: run {run_id}: adapter file {adapter} not found; not logged to MLflow", file=sys.stderr)
    return ml_id


def _stored_row(run_id: str, db_url: str) -> tuple[dict[str, Any], Path | None]:
    """The run as the history committed it (with its recorded time and signal timings, which
    the RunResult does not carry), so MLflow -> import gives the same row back; and its adapter
    file (the row stores it relative to the history's adapters directory)."""
    from advisor.config import adapters_dir
    from advisor.history import open_history

    with open_history(db_url) as h:
        row = h.get_run(run_id)
        stored = row.get("adapter_path")
        if not stored:
            return row, None
        path = Path(stored)
        return row, path if path.is_absolute() else adapters_dir(h.path) / path


def _where() -> str:
    uri = re.sub(r"//[^/@]*@", "//", os.environ.get("MLFLOW_TRACKING_URI") or "") or "MLflow's default store"
    return f"{uri}, experiment {experiment_name()!r}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
