"""The ``advisor history`` group: add, list, show, export, import-mlflow, update, path (the sweep commands
``import-spool`` and ``refresh-signals`` join it in ``advisor.cli``)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..cli_options import (
    _fmt,
    db_option,
    emit_json,
    json_option,
    print_table,
    quiet_option,
)
from ..errors import AdvisorError


@click.group(name="history")
def history_group() -> None:
    """The run history: every recorded fine-tuning run, in a SQL database.

    \b
    advisor history add runs.csv          # CSV, JSON array or JSON lines; all rows or none
    advisor history list --method lora --limit 50
    advisor history export --format jsonl -o runs.jsonl
    """


@history_group.command(name="add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl"]), default=None,
              help="File format (default: from the extension, else from the content).")
@click.option("--skip-existing", is_flag=True,
              help="Leave out runs whose configuration and seed are already in the history (merging another "
                   "history's export) instead of refusing the file.")
@db_option
@json_option
def history_add(file: str, fmt: str | None, skip_existing: bool, db: str | None, as_json: bool) -> None:
    """Add runs from FILE (columns: docs/history.md). Every row is validated first; any
    problem adds nothing."""
    from ..history import open_history
    from ..history.io import parse_file

    records = parse_file(file, fmt)
    with open_history(db) as h:
        n = h.add_records(records, skip_existing=skip_existing)
        skipped = len(records) - n
        if as_json:
            emit_json({"added": n, **({"skipped": skipped} if skip_existing else {}), "history": h.display})
            return
        tail = f" ({skipped} already there, skipped)" if skip_existing else ""
        click.echo(f"Added {n} run{'' if n == 1 else 's'} to {h.display}{tail}")


@history_group.command(name="list")
@click.option("--model", default=None, help="Only runs of this model name.")
@click.option("--dataset", default=None, help="Only runs on this dataset name.")
@click.option("--method", default=None, help="Only runs of this method.")
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N runs (the filters and the page are applied in SQL).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Skip the first K runs (after --after, if given).")
@click.option("--after", default=None, metavar="RUN_ID",
              help="Only runs after this one, oldest first: the next page is --after the last run id shown.")
@json_option
@db_option
def history_list(model: str | None, dataset: str | None, method: str | None, limit: int | None, offset: int,
                 after: str | None, as_json: bool, db: str | None) -> None:
    """List recorded runs, oldest first; --limit/--offset or --after page through a large history."""
    from ..history import open_history
    from ..history.signal_coverage import pairs_without_signals
    from ..terminal import printable as p

    with open_history(db, must_exist=True) as h:
        runs = h.runs(model=model, dataset=dataset, method=method, limit=limit, offset=offset, after=after)
        unsignalled = [] if as_json else pairs_without_signals(h, runs)
    if as_json:
        emit_json(runs)
        return
    differs = differing_hparams(runs)
    rows = [
        {
            "run_id": p(r["run_id"]), "recorded": (r["recorded_at"] or "")[:10], "model": p(r["model"]),
            "dataset": p(r["dataset"]), "method": p(" ".join(filter(None, (r["method"], differs[i])))),
            "shots": r["shots"], "seed": r["seed"],
            "acc_before": r["id_acc_before"], "acc_after": r["id_acc_after"],
            "gain": r["id_acc_after"] - r["id_acc_before"],
        }
        for i, r in enumerate(runs)
    ]
    print_table(rows)
    for u in unsignalled:  # e.g. imported runs: the predictor needs the pair's signals
        pretrained = f" --pretrained {u['pretrained']}" if u["pretrained"] else ""
        how = (f"advisor signals --model {u['model']}{pretrained} --dataset {u['dataset']}" if u["full_key"] else
               "its runs lack model.image_size or dataset.fingerprint, the key `advisor signals` stores "
               "under (history import-mlflow --compute-signals attaches signals to such runs)")
        click.echo(p(f"Note: {u['model']} on {u['dataset']} ({u['runs']} run{'' if u['runs'] == 1 else 's'}) "
                     f"has no signals yet: {how}"), err=True)


def differing_hparams(runs: list[dict[str, Any]]) -> list[str]:
    """Per run, ``key=value`` for the hyper-parameters that differ among the listed runs of its
    method (``advisor.predictor.support.differing_hparams``, as "Similar runs" decides it), so
    rows that differ only in their configuration do not look identical."""
    from ..predictor.support import differing_hparams as differing

    by_method: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        by_method.setdefault(str(r.get("method")), []).append(i)
    out = [""] * len(runs)
    for rows in by_method.values():
        for i, pairs in zip(rows, differing([runs[i].get("hparams") for i in rows])):
            out[i] = " ".join(pairs)
    return out


@history_group.command(name="show")
@click.argument("run_id")
@json_option
@db_option
def history_show(run_id: str, as_json: bool, db: str | None) -> None:
    """Show every field of one run (RUN_ID or an unambiguous prefix)."""
    from ..history import open_history
    from ..terminal import printable, wrap_pair

    with open_history(db, must_exist=True) as h:
        row = h.get_run(run_id)
    if as_json:
        emit_json(row)
        return
    width = max(len(k) for k in row)
    for k, v in row.items():
        if v is None or v == {} or v == []:
            continue
        text = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else _fmt(v) if not isinstance(v, float) else repr(v)
        for line in wrap_pair(k, printable(text), width):  # long values wrap under themselves
            click.echo(line)


@history_group.command(name="export")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Output format (default: from the -o extension, else csv).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output.")
@db_option
@json_option
def history_export(fmt: str | None, output: str | None, db: str | None, as_json: bool) -> None:
    """Export every run as CSV or JSON lines; `history add` reads it back exactly. With -o,
    ``--json`` prints what was written ({"exported", "path", "format"}). -o never names the
    history database itself, and the file is replaced in one step: a failed export leaves the
    file that was there."""
    from ..history import open_history
    from ..history.io import write_file

    if as_json and output is None:
        raise click.UsageError("--json describes the file written with -o; without -o the export itself "
                               "is on standard output (--format jsonl for JSON lines)")
    if fmt is None:
        fmt = "jsonl" if output and output.lower().endswith((".jsonl", ".ndjson")) else "csv"
    with open_history(db, must_exist=True) as h:
        if output is None:
            buf = io.StringIO()
            h.export(fmt, buf)
            _write_stdout(buf.getvalue())
            return
        if h.path is not None and _is_database_file(output, h.path):
            raise AdvisorError(f"-o {output} is the history database itself; exporting into it would destroy it "
                               "(give another file name)")
        try:
            n = write_file(output, lambda out: h.export(fmt, out))
        except OSError as exc:
            raise AdvisorError(f"cannot write {output}: {exc.strerror or exc}; nothing was written") from None
    if as_json:
        emit_json({"exported": n, "path": output, "format": fmt})
        return
    click.echo(f"Exported {n} run{'' if n == 1 else 's'} to {output}", err=True)


def _is_database_file(output: str, db: Path) -> bool:
    """``output`` is the SQLite file ``db`` or one of its side files, under any name (a link)."""
    try:
        out = os.stat(output)
    except OSError:
        return False
    for name in (str(db), f"{db}-wal", f"{db}-shm", f"{db}-journal"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
            return True
    return False


def _write_stdout(text: str) -> None:
    """``text`` on standard output; a write that fails (``> /dev/full``) is one line, not a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        from ..cli_options import _discard_stdout

        _discard_stdout()  # the interpreter's last flush would fail the same way
        raise AdvisorError(f"cannot write the export to standard output: {exc.strerror or exc}") from None


