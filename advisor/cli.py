"""The ``advisor`` command line: one click group, sub-groups per concern.

User-caused problems raise ``AdvisorError``; ``AdvisorGroup`` turns them into a one-line
``Error: ...`` and exit code 1, without a traceback. Commands import heavy modules (torch,
open_clip, lightgbm) inside their bodies so ``advisor --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ._version import __version__
from .errors import AdvisorError
from .cli_options import (  # noqa: F401  (re-exported: advisor.cli.db_option and friends)
    AdvisorGroup,
    DEFAULT_DATASET,
    DEFAULT_MODEL,
    DEFAULT_SHOTS,
    ENVIRONMENT,
    _discard_stdout,
    _fmt,
    _json_default,
    dataset_options,
    dataset_source_options,
    db_option,
    device_option,
    emit_json,
    import_torch,
    json_option,
    mlflow_option,
    model_options,
    print_table,
    shots_option,
)


@click.group(cls=AdvisorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advisor")
def cli() -> None:
    """Recommend how to fine-tune a vision-language model, before paying for the run.

    \b
    advisor recommend --model lit-offline --dataset fashion-mnist
    advisor signals   --model ViT-B-32 --pretrained openai --dataset folder:./images
    advisor run       --method lora --dataset mnist-5k --shots 16
    """


# ---------------------------------------------------------------------------------- plugins


@cli.command(name="plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List installed plugins: version, hooks, and the metrics, tuners, datasets, models and
    executors each provides (* marks our reconstructions of a paper's method)."""
    from .plugins import KINDS, plugin_info

    info = plugin_info()
    if as_json:
        emit_json(info)
        return
    rows = []
    marked = False
    for p in info:
        if "error" in p:
            rows.append({"plugin": p["name"], "version": "", "provides": f"FAILED: {p['error']}"})
            continue
        recon = set(p.get("reconstructed") or ())
        marked = marked or bool(recon)
        provides = "; ".join(f"{k}: {', '.join(n + ('*' if n in recon else '') for n in p[k])}"
                             for k in KINDS if p.get(k))
        rows.append({"plugin": p["name"], "version": p["version"], "provides": provides or ", ".join(p["hooks"])})
    print_table(rows, ["plugin", "version", "provides"])
    if marked:
        click.echo("* our reconstruction of a paper's method, not its official code (docs/tuners.md, docs/signals.md)")


# ---------------------------------------------------------------------------------- history
# (history group: owned by the history module; columns documented in docs/history.md)


@cli.group(name="history")
def history_group() -> None:
    """The run history: every recorded fine-tuning run, in a SQL database.

    \b
    advisor history add runs.csv          # CSV, JSON array or JSON lines; all rows or none
    advisor history list --method lora
    advisor history export --format jsonl -o runs.jsonl
    """


@history_group.command(name="add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl"]), default=None,
              help="File format (default: from the extension, else from the content).")
@db_option
@json_option
def history_add(file: str, fmt: str | None, db: str | None, as_json: bool) -> None:
    """Add runs from FILE (columns: docs/history.md). Every row is validated first; any
    problem adds nothing."""
    from .history import open_history
    from .history.io import parse_file

    records = parse_file(file, fmt)
    with open_history(db) as h:
        n = h.add_records(records)
        if as_json:
            emit_json({"added": n, "history": h.display})
            return
        click.echo(f"Added {n} run{'' if n == 1 else 's'} to {h.display}")


