"""``advisor run``: one fine-tuning run, measured and recorded; ``--help`` lists the tuners and
their hyper-parameters."""

from __future__ import annotations

import json
from typing import Any

import click

from ..cli_options import (
    dataset_source_options,
    db_option,
    device_option,
    emit_json,
    import_torch,
    json_option,
    mlflow_option,
    model_options,
    print_table,
    quiet_option,
    shots_option,
)


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
        from ..plugins import list_tuners
        from ..specs import LOOP_HPARAMS

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


@click.command(name="run", cls=TunerHelpCommand)
@model_options
@dataset_source_options
@click.option("--method", required=True, help="Fine-tuning method: a registered tuner (listed below and by `advisor plugins`).")
@shots_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the few-shot sample and training.")
@click.option("--epochs", type=int, default=None,
              help="Override the method's default epochs (at most 100000; `advisor recommend` prints the history's).")
@click.option("--lr", type=float, default=None, help="Override the method's default learning rate (at most 10).")
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
@quiet_option
@mlflow_option
@db_option
@json_option
def run_command(model: str, pretrained: str | None, image_size: int | None, weights_dir: str | None, dataset: Any,
                method: str, shots: int, seed: int, epochs: int | None, lr: float | None, batch_size: int | None,
                hparams: tuple[str, ...], alpha_target: float | None, ood: tuple[str, ...], max_images: int, device: str, no_record: bool,
                adapters_dir: str | None, quiet: bool, db: str | None, as_json: bool) -> None:
    """Fine-tune for real, measure before/after (ID, OOD, gap) and record the run in the history.

    Refused before anything loads: a seed outside 0..2147483647 (the history's column), more
    than 100000 epochs, lr above 10, an option given twice with two values (--epochs 1 --hparam
    epochs=3), an OOD set that is the dataset or shares its source, an adapters directory that
    cannot be written. A training whose loss becomes NaN is an error, not a run. A measured run
    is never lost: when the history cannot be written it goes to the spool, and when the spool
    cannot be written either its JSON is printed on stderr; an adapter that cannot be written
    after training is a warning and the run is recorded without it."""
    from ..run_checks import check_request
    from ..runner import run_request, summarize
    from ..specs import ModelSpec, RunRequest

    extra = _parse_hparams(hparams)
    if alpha_target is not None:
        click.echo("Warning: --alpha-target is deprecated; use --hparam alpha_target=X", err=True)
        extra["alpha_target"] = alpha_target
    request = RunRequest(ModelSpec(model, pretrained, image_size, weights_dir), dataset, method, shots=shots,
                         seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, hparams=extra, ood=ood or None,
                         device=device, db=db, max_test=max_images, record=not no_record, quiet=quiet,
                         adapters_dir=adapters_dir)
    # Unknown methods, unknown hyper-parameters and bad values: one line, before any model loads.
    checked = check_request(request)
    from ..terminal import TrainingProgress, set_quiet

    set_quiet(quiet)
    import_torch()
    training = TrainingProgress(quiet)  # status lines and bars on stderr, when it is a terminal
    try:
        run = run_request(checked, on_step=training)
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
