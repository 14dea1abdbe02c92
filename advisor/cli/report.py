"""``advisor report``: the HTML report of the history and the predictor, or the user's own plan."""

from __future__ import annotations

from typing import Any

import click

from ..cli_options import (
    db_option,
    emit_json,
    json_option,
    quiet_option,
)
from ..decision import OBJECTIVES

#: Options that describe a plan to ask for: refused without --model, and with --from-json.

@click.command(name="report")
@db_option
@click.option("-o", "--output", "output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the HTML report.")
@click.option("--model", "models", multiple=True, metavar="MODEL",
              help="Write the plan page for this model and --dataset instead of the history report (repeat for "
                   "several candidate models).")
@click.option("--pretrained", multiple=True,
              help="open_clip pretrained tag or checkpoint path; one per --model, or one for all (as recommend's).")
@click.option("--dataset", default=None, metavar="DATASET",
              help="The plan's dataset (with --model): a registered name, folder:PATH, csv:PATH, or torchvision:NAME.")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="The plan's training images per class (with --model; default 16, as recommend's).")
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), default=None,
              help="The plan's objective (with --model; default balanced, as recommend's).")
@click.option("--max-forgetting", type=float, default=None, metavar="X",
              help="The plan drops methods predicted to lose more mean OOD accuracy than X (with --model).")
@click.option("--budget", type=float, default=None, metavar="SECONDS",
              help="The plan drops methods predicted to train longer than this (with --model).")
@click.option("--allow-random-weights", is_flag=True,
              help="Go on with a model whose weights are randomly initialised (with --model).")
@click.option("--probe", "probe", is_flag=False, flag_value=1, default=None, type=click.IntRange(min=1), metavar="[K]",
              help="Probe each candidate's first K epochs (default 1) on your shots before predicting, as "
                   "`advisor recommend --probe` (with --model).")
@click.option("--from-json", "from_json", default=None, metavar="FILE.json", type=click.Path(),
              help="Write the plan page of a saved recommendation (the output of `advisor recommend --json`; "
                   "- reads it from standard input).")
@click.option("--with-history", is_flag=True,
              help="Append the history report to the plan page, your pair's panel first (its held-out evaluation "
                   "takes minutes).")
@quiet_option
@json_option
def report_command(db: str | None, output: str, models: tuple[str, ...], pretrained: tuple[str, ...],
                   dataset: str | None, shots: int | None, objective: str | None, max_forgetting: float | None,
                   budget: float | None, allow_random_weights: bool, probe: int | None, from_json: str | None,
                   with_history: bool, quiet: bool, as_json: bool) -> None:
    """An HTML report: calibration, held-out predicted vs measured per target, gain vs cost per
    pair with intervals, every signal against measured gain, and the baseline table (PNG plots).

    With --model M --dataset D (as `advisor recommend` takes them), or --from-json of a saved
    `advisor recommend --json`, it is the page of your own plan instead: each candidate's
    predicted gain against cost with intervals, the shots curve, the anchors and probes behind
    the numbers, and the table of candidates with their `advisor run` commands.
    Progress goes to stderr on a terminal."""
    from ..report import check_output, write_html, write_report
    from ..terminal import phase, set_quiet

    given = [k for k, v in dict(pretrained=pretrained, dataset=dataset, shots=shots, objective=objective,
                                max_forgetting=max_forgetting, budget=budget, allow_random_weights=allow_random_weights,
                                probe=probe).items() if v not in (None, False, ())]
    if models and from_json:
        raise click.UsageError("give either --model (ask for a plan now) or --from-json (a saved plan), not both")
    if given and not models:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise click.UsageError(f"{names} describe a plan to ask for: give --model too"
                               + (" (a --from-json plan is rendered as it was asked)" if from_json else ""))
    if with_history and not (models or from_json):
        raise click.UsageError("--with-history adds the history to a plan page: give --model or --from-json")
    if models and dataset is None:
        raise click.UsageError("--model needs --dataset: the plan is for a (model, dataset) pair")
    if not (models or from_json):
        with phase(f"building the report {output}"):
            path = write_report(db, output)
    else:
        set_quiet(as_json or quiet)
        path = check_output(output)  # refused before the recommendation's work
        model_args: dict[str, list[str]] = {}
        if from_json:
            from ..plan_report import load_recommendation

            rec, origin = load_recommendation(from_json), f"the saved recommendation {from_json}"
        else:
            from .recommend import candidate_models

            specs = candidate_models(models, pretrained, (), None, None)
            model_args = {spec.label(): spec.cli_args() for spec in specs}
            rec = _ask(specs, dataset, db, quiet=as_json or quiet, shots=16 if shots is None else shots,
                       objective=objective or "balanced", max_forgetting=max_forgetting, budget=budget,
                       allow_random_weights=allow_random_weights, probe=probe)
            origin = "`advisor recommend` asked now"
        with phase(f"building the plan page {output}"):
            path = write_html(path, _plan_page(rec, origin, db, with_history, model_args))
    if as_json:
        emit_json({"path": str(path)})
        return
    click.echo(f"Wrote {path}")


def _ask(specs: list[Any], dataset: str, db: str | None, **terms: Any) -> dict[str, Any]:
    """``advisor recommend --json`` for the plan (the candidate models ranked on one scale), as
    a plain dict, its run command included."""
    import json

    from ..data import dataset_spec
    from ..recommendation import recommend_request
    from ..specs import RecommendRequest

    request = RecommendRequest(specs[0], dataset_spec(dataset), db=db, other_models=tuple(specs[1:]), **terms)
    rec = recommend_request(request)
    out = {**rec.to_dict(), "run_command": rec.run_command(None, request.dataset.name)}
    return json.loads(json.dumps(out, default=str))


def _plan_page(rec: dict[str, Any], origin: str, db: str | None, with_history: bool,
               model_args: dict[str, list[str]]) -> str:
    """The plan page; with the history report's sections after it, the plan's pair first."""
    from ..plan_report import build_plan_report

    history: list[str] = []
    if with_history:
        from ..history import open_history
        from ..predictor import DEFAULT_PREDICTOR
        from ..report import history_sections

        h = open_history(db, must_exist=True)
        history = history_sections(h.training_rows(), h.load_predictor(DEFAULT_PREDICTOR),
                                   first_pair=(str(rec["model"]), str(rec["dataset"]), rec.get("shots")))
    return build_plan_report(rec, origin=origin, history=history, model_args=model_args)
