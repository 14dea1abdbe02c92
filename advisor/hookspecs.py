"""Plugin hooks. Built-in metrics, tuners, datasets and models use exactly these hooks.

A plugin is a module (or object) with functions decorated by ``hookimpl`` (``from
advisor.hookspecs import hookimpl``; ``advisor.hookimpl`` is the same marker) whose names
match the hooks below. Registrations are the dataclasses of ``advisor.specs`` and carry
everything about what they register (a tuner's order, colour, family, hyper-parameters). The ``register`` argument is a callback: call it once per thing the
plugin provides. Every hook is documented in docs/plugins.md; a test fails when one is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:  # the floor above: only for the annotations
    import click

    from .specs import DatasetSource, Metric, ModelSource, RunResult, Tuner
    from .specs.executors import Executor

hookspec = HookspecMarker("advisor")
hookimpl = HookimplMarker("advisor")


@hookspec
def register_metrics(register: Callable[[Metric], None]) -> None:
    """Register pre-fine-tuning signals (``advisor.specs.Metric``).

    Example::

        @hookimpl
        def register_metrics(register):
            register(Metric(name="my_score", compute=my_score, needs=frozenset({"image", "labels"})))
    """


@hookspec
def register_tuners(register: Callable[[Tuner], None]) -> None:
    """Register fine-tuning methods (``advisor.specs.Tuner``).

    Example::

        @hookimpl
        def register_tuners(register):
            register(Tuner(name="bitfit", train=train_bitfit, defaults=lambda shots: {"lr": 1e-3},
                           order=70, hparams=(HParam("bias_only", bool, True, "train biases only"),)))
    """


@hookspec
def register_datasets(register: Callable[[DatasetSource], None]) -> None:
    """Register dataset sources (``advisor.specs.DatasetSource``).

    Example::

        @hookimpl
        def register_datasets(register):
            register(DatasetSource(name="my-parquet", load=load_parquet, prefix=True))
    """


@hookspec
def register_models(register: Callable[[ModelSource], None]) -> None:
    """Register model sources (``advisor.specs.ModelSource``).

    Example::

        @hookimpl
        def register_models(register):
            register(ModelSource(name="my-clip", load=load_my_clip))
    """


@hookspec
def register_executors(register: Callable[[Executor], None]) -> None:
    """Register ways to run the jobs of ``advisor sweep`` (``advisor.sweep.executor.Executor``).

    ``local`` and ``slurm`` (submitit) are built-ins registered through this hook; Ray or
    Kubernetes come as plugins. An executor's ``launch(request)`` starts worker processes that
    call ``request.worker`` on ``WorkerRequest`` objects and returns handles with ``done()``,
    ``cancel()`` and ``job_id``.

    Example::

        @hookimpl
        def register_executors(register):
            register(Executor(name="ray", launch=launch_on_ray, description="a Ray cluster"))
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``advisor`` command line. A command named like one
    that exists (a built-in ``recommend``) is ignored with a warning: the first one stays.

    Example::

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello")
    """


@hookspec
def on_run_recorded(run: RunResult, run_id: str, db_url: str, row: Mapping[str, Any],
                    adapter_file: Path | None) -> None:
    """Called after ``advisor run`` committed a run (an ``advisor.specs.RunResult``) to the
    history at ``db_url``. For notifications and mirroring (MLflow, a dashboard); the run is
    already committed, and an exception here is reported but does not undo it.

    ``row`` is the run as the history committed it (a mapping: the flat row of ``advisor history
    show``, with its recorded time and signal timings; read from the history when first looked
    at) and ``adapter_file`` its trained adapter (None without one), so a plugin never opens the
    history itself. An implementation may take any subset of the arguments.

    Example::

        @hookimpl
        def on_run_recorded(run, run_id, db_url):
            mlflow.log_metric("id_gain", run.id_acc_after - run.id_acc_before)
    """