@history_group.command(name="import-mlflow")
@click.option("--experiment", required=True, metavar="NAME", help="MLflow experiment whose finished runs to import.")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--map", "maps", multiple=True, metavar="KEY=FIELD",
              help="Read history FIELD from MLflow KEY, e.g. params.base_model=model, metrics.val_acc=id_acc_after, "
                   "params.*=hparams.* (repeatable; defaults: docs/history.md).")
@click.option("--dry-run", is_flag=True, help="Show what would be imported; write nothing.")
@click.option("--compute-signals", is_flag=True,
              help="Compute the signals of imported (model, dataset) pairs when the model and data load here.")
@json_option
@db_option
def history_import_mlflow(experiment: str, tracking_uri: str | None, maps: tuple[str, ...], dry_run: bool,
                          compute_signals: bool, as_json: bool, db: str | None) -> None:
    """Import the finished runs of an MLflow experiment as history rows: all new rows in one
    transaction; runs already in the history are not added again; runs missing a required
    field are listed with the reason and skipped."""
    from ..mlflow_import import import_mlflow

    plan = import_mlflow(db, experiment, tracking_uri=tracking_uri, maps=maps, dry_run=dry_run,
                         compute=compute_signals)
    if as_json:
        emit_json(plan.to_json(dry_run))
        return
    from ..terminal import printable

    info = plan.to_json(dry_run)
    print_table([{k: printable(v) if isinstance(v, str) else v for k, v in
                  {**r, "mlflow_run": r["mlflow_run_id"][:12], "acc_before": r["id_acc_before"],
                   "acc_after": r["id_acc_after"]}.items()} for r in info["new"]],
                ["mlflow_run", "run_id", "model", "dataset", "method", "shots", "seed", "acc_before", "acc_after",
                 "signals"])
    for s in info["skipped"]:
        click.echo(printable(f"Skipped MLflow run {s['mlflow_run_id']}{' (' + s['name'] + ')' if s['name'] else ''}: "
                             f"{s['reason']}"), err=True)
    for p in info["signals"]:
        click.echo(printable(f"Signals for {p['model']} on {p['dataset']}: {p['status']}"))
    n_new, n_present = len(info["new"]), len(info["already_present"])
    tail = f"; {n_present} already in the history" if n_present else ""
    if dry_run:
        click.echo(f"Dry run: would import {n_new} run{'' if n_new == 1 else 's'}{tail}; nothing written.")
    else:
        click.echo(f"Imported {plan.added} run{'' if plan.added == 1 else 's'} from experiment {experiment!r} "
                   f"into {plan.history}{tail}.")


