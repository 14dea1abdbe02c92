"""Click commands: ``advisor sweep`` (plan and run a grid), ``advisor sweep status``, and
``advisor history import-spool``. Attached to the main group by ``advisor.cli``."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import click

from ..cli_options import db_option, device_option, emit_json, json_option, print_table, quiet_option


def _minutes(value: str | None) -> int | None:
    """``90`` (minutes), ``1:30:00`` or ``2-00:00:00`` (Slurm's forms) -> minutes."""
    if value is None:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2}):(\d{2})", value.strip())
    if m:
        days, h, mi, sec = (int(x or 0) for x in m.groups())
        if mi > 59 or sec > 59 or (m.group(1) is not None and h > 23):
            raise click.BadParameter(f"{value!r} is not a time: minutes and seconds run to 59"
                                     + (", hours to 23 after a day count" if m.group(1) is not None else ""),
                                     param_hint="--slurm-time")
        return max(1, days * 1440 + h * 60 + mi + (1 if sec else 0))
    if value.strip().isdecimal() and int(value) > 0:
        return int(value)
    raise click.BadParameter(f"{value!r} is not a time (minutes, H:MM:SS or D-HH:MM:SS)", param_hint="--slurm-time")


@click.group(name="sweep", invoke_without_command=True)
@click.option("--spec", "spec", type=click.Path(dir_okay=False), default=None, metavar="SWEEP.toml",
              help="A sweep file (TOML) with the grid; see docs/sweeps.md. Replaces the axis options.")
@click.option("--model", "--models", "models", multiple=True, metavar="NAME[,NAME]", help="Model axis (repeatable).")
@click.option("--dataset", "--datasets", "datasets", multiple=True, metavar="NAME[,NAME]", help="Dataset axis.")
@click.option("--methods", "--method", "methods", multiple=True, metavar="NAME[,NAME]", help="Method axis.")
@click.option("--shots", "shots", multiple=True, metavar="K[,K]", help="Shots axis (default 16; 'all' = no few-shot cut).")
@click.option("--seeds", "--seed", "seeds", multiple=True, metavar="S[,S]", help="Seed axis (default 0).")
@click.option("--hparam", "hparams", multiple=True, metavar="KEY=V1,V2",
              help="Hyper-parameter axis, e.g. lr=1e-4,1e-3 (repeatable; one run per value).")
@click.option("--pretrained", default=None, help="open_clip pretrained tag for every model of the grid.")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Working resolution for every model.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="ID test images per run (default 500).")
@click.option("--max-ood", type=click.IntRange(min=1), default=None, help="Images per OOD reference set (default 500).")
@click.option("--device", default="auto", show_default=True, envvar="ADVISOR_DEVICE", show_envvar=True,
              help="Device of every run (auto: each worker uses cuda when present).")
@click.option("--no-adapters", is_flag=True, help="Do not save adapter files (the history keeps the measurements).")
@click.option("--executor", default="local", show_default=True, help="Where jobs run: local, slurm, or a plugin's.")
@click.option("--max-parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs at once (local: worker processes; slurm: the job array's % cap).")
@click.option("--retries", type=click.IntRange(min=0), default=0, show_default=True, help="Retry failed runs N times.")
@click.option("--slurm-partition", default=None, help="Slurm partition.")
@click.option("--slurm-time", default=None, metavar="TIME", help="Slurm time limit per run (minutes or H:MM:SS).")
@click.option("--gpus-per-run", type=click.IntRange(min=0), default=None, help="GPUs per run (Slurm gres / local).")
@click.option("--cpus-per-run", type=click.IntRange(min=1), default=None, help="CPUs per Slurm task (default 4).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where submitit writes job logs (default: <user data>/sweeps/<id>).")
@click.option("--spool-dir", type=click.Path(file_okay=False), default=None, envvar="ADVISOR_SPOOL", show_envvar=True,
              help="Where runs go when the history cannot be written (env ADVISOR_SPOOL).")
@click.option("--mlflow", "use_mlflow", is_flag=True, help="Also log every run to MLflow (MLFLOW_TRACKING_URI).")
@click.option("--mlflow-experiment", metavar="NAME", default=None,
              help="MLflow experiment for --mlflow (env ADVISOR_MLFLOW_EXPERIMENT, then MLFLOW_EXPERIMENT_NAME; "
                   "default: advisor).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan and the runs it would start, and stop; nothing is written or submitted.")
