"""``advisor recommend``: the ranked, explained methods for a pair."""

from __future__ import annotations

from typing import Any

import click

from ..cli_options import (
    DEFAULT_MODEL,
    dataset_source_options,
    db_option,
    emit_json,
    json_option,
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


def candidate_models(models: tuple[str, ...], pretrained: tuple[str, ...], image_size: tuple[int, ...],
                     weights_dir: str | None, models_file: str | None) -> list[Any]:
    """The ``ModelSpec`` of each candidate: ``--model`` (repeatable; ``--pretrained`` and
    ``--image-size`` pair with them by position, or one value serves every model), then the
    lines of ``--models-file`` (``NAME [PRETRAINED [IMAGE_SIZE]]``, ``#`` comments)."""
    from ..errors import RecommendError
    from ..specs import ModelSpec

    def paired(values: tuple[Any, ...], what: str) -> list[Any]:
        if not values:
            return [None] * len(models)
        if len(values) == 1:
            return list(values) * len(models)
        if len(values) != len(models):
            raise RecommendError(f"{len(values)} {what} values for {len(models)} --model values: give one, or one per model")
        return list(values)

    specs = [ModelSpec(m, p, s, weights_dir)
             for m, p, s in zip(models, paired(pretrained, "--pretrained"), paired(image_size, "--image-size"))]
    if models_file:
        try:
            lines = open(models_file, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RecommendError(f"--models-file {models_file}: {getattr(exc, 'strerror', None) or exc}") from None
        for n, line in enumerate(lines, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
                raise RecommendError(f"--models-file {models_file}:{n}: expected NAME [PRETRAINED [IMAGE_SIZE]], got {line.strip()!r}")
            specs.append(ModelSpec(parts[0], parts[1] if len(parts) > 1 and parts[1] != "-" else None,
                                   int(parts[2]) if len(parts) > 2 else None, weights_dir))
    if not specs:
        raise RecommendError("give a model (--model or --models-file)")
    return specs


@click.command(name="recommend")
@click.option("--weights-dir", "weights_dir", default=None, metavar="DIR",
              help="Where open_clip / Hugging Face model weights are downloaded to and looked up (default: their own caches).")
@click.option("--image-size", "image_size", type=click.IntRange(min=1), multiple=True,
              help="Working resolution in pixels (default: the model's); one per --model, or one for all.")
@click.option("--pretrained", "pretrained", multiple=True,
              help="open_clip pretrained tag or checkpoint path; one per --model, or one for all.")
@click.option("--model", "models", multiple=True, default=[DEFAULT_MODEL], show_default=True, envvar="ADVISOR_MODEL",
              show_envvar=True, help="Model name: lit-offline, an open_clip architecture, hf-hub:ORG/REPO, or a checkpoint. "
                                     "Repeat it to rank several candidate models together.")
@click.option("--models-file", "models_file", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="More candidate models, one per line: NAME [PRETRAINED [IMAGE_SIZE]] (use - for no tag).")
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
@click.option("--hparam", "hparams", multiple=True, metavar="[METHOD:]NAME=VALUE",
              help="Pin a hyper-parameter instead of searching it (lr=1e-3 for every method that has one, "
                   "lora:lr=1e-3 for one); a value the history never ran is predicted and flagged. Repeatable.")
@click.option("--probe", "probe", is_flag=False, flag_value=1, default=None, type=click.IntRange(min=1), metavar="[K]",
              help="Before predicting, run each candidate's first K epochs (default 1) of its real schedule on your "
                   "shots; the partial curves feed the predictor, and a run that fits the budget is measured.")
@click.option("--probe-budget", "probe_budget", type=float, default=None, metavar="SECONDS",
              help="Seconds all probes may take together, shared over the methods; a method whose whole run fits "
                   "its share is run in full and measured (default: no limit, K epochs each, nothing run in full).")
@quiet_option
@db_option
@json_option
def recommend_command(models: tuple[str, ...], pretrained: tuple[str, ...], image_size: tuple[int, ...],
                      weights_dir: str | None, models_file: str | None, dataset: Any, shots: int,
                      max_images: int | None, objective: str, max_forgetting: float | None, budget: float | None,
                      device: str, from_embeddings: str | None, allow_random_weights: bool,
                      hparams: tuple[str, ...], probe: int | None, probe_budget: float | None, quiet: bool,
                      db: str | None, as_json: bool) -> None:
    """Rank the fine-tuning plans for a dataset: which model (several --model), which method
    and which configuration (learning rate, epochs), with predicted gain, forgetting, cost,
    their uncertainty and the signals behind them (signals use seed 0, as the history's). Each
    method's configurations are searched within what the history ran; the answer ends with
    what more labels would buy and the `advisor run` command that trains the plan."""
    from ..recommendation import recommend_request
    from ..specs import RecommendRequest
    from ..terminal import set_quiet

    set_quiet(as_json or quiet)
    specs = candidate_models(models, pretrained, image_size, weights_dir, models_file)
    request = RecommendRequest(
        specs[0], dataset, db=db, objective=objective,
        max_forgetting=max_forgetting, budget=budget, shots=shots, device=device, max_images=max_images,
        quiet=as_json or quiet, embeddings=from_embeddings, allow_random_weights=allow_random_weights,
        other_models=tuple(specs[1:]), hparams=hparams, probe=probe, probe_budget=probe_budget,
    )
    rec = recommend_request(request)
    command = rec.run_command(None, None if from_embeddings else dataset.name)
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
    models = " and ".join(rec.models) if len(rec.models) > 1 else rec.model
    click.echo(f"{models} on {rec.dataset}, {rec.shots} shots, objective {rec.objective!r} ({score}); {sig}; "
               f"ranking by the {src}.")
    level = f"{rec.interval:.0%}"
    several = len(rec.models) > 1
    win = rec.advice(rec.winner_key)
    chosen = win.key if win is not None and rec.methods and rec.methods[0] is not win else None
    rows = []
    for a in rec.methods:
        rows.append({
            "#": a.rank,
            **({"model": a.model} if several else {}),
            "method": a.method + ("*" if a.key == chosen else "") + {"measured": " =", "probed": " ~"}.get(a.basis, ""),
            f"ID gain [{level}]": _interval(a.id_gain, a.id_gain_lo, a.id_gain_hi),
            f"OOD change [{level}]": _interval(a.ood_change, a.ood_change_lo, a.ood_change_hi),
            "score": "" if a.score is None or a.id_gain is None else f"{a.score:+.3f}",
            "cost s": _interval(a.cost_s, a.cost_s_lo, a.cost_s_hi, "{:.0f}"),
            "epochs, lr": _config(a.hparams) + ("!" if a.out_of_support else ""),
        })
    print_table(rows)
    if any(a.basis != "predicted" for a in rec.methods):
        click.echo("~ predicted from its probe's first epochs too; = measured: its whole run fitted the probe budget.")
    if chosen is not None:
        click.echo(f"* recommended: {chosen}, the cheapest of the methods that cannot be told apart from the first.")
    for a in rec.methods:
        if a.excluded:
            click.echo(f"Excluded: {a.key}: {a.excluded}.")
    if any(a.cost_extrapolated for a in rec.methods):
        click.echo(f"Costs are extrapolated: the history has no runs on device {rec.device!r}.")
    if any(a.configurations_searched for a in rec.methods):
        n = sum(a.configurations_searched for a in rec.methods)
        click.echo(f"Each method's row is its best predicted configuration of {n} searched (those the history ran "
                   "it with, and its declared learning-rate range within the history's; every hyper-parameter and "
                   "the alternatives in --json).")
    for a in rec.methods:
        for text in a.out_of_support:
            click.echo(f"! {a.key}: {text} (predicted anyway, interval widened).")
    explained = [a for a in rec.methods if a.contribution_base is not None]
    if explained:
        click.echo("ID gain = base + the features that moved it most + the others:")
        for a in explained:
            click.echo(f"  {a.key}: {_contributions(a)}")
    if rec.anchor_sentence():
        click.echo(rec.anchor_sentence())
    if rec.out_of_support:
        click.echo("Outside the history (intervals widened): " + "; ".join(rec.out_of_support))
    for a in rec.methods:
        if a.similar_runs:
            click.echo(f"Similar runs of {a.key}: {_similar(a.similar_runs)}")
    _print_shots_curve(rec, level)
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


def _print_shots_curve(rec: Any, level: str) -> None:
    """What more labels buy: the recommended configuration at each shot count, as a table."""
    if not rec.shots_curve:
        return
    run = rec.advice(rec.run_key)
    click.echo(f"What more labels buy ({rec.model} + {rec.run_method} at epochs, lr "
               f"{_config(run.hparams) if run is not None else '?'}), predicted per shot count the history covers:")
    print_table([{"shots": p["shots"],
                  f"ID gain [{level}]": _interval(p["id_gain"], p["id_gain_lo"], p["id_gain_hi"]),
                  f"OOD change [{level}]": _interval(p["ood_change"], p["ood_change_lo"], p["ood_change_hi"]),
                  "cost s": _interval(p["cost_s"], p["cost_s_lo"], p["cost_s_hi"], "{:.0f}"),
                  "linear probe": "" if p.get("anchor_probe") is None else f"{p['anchor_probe']:.3f}"}
                 for p in rec.shots_curve])


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