@history_group.command(name="list")
@click.option("--model", default=None, help="Only runs of this model name.")
@click.option("--dataset", default=None, help="Only runs on this dataset name.")
@click.option("--method", default=None, help="Only runs of this method.")
@json_option
@db_option
def history_list(model: str | None, dataset: str | None, method: str | None, as_json: bool, db: str | None) -> None:
    """List recorded runs, oldest first."""
    from .history import open_history

    from .history.signal_coverage import pairs_without_signals

    with open_history(db) as h:
        runs = h.runs(model=model, dataset=dataset, method=method)
        unsignalled = [] if as_json else pairs_without_signals(h, runs)
    if as_json:
        emit_json(runs)
        return
    rows = [
        {
            "run_id": r["run_id"], "recorded": (r["recorded_at"] or "")[:10], "model": r["model"],
            "dataset": r["dataset"], "method": r["method"], "shots": r["shots"], "seed": r["seed"],
            "acc_before": r["id_acc_before"], "acc_after": r["id_acc_after"],
            "gain": r["id_acc_after"] - r["id_acc_before"],
        }
        for r in runs
    ]
    print_table(rows)
    for p in unsignalled:  # e.g. imported runs: the predictor needs the pair's signals
        pretrained = f" --pretrained {p['pretrained']}" if p["pretrained"] else ""
        how = (f"advisor signals --model {p['model']}{pretrained} --dataset {p['dataset']}" if p["full_key"] else
               "its runs lack model.image_size or dataset.fingerprint, the key `advisor signals` stores "
               "under (history import-mlflow --compute-signals attaches signals to such runs)")
        click.echo(f"Note: {p['model']} on {p['dataset']} ({p['runs']} run{'' if p['runs'] == 1 else 's'}) "
                   f"has no signals yet: {how}", err=True)