@click.option("--detach", is_flag=True, help="Submit and return; watch with `advisor sweep status`.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@db_option
@json_option
@click.pass_context
def sweep_group(ctx: click.Context, spec: str | None, models: tuple[str, ...], datasets: tuple[str, ...],
                methods: tuple[str, ...], shots: tuple[str, ...], seeds: tuple[str, ...], hparams: tuple[str, ...],
                pretrained: str | None, image_size: int | None, max_images: int | None, max_ood: int | None,
                device: str | None, no_adapters: bool, executor: str, max_parallel: int, retries: int,
                slurm_partition: str | None, slurm_time: str | None, gpus_per_run: int | None,
                cpus_per_run: int | None, log_dir: str | None, spool_dir: str | None, use_mlflow: bool,
                mlflow_experiment: str | None, dry_run: bool, detach: bool, quiet: bool, db: str | None,
                as_json: bool) -> None:
    """Run a grid of fine-tuning runs (models x datasets x methods x shots x seeds x
    hyper-parameters) through an executor, recording each run in the history.

    \b
    advisor sweep --models lit-offline --datasets digits,textile --methods lora,coop --shots 4,16 --max-parallel 2
    advisor sweep --spec sweeps/registry.toml --max-parallel 2
    advisor sweep --spec big.toml --executor slurm --slurm-partition gpu --gpus-per-run 1 --max-parallel 64 \\
                  --db postgresql+psycopg://user@host/advisor --detach
    advisor sweep status

    Runs already in the history are skipped; the same grid started again resumes it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..config import user_dir
    from .controller import execute_sweep, plan_sweep
    from .worker import stale_after_seconds

    grid = _grid(spec, models, datasets, methods, shots, seeds, hparams, pretrained, image_size,
                 {"max_images": max_images, "max_ood": max_ood, "device": device, "no_adapters": no_adapters})
    from ..plugins import get_executor
    from ..terminal import progress_enabled

    ex = get_executor(executor)
    options = {"timeout_min": _minutes(slurm_time), "partition": slurm_partition, "gpus_per_run": gpus_per_run,
               "cpus_per_run": cpus_per_run}
    _check_mlflow(use_mlflow, mlflow_experiment)
    plan, history = plan_sweep(grid, db, write=not dry_run, stale_after_s=stale_after_seconds(), executor=executor,
                               max_parallel=max_parallel)
    if executor == "slurm" and slurm_time is None and not dry_run:
        click.echo("Note: no --slurm-time given; each array task gets 60 minutes.", err=True)
    if history.is_sqlite and not ex.shares_machine and not dry_run:
        click.echo(f"Warning: executor {executor!r} runs jobs on other machines but the history is a SQLite file "
                   f"({history.display}); use a shared PostgreSQL URL (--db postgresql+psycopg://...).", err=True)
    lines = _plan_lines(plan, grid)
    if dry_run or plan.to_run == 0:
        if as_json:
            emit_json({"plan": plan.to_dict(), "summary": None})
        else:
            for line in lines:
                click.echo(line)
            if dry_run:
                if plan.would_start:
                    click.echo(f"Would start {len(plan.would_start)} run{'s' if len(plan.would_start) != 1 else ''}:")
                for job in plan.would_start:
                    click.echo(f"  {_job_line(job)}")
                click.echo("Dry run: nothing submitted.")
        return
    for line in lines:
        click.echo(line, err=as_json)
    folder = Path(log_dir) if log_dir else user_dir() / "sweeps" / plan.sweep_id
    folder.mkdir(parents=True, exist_ok=True)
    env = {"ADVISOR_MLFLOW": "1"} if use_mlflow else {}
    if mlflow_experiment:  # the option first, then ADVISOR_MLFLOW_EXPERIMENT, then MLflow's own variables
        env["ADVISOR_MLFLOW_EXPERIMENT"] = mlflow_experiment.strip()
    summary = execute_sweep(plan, history, executor=executor, max_parallel=max_parallel, retries=retries,
                            log_dir=folder, spool_dir=spool_dir, options=options,
                            progress=progress_enabled(quiet), detach=detach, env=env,
                            status_every_s=None if quiet else 60.0)
    if as_json:
        emit_json({"plan": plan.to_dict(), "summary": summary.to_dict(), "log_dir": str(folder)})
    else:
        c = summary.counts
        if summary.detached:
            click.echo(f"Submitted; logs in {folder}. Watch with: advisor sweep status {plan.sweep_id}")
        else:
            click.echo(f"Sweep {plan.sweep_id}: {c['done']} done, {c['skipped']} skipped (already recorded), "
                       f"{c['failed']} failed, in {_duration(summary.seconds)}; logs in {folder}.")
            for f in summary.failed:
                click.echo(f"  failed: {f['run']}: {f['error']}" + (f" (log: {f['log']})" if f.get("log") else ""))
    if summary.failed and not summary.detached:
        ctx.exit(1)


def _grid(spec: str | None, models: tuple[str, ...], datasets: tuple[str, ...], methods: tuple[str, ...],
          shots: tuple[str, ...], seeds: tuple[str, ...], hparams: tuple[str, ...], pretrained: str | None,
          image_size: int | None, run: dict[str, Any]) -> Any:
    """The sweep's grid: the ``--spec`` file, or the grid the options name; with the run
    options (``max_images``, ``max_ood``, ``device``, ``no_adapters``) applied to every job."""
    from .grid import grid_from_options, load_sweep_file, split_list

    max_images, max_ood, device, no_adapters = run["max_images"], run["max_ood"], run["device"], run["no_adapters"]
    run_opts: dict[str, Any] = {}
    if max_images is not None:
        run_opts["max_images"] = max_images
    if max_ood is not None:
        run_opts["max_ood"] = max_ood
    if device and device != "auto":  # auto: resolved by each worker on its own machine
        from ..config import resolve_device

        run_opts["device"] = resolve_device(device)
    if no_adapters:
        run_opts["save_adapter"] = False
    if spec:
        if models or datasets or methods or shots or seeds or hparams:
            raise click.UsageError("--spec holds the grid: drop --models/--datasets/--methods/--shots/--seeds/--hparam")
        grid = load_sweep_file(spec)
        grid.run.update(run_opts)
    else:
        if not (models and datasets and methods):
            raise click.UsageError("give --models, --datasets and --methods (or --spec FILE.toml)")
        grid = grid_from_options(split_list(models), split_list(datasets), split_list(methods), split_list(shots),
                                 [int(s) if s.lstrip("-").isdigit() else s for s in split_list(seeds)], hparams,
                                 pretrained=pretrained, image_size=image_size, run=run_opts)
    return grid


def _check_mlflow(use_mlflow: bool, experiment: str | None) -> None:
    """Refuse ``--mlflow`` without MLflow installed, and an empty experiment name, before any work."""
    if use_mlflow and importlib.util.find_spec("mlflow") is None:
        raise click.UsageError("MLflow logging is on (--mlflow) but MLflow is not installed: "
                               "pip install 'advisor[mlflow]'")
    if experiment is not None and not experiment.strip():
        raise click.BadParameter("the experiment name is empty", param_hint="--mlflow-experiment")


def _plan_lines(plan: Any, grid: Any) -> list[str]:
    """What the plan says before it starts: the runs, the skipped ones, the estimated cost."""
    lines = [f"Sweep {plan.sweep_id}{f' ({grid.name})' if grid.name else ''}: {len(plan.jobs)} runs, "
             f"{plan.recorded} already in the history (skipped), {plan.to_run} to run"
             + (f", {plan.running_elsewhere} running in another sweep process" if plan.running_elsewhere else "")
             + f"; history {plan.db_display}."]
    if plan.estimate_s is not None and plan.estimate_wall_s is not None and plan.to_run:
        lines.append(f"Estimated cost: {_duration(plan.estimate_s)} of runs, about {_duration(plan.estimate_wall_s)} "
                     f"with {plan.workers} at once ({plan.estimate_basis}).")
    elif plan.to_run:
        lines.append("Estimated cost: unknown (the history has no run to estimate from).")
    return lines


def _job_line(job: Any) -> str:
    """One planned run: model, dataset, method, shots, seed and the overrides (``--dry-run``)."""
    model = job.model + (f" ({job.pretrained})" if job.pretrained else "") + (
        f" @{job.image_size}px" if job.image_size else "")
    shots = "all" if job.shots is None else job.shots
    hp = " ".join(f"{k}={v}" for k, v in sorted(job.hparams.items())) or "defaults"
    return f"{model}  {job.dataset}  {job.method}  shots={shots}  seed={job.seed}  {hp}"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@sweep_group.command(name="status")
@click.argument("sweep_id", required=False)
@db_option
@json_option
def sweep_status_command(sweep_id: str | None, db: str | None, as_json: bool) -> None:
    """Progress of a sweep (or a list of every sweep): counts per state, failed runs with their
    error and log, running ones with their heartbeat's age. Reads only."""
    from ..history import open_history
    from ..history.sweeps import sweep_status, sweeps
    from .grid import JobConfig
    from .worker import stale_after_seconds

    history = open_history(db)
    if sweep_id is None:
        rows = sweeps(history)
        if as_json:
            emit_json({"sweeps": rows})
        else:
            print_table(rows, ["sweep_id", "name", "jobs", "done", "skipped", "running", "queued", "failed", "updated_at"])
        return
    info = sweep_status(history, sweep_id, stale_after_seconds())
    if as_json:
        emit_json(info)
        return
    c = info["counts"]
    name = f" ({info['name']})" if info["name"] else ""
    click.echo(f"Sweep {info['sweep_id']}{name}: "
               f"{info['jobs']} runs: {c['done']} done, {c['skipped']} skipped, {c['running']} running, "
               f"{c['queued']} queued, {c['failed']} failed.")
    for j in info["running"]:
        click.echo(f"  running: {JobConfig.from_dict(j['config']).label()} on {j['worker']} "
                   f"(heartbeat {j['heartbeat_age_s']:.0f} s ago)")
    for j in info["failed"]:
        click.echo(f"  failed:  {JobConfig.from_dict(j['config']).label()}: {j['error']}"
                   + (f" (log: {j['log_path']})" if j.get("log_path") else ""))


@click.command(name="import-spool")
@click.option("--spool-dir", type=click.Path(file_okay=False), default=None, envvar="ADVISOR_SPOOL", show_envvar=True,
              help="The spool directory (env ADVISOR_SPOOL; default <user data>/spool).")
@click.option("--dry-run", is_flag=True, help="List what would be imported; change nothing.")
@db_option
@json_option
def import_spool_command(spool_dir: str | None, dry_run: bool, db: str | None, as_json: bool) -> None:
    """Add runs that were spooled because the history could not be written when they finished.
    Each file is deleted once its run is in the history; importing twice adds nothing."""
    from ..history import open_history
    from ..history.spool import default_spool_dir, import_spool

    folder = spool_dir or str(default_spool_dir())
    if not os.path.isdir(folder):
        rows: list[dict[str, Any]] = []
    else:
        rows = import_spool(open_history(db), folder, dry_run=dry_run)
    if as_json:
        emit_json({"spool_dir": folder, "runs": rows})
        return
    if not rows:
        click.echo(f"Nothing spooled in {folder}.")
        return
    print_table(rows, ["run_id", "status", "path"])


@click.command(name="refresh-signals")
@device_option
@click.option("--all", "all_pairs", is_flag=True, help="Recompute every pair, not only those with changed metric versions.")
@click.option("--dry-run", is_flag=True, help="List the pairs that would be recomputed; change nothing.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Recompute only this metric (repeatable) and keep the pair's other stored signals: how a "
                   "history takes in a metric plugin added after its runs (with --all: on every pair).")
@quiet_option
@db_option
@json_option
def refresh_signals_command(device: str, all_pairs: bool, dry_run: bool, metrics: tuple[str, ...], quiet: bool,
                            db: str | None, as_json: bool) -> None:
    """Recompute the signal sets of every (model, dataset) pair in the history whose metric
    versions differ from the registered metrics', and point the pair's runs at the new set
    (after a metric fix, or at the end of a long sweep). Run measurements are untouched."""
    from ..refresh import refresh_signals

    rows = refresh_signals(db, device=device, dry_run=dry_run, only_stale=not all_pairs,
                           echo=(lambda m: None) if quiet else None, metrics=list(metrics) or None)
    if as_json:
        emit_json({"pairs": rows})
        return
    print_table(rows, ["model", "dataset", "runs", "status", "stale_metrics"])
