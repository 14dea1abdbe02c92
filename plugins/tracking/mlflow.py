"""Mirror every recorded run to MLflow (opt-in: ``ADVISOR_MLFLOW=1``, or ``--mlflow``).

The history row as committed is written by the default mapping of
``advisor.history.mlflow_fields``: configuration as params, measured outcomes (and the derived
``id_gain`` and ``ood_change``) as metrics, the signals as ``signal.*`` metrics, provenance as
tags, the adapter file as an artifact. MLflow's own ``MLFLOW_TRACKING_URI`` picks the store
(MLflow's default: ``./mlflow.db``). The experiment: ``--mlflow-experiment`` (which sets
``ADVISOR_MLFLOW_EXPERIMENT``), else ``MLFLOW_EXPERIMENT_NAME``, else ``MLFLOW_EXPERIMENT_ID``,
else the parent run's, else ``advisor``. Inside a parent run (``MLFLOW_RUN_ID``) the run is
logged as its child (tag ``mlflow.parentRunId``). MLflow's run context providers add their tags
(``mlflow.user``, ``mlflow.source.*``, git, ``MLFLOW_RUN_CONTEXT``) as ``mlflow.start_run``
would. One stderr line names the MLflow run written; MLflow's own INFO lines are kept quiet.

The run is already committed when this hook runs; any MLflow failure is one warning line on
stderr and never touches the history or the exit status. mlflow is imported only when enabled.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from advisor.errors import one_line
from advisor.hookspecs import hookimpl

ENABLE_ENV = "ADVISOR_MLFLOW"
EXPERIMENT_ENV = "ADVISOR_MLFLOW_EXPERIMENT"
#: MLflow's own variables, honoured after advisor's (as ``mlflow.start_run`` reads them).
MLFLOW_EXPERIMENT_NAME_ENV = "MLFLOW_EXPERIMENT_NAME"
MLFLOW_EXPERIMENT_ID_ENV = "MLFLOW_EXPERIMENT_ID"
MLFLOW_RUN_ID_ENV = "MLFLOW_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"
DEFAULT_EXPERIMENT = "advisor"
ADAPTER_ARTIFACT_DIR = "adapter"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def experiment_words() -> str:
    """The experiment asked for, as words: option / ``ADVISOR_MLFLOW_EXPERIMENT``, then
    ``MLFLOW_EXPERIMENT_NAME``, then ``MLFLOW_EXPERIMENT_ID``, then the parent run's, then
    ``advisor``. The same order picks it in ``_experiment``."""
    name = _env(EXPERIMENT_ENV) or _env(MLFLOW_EXPERIMENT_NAME_ENV)
    if name:
        return repr(name)
    if _env(MLFLOW_EXPERIMENT_ID_ENV):
        return f"id {_env(MLFLOW_EXPERIMENT_ID_ENV)}"
    if _env(MLFLOW_RUN_ID_ENV):
        return f"of parent run {_env(MLFLOW_RUN_ID_ENV)}"
    return repr(DEFAULT_EXPERIMENT)


@hookimpl
def on_run_recorded(run_id: str, row: Mapping[str, Any], adapter_file: Path | None) -> None:
    if not enabled():
        return
    try:
        mirror_run(dict(row), run_id, adapter_file)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the run is committed; MLflow is a mirror
        print(f"Warning: run {run_id} is in the history but was not logged to MLflow "
              f"({_where()}): {one_line(exc)}", file=sys.stderr)


def _experiment(client: Any, parent: Any) -> tuple[str, str]:
    """(experiment id, name) by the precedence of ``experiment_words``; a named experiment that
    does not exist is created (as ``mlflow.set_experiment`` does), an id must exist."""
    from mlflow.exceptions import MlflowException

    name = _env(EXPERIMENT_ENV) or _env(MLFLOW_EXPERIMENT_NAME_ENV)
    if not name and _env(MLFLOW_EXPERIMENT_ID_ENV):
        exp = client.get_experiment(_env(MLFLOW_EXPERIMENT_ID_ENV))
        return exp.experiment_id, exp.name
    if not name and parent is not None:
        exp = client.get_experiment(parent.info.experiment_id)
        return exp.experiment_id, exp.name
    name = name or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id, name
    try:
        return client.create_experiment(name), name
    except MlflowException:  # another sweep worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id, name


def _context_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` over the tags MLflow's run context providers give a run started here
    (``mlflow.user``, ``mlflow.source.name``/``type``, git commit, ``MLFLOW_RUN_CONTEXT``), as
    ``mlflow.start_run`` merges them; without the registry, ``tags`` alone."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:
        return dict(tags)
    return {str(k): str(v) for k, v in resolve_tags(dict(tags)).items()}


def derived_metrics(row: dict[str, Any]) -> dict[str, float]:
    """``id_gain`` and ``ood_change`` as the CLI's summary and the predictor compute them
    (``advisor.predictor.rows.row_targets``); a value the row cannot give is left out."""
    import math

    from advisor.history.mlflow_fields import DERIVED_METRICS
    from advisor.predictor.rows import row_targets

    targets = row_targets(row)
    return {k: float(targets[k]) for k in DERIVED_METRICS if math.isfinite(targets[k])}


def mirror_run(row: dict[str, Any], run_id: str, adapter: Path | None) -> str:
    """Log one recorded run (its committed history row, so MLflow -> import gives the same row
    back) to MLflow; returns the MLflow run id. Raises on any failure."""
    from advisor.history.mlflow_fields import to_mlflow
    from advisor.mlflow_import import quiet_mlflow

    rec = to_mlflow(row)
    for key, value in derived_metrics(row).items():
        rec.metrics.setdefault(key, value)
    with quiet_mlflow():
        return _log(rec, run_id, adapter)


def _log(rec: Any, run_id: str, adapter: Path | None) -> str:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent_id = os.environ.get("MLFLOW_RUN_ID", "").strip()  # MLFLOW_RUN_ID_ENV, read as _env does
    parent = client.get_run(parent_id) if parent_id else None  # a missing parent: one warning line
    experiment_id, name = _experiment(client, parent)
    start_tags = {PARENT_TAG: parent_id} if parent_id else {}
    ml_run = client.create_run(experiment_id, run_name=run_id, tags=_context_tags(start_tags))
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
    print(f"Logged run {run_id} to MLflow experiment {name!r} at {_safe_uri(mlflow.get_tracking_uri())} "
          f"(run id {ml_id}" + (f", child of {parent_id})" if parent_id else ")"), file=sys.stderr)
    return ml_id


def _safe_uri(uri: str) -> str:
    """A tracking URI without its user:password part."""
    return re.sub(r"//[^/@]*@", "//", uri)


def _where() -> str:
    uri = _safe_uri(os.environ.get("MLFLOW_TRACKING_URI") or "") or "MLflow's default store"
    return f"{uri}, experiment {experiment_words()}"