@history_group.command(name="show")
@click.argument("run_id")
@json_option
@db_option
def history_show(run_id: str, as_json: bool, db: str | None) -> None:
    """Show every field of one run (RUN_ID or an unambiguous prefix)."""
    from .history import open_history

    from .terminal import wrap_pair

    with open_history(db) as h:
        row = h.get_run(run_id)
    if as_json:
        emit_json(row)
        return
    width = max(len(k) for k in row)
    for k, v in row.items():
        if v is None or v == {} or v == []:
            continue
        text = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else _fmt(v) if not isinstance(v, float) else repr(v)
        for line in wrap_pair(k, text, width):  # long values wrap under themselves
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
    ``--json`` prints what was written ({"exported", "path", "format"})."""
    from .history import open_history

    if as_json and output is None:
        raise click.UsageError("--json describes the file written with -o; without -o the export itself "
                               "is on standard output (--format jsonl for JSON lines)")
    if fmt is None:
        fmt = "jsonl" if output and output.lower().endswith((".jsonl", ".ndjson")) else "csv"
    with open_history(db) as h:
        if output is None:
            h.export(fmt, sys.stdout)
            return
        try:
            with open(output, "w", encoding="utf-8", newline="") as out:
                n = h.export(fmt, out)
        except OSError as exc:
            raise AdvisorError(f"cannot write {output}: {exc.strerror or exc}") from None
    if as_json:
        emit_json({"exported": n, "path": output, "format": fmt})
        return
    click.echo(f"Exported {n} run{'' if n == 1 else 's'} to {output}", err=True)


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
    from .mlflow_import import import_mlflow

    plan = import_mlflow(db, experiment, tracking_uri=tracking_uri, maps=maps, dry_run=dry_run,
                         compute=compute_signals)
    if as_json:
        emit_json(plan.to_json(dry_run))
        return
    info = plan.to_json(dry_run)
    print_table([{**r, "mlflow_run": r["mlflow_run_id"][:12], "acc_before": r["id_acc_before"],
                  "acc_after": r["id_acc_after"]} for r in info["new"]],
                ["mlflow_run", "run_id", "model", "dataset", "method", "shots", "seed", "acc_before", "acc_after",
                 "signals"])
    for s in info["skipped"]:
        click.echo(f"Skipped MLflow run {s['mlflow_run_id']}{' (' + s['name'] + ')' if s['name'] else ''}: {s['reason']}",
                   err=True)
    for p in info["signals"]:
        click.echo(f"Signals for {p['model']} on {p['dataset']}: {p['status']}")
    n_new, n_present = len(info["new"]), len(info["already_present"])
    tail = f"; {n_present} already in the history" if n_present else ""
    if dry_run:
        click.echo(f"Dry run: would import {n_new} run{'' if n_new == 1 else 's'}{tail}; nothing written.")
    else:
        click.echo(f"Imported {plan.added} run{'' if plan.added == 1 else 's'} from experiment {experiment!r} "
                   f"into {plan.history}{tail}.")


@history_group.command(name="path")
@db_option
@json_option
def history_path(db: str | None, as_json: bool) -> None:
    """Print where the history database is (a file path, or a URL without its password)."""
    from .history.store import location

    if as_json:
        emit_json({"path": location(db)})
        return
    click.echo(location(db))


# ---------------------------------------------------------------------------------- embed / cache


@cli.command(name="embed")
@model_options
@dataset_options
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@device_option
@click.option("--num-workers", type=click.IntRange(min=0), default=None, show_default="auto",
              help="DataLoader worker processes for image files (auto: from the CPU count and the decoding cost).")
@click.option("--layers", "with_layers", is_flag=True, help="Also keep pooled per-layer states of both towers.")
@click.option("--no-cache", is_flag=True, help="Re-embed even when cached embeddings exist (and do not write the cache).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None, metavar="OUT.npz",
              help="Write image, text, labels (+ layers) for `advisor signals --from-embeddings`.")
@json_option
def embed_command(model: str, pretrained: str | None, image_size: int | None, weights_dir: str | None, dataset: Any,
                  shots: int | None, seed: int, max_images: int | None, split: str, batch_size: int, device: str,
                  num_workers: int | None, with_layers: bool, no_cache: bool, quiet: bool, output: str | None,
                  as_json: bool) -> None:
    """Embed one split of a dataset with one model (one batched pass, cached on disk).

    \b
    advisor embed --model lit-offline --dataset mnist-5k --split test
    advisor embed --model ViT-B-32 --pretrained openai --dataset folder:./images -o emb.npz
    """
    from .embed import embed
    from .embeddings_file import write as write_embeddings
    from .specs import ModelSpec
    from .terminal import set_quiet

    set_quiet(quiet)
    import_torch()

    if shots is not None and shots < 1:
        raise click.BadParameter("must be at least 1", param_hint="--shots")
    if max_images is not None and max_images < 1:
        raise click.BadParameter("must be at least 1", param_hint="--max-images")
    emb = embed(ModelSpec(model, pretrained, image_size, weights_dir), dataset, split=split, shots=shots,
                seed=seed, max_images=max_images, device=device, batch_size=batch_size, num_workers=num_workers,
                use_cache=not no_cache, with_layers=with_layers, quiet=quiet)
    if output:
        write_embeddings(emb, output)
    m = emb.meta
    summary = {
        "model": model, "model_identity": m.get("model_identity"), "dataset": m.get("dataset"), "split": split,
        "split_hash": m.get("split_hash"), "n": int(emb.image.shape[0]), "d": int(emb.image.shape[1]),
        "classes": len(emb.class_names), "image_size": m.get("image_size"),
        "layers": [len(emb.image_layers or []), len(emb.text_layers or [])] if with_layers else None,
        "seconds": m.get("seconds"), "images_per_s": m.get("images_per_s"), "cache_hit": m.get("cache_hit"),
        "cache_key": m.get("cache_key"), "output": output,
    }
    if as_json:
        emit_json(summary)
        return
    print_table([{k: v for k, v in summary.items() if v is not None and k not in ("model_identity", "cache_key")}])


@cli.group(name="cache")
def cache_group() -> None:
    """The embedding cache (.npz files; `--no-cache` on embed/signals bypasses it)."""


@cache_group.command(name="path")
@json_option
def cache_path(as_json: bool) -> None:
    """Print the embedding cache directory (under the user cache dir; env ADVISOR_CACHE moves it,
    ADVISOR_CACHE_MAX_GB caps its size, least recently used files going first)."""
    from .cache import embeddings_dir, max_bytes, usage

    folder = embeddings_dir()
    if as_json:
        files, size = usage()
        emit_json({"path": str(folder), "files": files, "bytes": size, "max_bytes": max_bytes()})
        return
    click.echo(str(folder))


@cache_group.command(name="list")
@json_option
def cache_list(as_json: bool) -> None:
    """List cached embeddings: model, dataset, split, N x d, size."""
    from .cache import entries

    rows = entries()
    if as_json:
        emit_json(rows)
        return
    print_table([{**r, "key": r["key"][:12]} for r in rows],
                ["key", "model", "dataset", "split", "shots", "seed", "n", "d", "with_layers", "image_size", "bytes",
                 "last_used"])


@cache_group.command(name="clear")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Only embeddings not used for this long: 7d, 12h, 90m, 1d12h (no confirmation asked).")
@json_option
def cache_clear(yes: bool, older_than: str | None, as_json: bool) -> None:
    """Delete cached embeddings: all of them, or those unused for --older-than."""
    from .cache import clear, embeddings_dir, parse_duration

    seconds = parse_duration(older_than) if older_than is not None else None
    folder = embeddings_dir()
    if seconds is None and not yes and sys.stdin.isatty():
        click.confirm(f"Delete all cached embeddings in {folder}?", abort=True, err=True)
    n, freed = clear(older_than=seconds)
    if as_json:
        emit_json({"path": str(folder), "removed": n, "bytes_freed": freed, "older_than_s": seconds})
        return
    click.echo(f"Removed {n} file(s), {freed / 1e6:.1f} MB")


# ---------------------------------------------------------------------------------- signals


@cli.command(name="signals")
@model_options
@dataset_options
@click.option("--from-embeddings", "from_embeddings", default=None, metavar="FILE.npz",
              help="Precomputed embeddings (image (N,d), text (C,d), labels (N,); optional image_layers, "
                   "text_layers, paired_text). No model is loaded and nothing is stored.")
@click.option("--metric", "metric_names", multiple=True, metavar="NAME",
              help="Only these metrics (repeatable; default: every registered metric).")
@device_option
@click.option("--no-cache", is_flag=True, help="Re-embed even when cached embeddings exist.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--allow-random-weights", is_flag=True,
              help="Go on with a model whose weights are randomly initialised (refused otherwise; stored marked random).")
@db_option
@json_option
@click.pass_context
def signals_command(ctx: click.Context, model: str, pretrained: str | None, image_size: int | None,
                    weights_dir: str | None, dataset: Any, shots: int | None, seed: int, max_images: int | None,
                    from_embeddings: str | None, metric_names: tuple[str, ...], device: str, no_cache: bool,
                    quiet: bool, allow_random_weights: bool, db: str | None, as_json: bool) -> None:
    """Compute every registered signal for a model and dataset, and store them in the history.

    \b
    advisor signals --model lit-offline --dataset fashion-mnist --max-images 2000
    advisor signals --from-embeddings features.npz --json
    """
    from .embeddings_file import read as read_embeddings
    from .signals import run_metrics
    from .terminal import set_quiet

    set_quiet(quiet)
    if not from_embeddings:
        import_torch()
    names = list(metric_names) or None
    if from_embeddings:
        explicit = [f"--{p.replace('_', '-')}" for p in ("model", "pretrained", "image_size", "dataset", "shots", "max_images")
                    if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if explicit:
            raise click.UsageError(f"--from-embeddings cannot be combined with {', '.join(explicit)}")
        sig = run_metrics(read_embeddings(from_embeddings), names)
        info: dict[str, Any] = {"model": None, "dataset": None, "split_hash": None, "source": from_embeddings,
                                "stored": None}
    else:
        from .pair import prepare_pair
        from .specs import ModelSpec

        spec = ModelSpec(model, pretrained, image_size, weights_dir)
        pair = prepare_pair(spec, dataset, db=db, store=True, shots=shots, seed=seed, max_images=max_images,
                            device=device, use_cache=not no_cache, quiet=quiet, metrics=names,
                            allow_random_weights=allow_random_weights)
        sig = pair.signal_set
        info = {"model": spec.name, "dataset": dataset.name, "split_hash": pair.split_hash,
                "n_images": sig.meta.get("n_images"), **(pair.keys if pair.stored is not None else {}),
                "stored": pair.stored}

    if as_json:
        emit_json({**sig.to_json(), **info})
        return
    rows = [{"signal": k, "value": v, "version": sig.versions[k], "seconds": sig.seconds[k]}
            for k, v in sig.values.items()]
    print_table(rows, ["signal", "value", "version", "seconds"])
    for name, reason in sig.errors.items():
        click.echo(f"Warning: metric {name!r} failed: {reason}", err=True)
    for name, reason in sig.skipped.items():
        click.echo(f"Skipped metric {name!r}: {reason}", err=True)
    if info.get("stored") is not None:
        click.echo(f"Stored signal set {info['stored']} ({info['model']} on {info['dataset']}, split {info['split_hash']})",
                   err=True)


# ---------------------------------------------------------------------------------- run


def _parse_hparams(items: tuple[str, ...]) -> dict[str, Any]:
    """``--hparam key=value`` pairs; values parsed as JSON when possible (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--hparam")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class TunerHelpCommand(click.Command):
    """``advisor run --help`` ends with every registered tuner and the hyper-parameters it
    declares, read from the registrations when the help is shown (not at import)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .plugins import list_tuners
        from .specs import LOOP_HPARAMS

        with formatter.section("Methods (--method) and their hyper-parameters (--hparam KEY=VALUE)"):
            for t in list_tuners():
                mark = " [our reconstruction]" if t.reconstructed else ""
                formatter.write_text(f"{t.name}{mark}: {t.description}")
                with formatter.indentation():
                    formatter.write_dl([(h.name, h.describe()) for h in t.hparams]
                                       or [("-", "only the shared loop's")])
            formatter.write_text("Every method that uses the shared training loop also takes: "
                                 + ", ".join(h.name for h in LOOP_HPARAMS) + " (defaults per method).")
        super().format_epilog(ctx, formatter)


@cli.command(name="run", cls=TunerHelpCommand)
@model_options
@dataset_source_options
@click.option("--method", required=True, help="Fine-tuning method: a registered tuner (listed below and by `advisor plugins`).")
@shots_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the few-shot sample and training.")
@click.option("--epochs", type=int, default=None, help="Override the method's default epochs.")
@click.option("--lr", type=float, default=None, help="Override the method's default learning rate.")
@click.option("--batch-size", type=int, default=None)
@click.option("--hparam", "hparams", multiple=True, metavar="KEY=VALUE",
              help="A hyper-parameter the method declares (repeatable; listed below), e.g. alpha_target=0.5.")
@click.option("--alpha-target", type=float, default=None, hidden=True,
              help="Deprecated alias of --hparam alpha_target=X.")
@click.option("--ood", multiple=True, help="OOD reference dataset (repeatable; default: the other offline built-ins).")
@click.option("--max-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Test images of the dataset used for accuracy before and after (a fixed sample).")
@device_option
@click.option("--no-record", is_flag=True, help="Measure but do not write the run (nor its adapter file).")
@click.option("--adapters-dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Where the trained adapter goes (default: DB_STEM.adapters/ beside a SQLite history; "
                   "the history stores its path relative to this directory).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@mlflow_option
@db_option
@json_option
def run_command(model: str, pretrained: str | None, image_size: int | None, weights_dir: str | None, dataset: Any,
                method: str, shots: int, seed: int, epochs: int | None, lr: float | None, batch_size: int | None,
                hparams: tuple[str, ...], alpha_target: float | None, ood: tuple[str, ...], max_images: int, device: str, no_record: bool,
                adapters_dir: str | None, quiet: bool, db: str | None, as_json: bool) -> None:
    """Fine-tune for real, measure before/after (ID, OOD, gap) and record the run in the history."""
    from .runner import run_finetune, summarize
    from .specs import ModelSpec

    from .plugins import get_tuner

    extra = _parse_hparams(hparams)
    if alpha_target is not None:
        click.echo("Warning: --alpha-target is deprecated; use --hparam alpha_target=X", err=True)
        extra["alpha_target"] = alpha_target
    # Unknown methods, unknown hyper-parameters and bad values: one line, before any model loads.
    given = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    get_tuner(method).check_hparams({**{k: v for k, v in given.items() if v is not None}, **extra})
    from .terminal import TrainingProgress, set_quiet

    set_quiet(quiet)
    import_torch()
    training = TrainingProgress(quiet)  # status lines and bars on stderr, when it is a terminal
    try:
        run = run_finetune(
            ModelSpec(model, pretrained, image_size, weights_dir), dataset, method,
            shots=shots, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, hparams=extra,
            ood=list(ood) if ood else None, device=device, db=db, max_test=max_images, record=not no_record,
            quiet=quiet, adapters_dir=adapters_dir, on_step=training,
        )
    finally:
        training.close()
    summary = summarize(run)
    if as_json:
        emit_json({**summary, "ood_before": run.ood_before, "ood_after": run.ood_after, "hparams": run.hparams})
        return
    print_table([{"measure": k, "value": v} for k, v in summary.items()], ["measure", "value"])
    ood_rows = [{"ood dataset": k, "before": run.ood_before[k], "after": run.ood_after[k],
                 "change": run.ood_after[k] - run.ood_before[k]} for k in run.ood_before]
    if ood_rows:
        click.echo()
        print_table(ood_rows)


# ---------------------------------------------------------------------------------- predictor / recommend / report


@cli.group(name="predictor")
def predictor_group() -> None:
    """Train, evaluate and inspect the learned predictor (LightGBM over the run history)."""


def _print_lodo(scores: dict[str, Any]) -> None:
    """The per-target table, the calibration and the recommender table of a held-out evaluation."""
    holdout = scores.get("holdout") or "dataset"
    targets = scores.get("targets") or {}
    noise = scores.get("seed_noise") or {}
    if targets:
        click.echo(f"Leave-one-{holdout}-out, per target (predicted vs measured over held-out runs):")
        rows = []
        for t, v in targets.items():
            floor = (noise.get(t) or {}).get("mad")
            rows.append({"target": t, "spearman": v.get("spearman"), "mae": v.get("mae"),
                         "seed-noise MAE": floor if floor is not None else "n/a",
                         f"coverage @{v.get('interval', 0.8):.0%}": v.get("coverage"),
                         "median width": v.get("median_width"), "n": v.get("n")})
        print_table(rows)
        if noise and not noise.get("configurations"):
            click.echo("Seed noise: n/a (no configuration in the history was run with more than one seed).")
    calibration = scores.get("calibration") or {}
    if calibration:
        click.echo("")
        click.echo("Interval calibration (empirical coverage of held-out runs at each nominal level):")
        levels = [c["level"] for c in next(iter(calibration.values()))]
        print_table([{"target": t, **{f"{lv:.0%}": c["coverage"] for lv, c in zip(levels, cs)}}
                     for t, cs in calibration.items()])
    baselines = scores.get("baselines") or []
    if baselines:
        click.echo("")
        click.echo("Predictor and baselines on the same folds: Spearman (rho) and MAE over held-out runs:")
        short = {"id_gain": "gain", "ood_change": "ood", "cost": "cost"}
        print_table([{"name": b["name"], **{f"{short[t]} {k}": b.get(f"{t}_{m}") for t in short
                                            for k, m in (("rho", "spearman"), ("MAE", "mae"))}} for b in baselines])
        click.echo("")
        click.echo("Choosing per held-out (model, dataset, shots) group (regret in accuracy units, 0.01 = 1 point):")
        print_table([{"name": b["name"], "top-1 gain": b.get("top1_gain"), "regret gain": b.get("regret_gain"),
                      "top-1 balanced": b.get("top1_balanced"), "regret balanced": b.get("regret_balanced"),
                      "groups": b.get("groups_gain")} for b in baselines])


@predictor_group.command(name="train")
@db_option
@json_option
def predictor_train(db: str | None, as_json: bool) -> None:
    """Fit the predictor on every run in the history, score it leave-one-dataset-out, store it."""
    from .history import open_history
    from .predictor import train_predictor

    info = train_predictor(open_history(db))
    if as_json:
        emit_json(info)
        return
    click.echo(
        f"Trained predictor {info['name']!r} on {info['n_runs']} runs over {len(info['datasets'])} datasets "
        f"({info['n_features']} features; signals: {', '.join(info['signals']) or 'none'})."
    )
    click.echo(f"Shots monotone for: {', '.join(info['scores'].get('monotone_shots') or []) or 'no target'}.")
    click.echo("")
    _print_lodo(info["scores"])


@predictor_group.command(name="evaluate")
@click.option("--holdout", type=click.Choice(["dataset", "source", "tower"]), default="dataset", show_default=True,
              help="What one fold leaves out: a dataset, the source of its images (else the dataset name), or the "
                   "model's image tower (else its family).")
@db_option
@json_option
def predictor_evaluate(holdout: str, db: str | None, as_json: bool) -> None:
    """Held-out scores of the predictor and of the baselines (best single method, zero-shot-only,
    IIMM-only linear fit, kNN on signals, random) in one loop: Spearman, MAE, interval coverage,
    top-1 and regret, beside the history's seed noise."""
    from .history import open_history
    from .predictor import evaluate

    ev = evaluate(open_history(db).training_rows(), holdout=holdout)
    if as_json:
        emit_json(ev)
        return
    click.echo(f"{ev['n_runs']} runs; {ev['n_held_out']} {holdout}s held out one at a time.")
    click.echo("")
    _print_lodo(ev)


@predictor_group.command(name="show")
@db_option
@json_option
def predictor_show(db: str | None, as_json: bool) -> None:
    """The stored predictor: when it was trained, on what, its features and its scores."""
    from .errors import PredictorError
    from .history import open_history
    from .predictor import FittedPredictor, training_hash

    history = open_history(db)
    from .predictor import DEFAULT_PREDICTOR

    stored = history.load_predictor(DEFAULT_PREDICTOR)
    if stored is None:
        raise PredictorError("no predictor stored in this history; run `advisor predictor train`")
    est = FittedPredictor.from_stored(stored)
    rows = history.training_rows()
    info = {
        "name": DEFAULT_PREDICTOR,
        "created_at": stored.get("created_at"),
        "n_runs": est.n_runs,
        "datasets": est.datasets,
        "training_hash": stored.get("training_hash"),
        "up_to_date": training_hash(rows) == est.training_hash,
        "features": list(stored.get("features") or []),
        "params": est.params,
        "spaces": est.spaces,
        "support": est.support.to_dict() if est.support else None,
        "scores": stored.get("scores") or {},
    }
    if as_json:
        emit_json(info)
        return
    click.echo(f"Predictor {info['name']!r}, trained {info['created_at']} on {info['n_runs']} runs "
               f"({', '.join(info['datasets'])}); training hash {info['training_hash']}.")
    click.echo("Up to date with the history." if info["up_to_date"]
               else f"The history changed since ({len(rows)} runs now): run `advisor predictor train`.")
    click.echo(f"Features ({len(info['features'])}): {', '.join(info['features'])}")
    click.echo("")
    _print_lodo(info["scores"])


def _interval(v: Any, lo: Any, hi: Any, fmt: str = "{:+.3f}") -> str:
    if v is None:
        return ""
    s = fmt.format(v)
    return s if lo is None or hi is None else f"{s} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _contributions(a: Any) -> str:
    """``base +0.100 + method=lora +0.030 ... + 40 others -0.002`` (adds up to the ID gain)."""
    if a.contribution_base is None:
        return ""
    parts = [f"base {a.contribution_base:+.3f}"] + [f"{f} {v:+.3f}" for f, v in a.contributions]
    if a.contribution_other is not None:
        parts.append(f"others {a.contribution_other:+.3f}")
    return " ".join(parts[:1] + [f"+ {p}" for p in parts[1:]])


@cli.command(name="recommend")
@model_options
@dataset_source_options
@shots_option
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Cap on images embedded when the pair's signals must be computed (default 2000, seed 0).")
@click.option("--objective", type=click.Choice(["gain", "balanced", "retain"]), default="balanced", show_default=True,
              help="gain: largest in-domain gain; balanced: gain + OOD change; retain: least forgetting among gainers.")
@click.option("--max-forgetting", type=float, default=None, metavar="X",
              help="Drop methods whose predicted mean OOD accuracy drop exceeds X (accuracy units: 0.02 = 2 points).")
@click.option("--budget", type=float, default=None, metavar="SECONDS", help="Drop methods predicted to train longer than this.")
@click.option("--device", default="auto", show_default=True, envvar="ADVISOR_DEVICE", show_envvar=True,
              help="cpu, cuda, cuda:1 ... (auto: cuda when present; cost is predicted for the device the "
                   "history's runs used most, or for this one when given).")
@click.option("--from-embeddings", "from_embeddings", default=None, metavar="FILE.npz",
              type=click.Path(dir_okay=False),
              help="Your own embeddings (image (N,d), text (C,d), labels (N,)): signals from the file; descriptors from "
                   "its meta_json, else from --model / --dataset names. No model or dataset is loaded.")
@click.option("--allow-random-weights", is_flag=True,
              help="Go on with a model whose weights are randomly initialised (refused otherwise).")
@db_option
@json_option
def recommend_command(model: str, pretrained: str | None, image_size: int | None, weights_dir: str | None,
                      dataset: Any, shots: int, max_images: int | None, objective: str,
                      max_forgetting: float | None, budget: float | None, device: str,
                      from_embeddings: str | None, allow_random_weights: bool, db: str | None, as_json: bool) -> None:
    """Rank the fine-tuning methods for a model and dataset, with predicted gain, forgetting,
    cost, their uncertainty and the signals behind them (signals use seed 0, as the history's)."""
    from .recommendation import recommend
    from .specs import ModelSpec
    from .terminal import set_quiet

    set_quiet(as_json)

    rec = recommend(
        ModelSpec(model, pretrained, image_size, weights_dir), dataset, db=db, objective=objective,
        max_forgetting=max_forgetting, budget=budget, shots=shots,
        device=None if device == "auto" else device, max_images=max_images, quiet=as_json, embeddings=from_embeddings,
        allow_random_weights=allow_random_weights,
    )
    if as_json:
        emit_json(rec.to_dict())
        return
    src = "learned predictor" if rec.source == "predictor" else "IIMM heuristic (cold start)"
    sig = {"history": "signals from the history", "computed": "signals computed now and stored",
           "embeddings": "signals from the embeddings file (not stored)"}[rec.signals_source]
    click.echo(f"{rec.model} on {rec.dataset}, {rec.shots} shots, objective {rec.objective!r}; {sig}; ranking by the {src}.")
    level = f"{rec.interval:.0%}"
    rows = []
    for a in rec.methods:
        rows.append({
            "rank": a.rank,
            "method": a.method,
            f"ID gain [{level}]": _interval(a.id_gain, a.id_gain_lo, a.id_gain_hi),
            f"OOD change [{level}]": _interval(a.ood_change, a.ood_change_lo, a.ood_change_hi),
            "cost s" + (" (extrapolated)" if a.cost_extrapolated else ""): _interval(a.cost_s, a.cost_s_lo, a.cost_s_hi, "{:.0f}"),
            "ID gain = base + contributions": _contributions(a),
            "similar runs": a.support_runs,
            "note": a.excluded or "",
        })
    print_table(rows)
    if rec.out_of_support:
        click.echo("Outside the history (intervals widened): " + "; ".join(rec.out_of_support))
    for a in rec.methods:
        if a.similar_runs:
            click.echo(f"Similar runs of {a.method}: {'; '.join(a.similar_runs[:6])}"
                       + (f" and {len(a.similar_runs) - 6} more" if len(a.similar_runs) > 6 else ""))
    s = rec.support
    click.echo(f"History: {s['runs']} runs over {s['datasets']} datasets; {s['same_model_family']} with this model "
               f"family, {s['same_dataset']} on this dataset, {s['shared_domain']} on this dataset or one sharing a domain.")
    for w in rec.warnings:
        click.echo(f"Warning: {w}", err=True)
    for n in rec.notes:
        click.echo(f"Note: {n}", err=True)
    click.echo("")
    click.echo(rec.sentence)


@cli.command(name="report")
@db_option
@click.option("-o", "--output", "output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the HTML report.")
@json_option
def report_command(db: str | None, output: str, as_json: bool) -> None:
    """An HTML report: calibration, held-out predicted vs measured per target, gain vs cost per
    pair with intervals, every signal against measured gain, and the baseline table (PNG plots)."""
    from .report import write_report

    path = write_report(db, output)
    if as_json:
        emit_json({"path": str(path)})
        return
    click.echo(f"Wrote {path}")


# ---------------------------------------------------------------------------------- plugin commands


def _register_sweep_commands() -> None:
    from .sweep.cli import import_spool_command, refresh_signals_command, sweep_group

    cli.add_command(sweep_group)
    history_group.add_command(import_spool_command)
    history_group.add_command(refresh_signals_command)


_register_sweep_commands()


def _register_plugin_commands() -> None:
    from .plugins import register_commands

    register_commands(cli)  # a plugin that raises is reported by name; --help keeps working


_register_plugin_commands()
