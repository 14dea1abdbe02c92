"""``advisor signals``: every registered signal for a pair (through ``advisor.pair``), or from an
embeddings file."""

from __future__ import annotations

from typing import Any

import click

from ..cli_options import (
    dataset_options,
    db_option,
    device_option,
    emit_json,
    import_torch,
    json_option,
    model_options,
    print_table,
)


@click.command(name="signals")
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
    from ..embeddings_file import read as read_embeddings
    from ..signals import run_metrics
    from ..terminal import set_quiet

    set_quiet(quiet)
    if not from_embeddings:
        import_torch()
    names = list(metric_names) or None
    if from_embeddings:
        explicit = [f"--{p.replace('_', '-')}" for p in ("model", "pretrained", "image_size", "dataset", "shots", "max_images")
                    if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if explicit:
            raise click.UsageError(f"--from-embeddings cannot be combined with {', '.join(explicit)}")
        # --device auto: where the file says the embeddings were made (CUDA when present here).
        sig = run_metrics(read_embeddings(from_embeddings), names, device=None if device == "auto" else device)
        info: dict[str, Any] = {"model": None, "dataset": None, "split_hash": None, "source": from_embeddings,
                                "stored": None}
    else:
        from ..pair import prepare_pair
        from ..specs import ModelSpec

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