@history_group.command(name="update")
@click.option("--dry-run", is_flag=True, help="Say how many runs would be added; write nothing.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Retrain the predictor on the merged history when runs were added.")
@quiet_option
@db_option
@json_option
def history_update(dry_run: bool, train: bool, quiet: bool, db: str | None, as_json: bool) -> None:
    """Add the runs of the installed registry.db that your history lacks, then retrain the
    predictor. Your default history is a copy made at first use, and upgrading advisor never
    touches it: this is how it takes in a newer shipped history. Your own runs are kept, and so
    is your copy of any run the registry measured again."""
    from ..history import open_history, update_from_shipped
    from ..history.location import default_path, ensure_default_db

    if db is None:
        ensure_default_db(default_path(), notice=False)
        db = str(default_path())
    with open_history(db) as h:
        info = update_from_shipped(h, dry_run=dry_run)
        trained = None
        if info["added"] and train and not dry_run:
            from ..predictor import train_predictor

            if not quiet:
                click.echo(f"Added {info['added']:,} runs; retraining the predictor on {h.count():,} runs ...", err=True)
            trained = train_predictor(h)
        if as_json:
            emit_json({**info, "dry_run": dry_run, "history": h.display,
                       "trained_on": trained["n_runs"] if trained else None})
            return
        verb = "Would add" if dry_run else "Added"
        click.echo(f"{verb} {info['added']:,} of the {info['shipped']:,} runs of {info['registry']} to {h.display} "
                   f"({info['present']:,} already there)" + (f"; predictor retrained on {trained['n_runs']:,} runs."
                                                            if trained else "."))


@history_group.command(name="path")
@db_option
@json_option
def history_path(db: str | None, as_json: bool) -> None:
    """Print where the history database is (a file path, or a URL without its password)."""
    from ..history.location import location

    if as_json:
        emit_json({"path": location(db)})
        return
    click.echo(location(db))
