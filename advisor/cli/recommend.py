"""``advisor recommend``: the ranked, explained methods for a pair."""

from __future__ import annotations

from typing import Any

import click

from ..cli_options import (
    dataset_source_options,
    db_option,
    emit_json,
    json_option,
    model_options,
    print_table,
    quiet_option,
    shots_option,
)
from ..decision import OBJECTIVES


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


@click.command(name="recommend")
@model_options
@dataset_source_options
@shots_option
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Cap on images embedded when the pair's signals must be computed (default 2000, seed 0).")
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), default="balanced", show_default=True,
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
@quiet_option
@db_option
@json_option
def recommend_command(model: str, pretrained: str | None, image_size: int | None, weights_dir: str | None,
                      dataset: Any, shots: int, max_images: int | None, objective: str,
                      max_forgetting: float | None, budget: float | None, device: str,
                      from_embeddings: str | None, allow_random_weights: bool, quiet: bool, db: str | None,
                      as_json: bool) -> None:
    """Rank the fine-tuning methods for a model and dataset, with predicted gain, forgetting,
    cost, their uncertainty and the signals behind them (signals use seed 0, as the history's).
    Each prediction is for the configuration the history ran the method with (its epochs and
    lr in the table, every hyper-parameter in --json); the answer ends with the `advisor run`
    command that trains it."""
    from ..recommendation import recommend_request
    from ..specs import ModelSpec, RecommendRequest
    from ..terminal import set_quiet

    set_quiet(as_json or quiet)
    request = RecommendRequest(
        ModelSpec(model, pretrained, image_size, weights_dir), dataset, db=db, objective=objective,
        max_forgetting=max_forgetting, budget=budget, shots=shots, device=device, max_images=max_images,
        quiet=as_json or quiet, embeddings=from_embeddings, allow_random_weights=allow_random_weights,
    )
    rec = recommend_request(request)
    model_args = ["--model", model] + (["--pretrained", pretrained] if pretrained else []) \
        + (["--image-size", str(image_size)] if image_size else [])
    command = rec.run_command(model_args, None if from_embeddings else dataset.name)
    if as_json:
        emit_json({**rec.to_dict(), "run_command": command})
        return
    _print_recommendation(rec, command)


def _print_recommendation(rec: Any, command: str | None) -> None:
    """The ranked table, what it rests on, the warnings and notes, the sentence and the run command."""
    src = {"predictor": "learned predictor", "anchor-prior": "anchor and per-method priors (cold start)"}.get(
        rec.source, "IIMM heuristic (cold start)")
    sig = {"history": "signals from the history", "computed": "signals computed now and stored",
           "embeddings": "signals from the embeddings file (not stored)"}[rec.signals_source]
    score = {"gain": "score = ID gain", "balanced": "score = ID gain + OOD change",
             "retain": "score = OOD change"}[rec.objective]
    click.echo(f"{rec.model} on {rec.dataset}, {rec.shots} shots, objective {rec.objective!r} ({score}); {sig}; "
               f"ranking by the {src}.")
    level = f"{rec.interval:.0%}"
    chosen = rec.winner if rec.winner is not None and rec.methods and rec.methods[0].method != rec.winner else None
    rows = []
    for a in rec.methods:
        rows.append({
            "#": a.rank,
            "method": a.method + ("*" if a.method == chosen else ""),
            f"ID gain [{level}]": _interval(a.id_gain, a.id_gain_lo, a.id_gain_hi),
            f"OOD change [{level}]": _interval(a.ood_change, a.ood_change_lo, a.ood_change_hi),
            "score": "" if a.score is None or a.id_gain is None else f"{a.score:+.3f}",
            "cost s": _interval(a.cost_s, a.cost_s_lo, a.cost_s_hi, "{:.0f}"),
            "epochs, lr": _config(a.hparams),
        })
    print_table(rows)
    if chosen is not None:
        click.echo(f"* recommended: {chosen}, the cheapest of the methods that cannot be told apart from the first.")
    for a in rec.methods:
        if a.excluded:
            click.echo(f"Excluded: {a.method}: {a.excluded}.")
    if any(a.cost_extrapolated for a in rec.methods):
        click.echo(f"Costs are extrapolated: the history has no runs on device {rec.device!r}.")
    if any(a.hparams for a in rec.methods):
        click.echo(f"Each prediction is for the method's configuration in the history at {rec.shots} shots "
                   "(epochs, lr above; every hyper-parameter in --json).")
    explained = [a for a in rec.methods if a.contribution_base is not None]
    if explained:
        click.echo("ID gain = base + the features that moved it most + the others:")
        for a in explained:
            click.echo(f"  {a.method}: {_contributions(a)}")
    if rec.anchor_sentence():
        click.echo(rec.anchor_sentence())
    if rec.out_of_support:
        click.echo("Outside the history (intervals widened): " + "; ".join(rec.out_of_support))
    for a in rec.methods:
        if a.similar_runs:
            click.echo(f"Similar runs of {a.method}: {_similar(a.similar_runs)}")
    s = rec.support
    click.echo(f"History: {s['runs']} runs over {s['datasets']} datasets; {s['same_model_family']} with this model "
               f"family, {s['same_dataset']} on this dataset, {s['shared_domain']} on this dataset or one sharing a domain.")
    for w in rec.warnings:
        click.echo(f"Warning: {w}", err=True)
    for n in rec.notes:
        click.echo(f"Note: {n}", err=True)
    click.echo("")
    click.echo(rec.sentence)
    if command is not None and rec.run_hparams:
        lead = "To measure it anyway" if rec.keep_zero_shot else "To run it with the configuration predicted"
        if rec.keep_zero_shot or rec.winner is None:
            lead = f"To measure {rec.run_method} anyway (the configuration predicted)"
        click.echo(f"{lead}: {command}")


def _config(hparams: dict[str, Any]) -> str:
    """``20, 0.002``: the epochs and learning rate of a prediction's configuration."""
    if not hparams:
        return ""
    values = [hparams.get("epochs"), hparams.get("lr")]
    return ", ".join("?" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _similar(labels: list[str], shown: int = 6) -> str:
    """Labels of similar runs, identical ones counted once (``... x2``), the first ``shown``."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    items = [f"{k} x{n}" if n > 1 else k for k, n in counts.items()]
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more
