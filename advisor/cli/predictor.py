"""The ``advisor predictor`` group: train, evaluate, show."""

from __future__ import annotations

from typing import Any

import click

from ..cli_options import (
    db_option,
    emit_json,
    json_option,
    quiet_option,
    table_lines,
)


@click.group(name="predictor")
def predictor_group() -> None:
    """Train, evaluate and inspect the learned predictor (LightGBM over the run history)."""


def scores_text(scores: dict[str, Any]) -> str:
    """The per-target table, the calibration and the recommender table of a held-out evaluation
    (what ``predictor train``, ``evaluate`` and ``show`` print; ``scripts/readme_results.py``
    renders the README's copy of ``evaluate`` with it from the ``--json`` document)."""
    out: list[str] = []
    holdout = scores.get("holdout") or "dataset"
    targets = scores.get("targets") or {}
    noise = scores.get("seed_noise") or {}
    if targets:
        out.append(f"{holdout_title(holdout)}, per target (predicted vs measured over held-out runs):")
        rows = []
        for t, v in targets.items():
            floor = (noise.get(t) or {}).get("mad")
            rows.append({"target": t, "spearman": v.get("spearman"), "mae": v.get("mae"),
                         "bias": v.get("bias") if v.get("bias") is not None else "n/a",
                         "seed-noise MAE": floor if floor is not None else "n/a",
                         f"coverage @{v.get('interval', 0.8):.0%}": v.get("coverage"),
                         "median width": v.get("median_width"), "n": v.get("n")})
        out += table_lines(rows)
        if noise and not noise.get("configurations"):
            out.append("Seed noise: n/a (no configuration in the history was run with more than one seed).")
    calibration = scores.get("calibration") or {}
    if calibration:
        out += ["", "Interval calibration (empirical coverage of held-out runs at each nominal level):"]
        levels = [c["level"] for c in next(iter(calibration.values()))]
        out += table_lines([{"target": t, **{f"{lv:.0%}": c["coverage"] for lv, c in zip(levels, cs)}}
                            for t, cs in calibration.items()])
    baselines = scores.get("baselines") or []
    if baselines:
        out += ["", "Predictor and baselines on the same folds: Spearman (rho) and MAE over held-out runs:"]
        short = {"id_gain": "gain", "ood_change": "ood", "cost": "cost"}
        out += table_lines([{"name": b["name"], **{f"{short[t]} {k}": b.get(f"{t}_{m}") for t in short
                                                   for k, m in (("rho", "spearman"), ("MAE", "mae"))}}
                            for b in baselines])
        out += ["", "Choosing per held-out (model, dataset, shots) group (regret in accuracy units, 0.01 = 1 point):"]
        out += table_lines([{"name": b["name"], "top-1 gain": b.get("top1_gain"), "regret gain": b.get("regret_gain"),
                             "top-1 balanced": b.get("top1_balanced"), "regret balanced": b.get("regret_balanced"),
                             "groups": b.get("groups_gain")} for b in baselines])
    return "\n".join(out)


def holdout_title(holdout: str) -> str:
    if holdout == "headroom":
        return "Headroom hold-out (trained on the pairs with the least headroom, tested on the top fifth)"
    return f"Leave-one-{holdout}-out"


def evaluation_text(ev: dict[str, Any], choices: bool = True) -> str:
    """What ``advisor predictor evaluate`` prints for its ``--json`` document ``ev``; with
    ``choices``, the configuration-choice and model-choice tables after the others."""
    holdout = ev.get("holdout") or "dataset"
    if holdout == "headroom":
        fold = (ev.get("folds") or [{}])[0]
        head = (f"{ev['n_runs']} runs; the pairs with {fold.get('held_out', 'the most headroom')} held out "
                f"({fold.get('n_test', 0)} runs), trained on the other {fold.get('n_train', 0)}.")
    else:
        head = f"{ev['n_runs']} runs; {ev['n_held_out']} {holdout}s held out one at a time."
    text = head + "\n\n" + scores_text(ev)
    if choices:
        text += "".join("\n\n" + t for t in (config_choice_text(ev), model_choice_text(ev)) if t)
    return text


def _choice_row(b: dict[str, Any], sub: str = "", normalised: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"name": b["name"]}
    for o, short in (("gain", "gain"), ("balanced", "bal.")):
        row[f"top-1 {short}"] = b.get(f"top1_{o}{sub}")
        row[f"regret {short}"] = b.get(f"regret_{o}{sub}")
        if normalised:
            row[f"norm. {short}"] = b.get(f"nregret_{o}{sub}")
    row["groups"] = b.get(f"groups_gain{sub}")
    return row


def config_choice_text(ev: dict[str, Any]) -> str:
    """The configuration-choice tables of an evaluation (``ev["config_choice"]``); empty
    without one."""
    cc = ev.get("config_choice") or {}
    if not cc.get("recommenders"):
        return ""
    varying = ", ".join(f"{m}: {', '.join(v)}" for m, v in (cc.get("varying_hparams") or {}).items() if v) or "none"
    out = [f"Choosing a (method, configuration) per held-out (model, dataset, shots) group "
           f"({(cc.get('n_groups') or {}).get('gain', 0)} groups; a configuration is a method with its values of "
           f"the hyper-parameters that vary among its runs: {varying}; seeds averaged). Constant rules are fitted "
           f"on the training folds; regret in accuracy units, norm. = regret / (best - worst measured) in the group:"]
    out += table_lines([_choice_row(b) for b in cc["recommenders"]])
    n_hp = (cc.get("n_groups_hp") or {}).get("gain", 0)
    if n_hp:
        out += ["", f"The same over the {n_hp} groups where a method ran with several configurations:"]
        out += table_lines([_choice_row(b, "_hp") for b in cc["recommenders"]])
    return "\n".join(out)


def model_choice_text(ev: dict[str, Any]) -> str:
    """The model-choice table of an evaluation (``ev["model_choice"]``); empty without one."""
    mc = ev.get("model_choice") or {}
    if not mc.get("recommenders"):
        return ""
    n = (mc.get("n_groups") or {}).get("gain", 0)
    if not n:
        return "Choosing the model: no held-out (dataset, shots) group has runs of two models."
    spread = mc.get("spread")
    n_res = mc.get("n_resolved", 0)
    resolved = (f"{n_res} group{'' if n_res == 1 else 's'} whose two best models' ID gains differ by more than the seed "
                f"spread ({spread:.3g}: the pooled seed standard deviation of ID gain over configurations run "
                f"with several seeds)" if spread is not None else "n/a: no configuration was run with several seeds")
    out = [f"Choosing the model per held-out (dataset, shots) group with several models ({n} groups): the model of "
           f"the best predicted (model, method, configuration); a model counts by its best measured configuration "
           f"(seeds averaged). Resolved: the {resolved}:"]
    rows = []
    for b in mc["recommenders"]:
        rows.append({"name": b["name"], "top-1 gain": b.get("top1_gain"), "regret gain": b.get("regret_gain"),
                     "top-1 gain resolved": b.get("top1_gain_resolved"),
                     "regret gain resolved": b.get("regret_gain_resolved"),
                     "top-1 bal.": b.get("top1_balanced"), "regret bal.": b.get("regret_balanced"),
                     "groups": b.get("groups_gain"), "resolved": b.get("groups_gain_resolved")})
    return "\n".join(out + table_lines(rows))


def probe_text(pc: dict[str, Any]) -> str:
    """What ``advisor predictor evaluate --probe K`` prints: the predictor without and with the
    probe, side by side, per K, then the constant rules on the same held-out groups (the
    configuration-choice rows of ``config_choice_text``) and whether each predictor's regret is
    below every one of them."""
    out: list[str] = []
    for p in pc["probe"]:
        k = p["probe_epochs"]
        cols = (("without probe", p["without"]), (f"with {k}-epoch probe", p["with"]))
        if out:
            out.append("")
        out.append(f"{holdout_title(pc['holdout'])}: both predictors trained on every run of the training folds "
                   f"({p.get('n_history', pc['n_runs'])} runs in all; with the probe, runs without a curve point at "
                   f"epoch {k} have no probe features), scored on the {p['n_runs']} held-out runs with a learning-curve "
                   f"point at epoch {k}" + _spread_note(p["without"]) + ":")
        rows = []
        for label, get in _PROBE_SCORES:
            rows.append({"score": label, **{c: get(ev) for c, ev in cols}})
        for o, short in (("gain", "gain"), ("balanced", "bal.")):
            rows.append({"score": f"config. regret below every constant rule ({short})",
                         **{c: _below_rules(ev, o) for c, ev in cols}})
        out += table_lines(rows)
        out += ["", _rules_title(p["without"], pc.get("cheapest_method"))]
        out += table_lines([_choice_row(b) for b in _rule_entries(p["without"])])
    return "\n".join(out)


def _rule_entries(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The constant rules' entries of an evaluation's configuration choice (every recommender
    that is not a per-run predictor or ``random``)."""
    predictors = {b["name"] for b in ev.get("baselines") or []}
    return [b for b in (ev.get("config_choice") or {}).get("recommenders") or []
            if b["name"] not in predictors and b["name"] != "random"]


def _below_rules(ev: dict[str, Any], objective: str) -> str | None:
    """``yes``/``no``: the predictor's configuration regret is below every constant rule's (on
    the same groups); with the closest rule and its regret."""
    mine = _predictor_entry(ev.get("config_choice")).get(f"regret_{objective}")
    rules = [(b[f"regret_{objective}"], b["name"]) for b in _rule_entries(ev) if b.get(f"regret_{objective}") is not None]
    if mine is None or not rules:
        return None
    best, name = min(rules)
    return f"{'yes' if mine < best else 'no'} ({name} {best:.3f})"


def _rules_title(ev: dict[str, Any], cheapest: str | None) -> str:
    n = ((ev.get("config_choice") or {}).get("n_groups") or {}).get("gain", 0)
    cheap = f"; always-{cheapest} is the cheapest" if cheapest else ""
    return (f"The constant rules on the same {n} held-out (model, dataset, shots) groups (fitted on the training "
            f"folds; the same with and without the probe{cheap}; regret in accuracy units):")


def _predictor_entry(section: dict[str, Any] | None) -> dict[str, Any]:
    return next((b for b in (section or {}).get("recommenders") or [] if b["name"] == "predictor"), {})


_PROBE_SCORES: tuple[tuple[str, Any], ...] = (
    ("ID-gain MAE", lambda ev: ev["targets"]["id_gain"]["mae"]),
    ("ID-gain Spearman", lambda ev: ev["targets"]["id_gain"]["spearman"]),
    ("ID-gain coverage", lambda ev: ev["targets"]["id_gain"]["coverage"]),
    ("OOD-change MAE", lambda ev: ev["targets"]["ood_change"]["mae"]),
    ("OOD-change Spearman", lambda ev: ev["targets"]["ood_change"]["spearman"]),
    ("cost MAE", lambda ev: ev["targets"]["cost"]["mae"]),
    ("method top-1 (gain)", lambda ev: next(b for b in ev["baselines"] if b["name"] == "predictor").get("top1_gain")),
    ("method regret (gain)", lambda ev: next(b for b in ev["baselines"] if b["name"] == "predictor").get("regret_gain")),
    ("method top-1 (gain, resolved)", lambda ev: _resolved(ev, "top1_gain")),
    ("method regret (gain, resolved)", lambda ev: _resolved(ev, "regret_gain")),
    ("configuration top-1 (gain)", lambda ev: _predictor_entry(ev.get("config_choice")).get("top1_gain")),
    ("configuration regret (gain)", lambda ev: _predictor_entry(ev.get("config_choice")).get("regret_gain")),
    ("configuration norm. regret (gain)", lambda ev: _predictor_entry(ev.get("config_choice")).get("nregret_gain")),
    ("model top-1 (gain)", lambda ev: _predictor_entry(ev.get("model_choice")).get("top1_gain")),
    ("model regret (gain)", lambda ev: _predictor_entry(ev.get("model_choice")).get("regret_gain")),
)


def _spread_note(ev: dict[str, Any]) -> str:
    spread = ev.get("method_spread")
    return "" if spread is None else (f" (resolved: the groups whose two best methods' ID gains differ by more than "
                                      f"the seed spread, {spread:.3g})")


def _resolved(ev: dict[str, Any], key: str) -> Any:
    """The predictor's method-choice score ``key`` over the groups whose best and second-best
    methods' ID gains differ by more than the seed spread, with the number of groups."""
    b = next(b for b in ev["baselines"] if b["name"] == "predictor")
    v, n = b.get(f"{key}_resolved"), b.get("groups_gain_resolved")
    return None if v is None else f"{v:.3g} ({n} groups)"


def parse_probe(values: tuple[str, ...]) -> list[int]:
    """``--probe 1 --probe 2,5`` -> [1, 2, 5] (positive epochs, each once, in order)."""
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part.isdigit() or int(part) < 1:
                raise click.BadParameter(f"{part!r} is not a positive number of epochs", param_hint="--probe")
            if int(part) not in out:
                out.append(int(part))
    return out


def ablation_text(ab: dict[str, Any]) -> str:
    """What ``advisor predictor evaluate --ablate`` prints for its ``--json`` document."""
    out = [f"{holdout_title(ab.get('holdout') or 'dataset')}: the predictor with each feature set on the same folds "
           f"({ab['n_runs']} runs; regret in accuracy units):"]
    out += table_lines([{"features": a["feature_set"], "gain MAE": a.get("id_gain_mae"),
                         "gain rho": a.get("id_gain_spearman"), "ood MAE": a.get("ood_change_mae"),
                         "ood rho": a.get("ood_change_spearman"), "top-1 gain": a.get("top1_gain"),
                         "regret gain": a.get("regret_gain"), "top-1 bal.": a.get("top1_balanced"),
                         "regret bal.": a.get("regret_balanced")} for a in ab["ablation"]])
    return "\n".join(out)


@predictor_group.command(name="train")
@click.option("--probe", "probe", type=click.IntRange(min=1), default=None, metavar="K",
              help="Also learn from the first K epochs of each run's learning curve (probe features: what "
                   "`advisor recommend --probe` measures); stored as the predictor `probe-K`, beside `default`. "
                   "Runs without a curve take part with those features missing.")
@quiet_option(expose=False)
@db_option
@json_option
def predictor_train(probe: int | None, db: str | None, as_json: bool) -> None:
    """Fit the predictor on every run in the history, score it leave-one-dataset-out, store it.
    Progress (phases, one step per held-out fold) goes to stderr on a terminal."""
    from ..history import open_history
    from ..predictor import train_predictor

    info = train_predictor(open_history(db, must_exist=True), probe=probe)
    if as_json:
        emit_json(info)
        return
    click.echo(
        f"Trained predictor {info['name']!r} on {info['n_runs']} runs over {len(info['datasets'])} datasets "
        f"({info['n_features']} features; signals: {', '.join(info['signals']) or 'none'})."
    )
    if probe is not None:
        click.echo(f"Probe features from the first {probe} epochs of the learning curves of "
                   f"{info['scores'].get('n_with_curve', 0)} of those runs (the others have none).")
    click.echo(f"Shots monotone for: {', '.join(info['scores'].get('monotone_shots') or []) or 'no target'}.")
    click.echo("")
    click.echo(scores_text(info["scores"]))


@predictor_group.command(name="evaluate")
@click.option("--holdout", type=click.Choice(["dataset", "source", "tower", "headroom"]), default="dataset",
              show_default=True,
              help="What one fold leaves out: a dataset, the source of its images (else the dataset name), the "
                   "model's image tower (else its family); headroom: one fold that trains on the (model, dataset) "
                   "pairs with the least headroom (1 - zero-shot) and tests on the top fifth.")
@click.option("--ablate", is_flag=True,
              help="Evaluate the predictor with every feature, without the seed papers' signals (IIMM, the gap "
                   "decomposition, MIR, MDS), without the anchors, and with the anchors alone, on the same folds.")
@click.option("--gain-target", type=click.Choice(["headroom", "gain", "anchor", "anchor-offset"]), default=None,
              help="The space the ID gain is learned in (default: the predictor's): a share of 1 - zero-shot, the "
                   "raw gain, a share of the anchor's headroom, or accuracy after minus the anchor.")
@click.option("--probe", "probe", multiple=True, metavar="K[,K...]",
              help="Also evaluate the predictor with a probe of K epochs (repeatable, or K=1,2,5) beside the same "
                   "predictor without it, both trained on every run of the training folds (as `recommend --probe` "
                   "uses them) and scored on the held-out runs whose learning curve has a point at epoch K, with "
                   "the constant rules on the same groups.")
@quiet_option(expose=False)
@db_option
@json_option
def predictor_evaluate(holdout: str, ablate: bool, gain_target: str | None, probe: tuple[str, ...], db: str | None,
                       as_json: bool) -> None:
    """Held-out scores of the predictor and of the baselines (the anchor alone, best single
    method, zero-shot-only, IIMM-only linear fit, kNN on signals, random) in one loop: Spearman,
    MAE, bias (mean signed error), interval coverage, top-1 and regret, beside the history's seed noise; then the choice
    of a (method, configuration) per group beside constant rules (the best single
    configuration, the default learning rate of the best single method, always one method), and
    the choice of a model, with top-1, regret and normalised regret. Progress (one step per
    held-out fold) goes to stderr on a terminal."""
    from ..history import open_history
    from ..predictor import ablation, evaluate
    from ..predictor.estimator import AdvisorPredictor
    from ..terminal import phase

    probe_epochs = parse_probe(probe)
    if probe_epochs and ablate:
        raise click.UsageError("--probe and --ablate cannot be combined")
    est = AdvisorPredictor(**({"gain_target": gain_target} if gain_target else {}))
    if probe_epochs:
        from ..predictor.evaluation import EvaluationError, probe_comparison

        if "probe_epochs" not in est.get_params():  # before reading the history
            raise EvaluationError("this predictor has no probe features yet")
        with phase("reading the history"):
            rows = open_history(db, must_exist=True).training_rows()
        pc = probe_comparison(rows, probe_epochs, holdout=holdout, estimator=est)
        if as_json:
            emit_json(pc)
            return
        click.echo(probe_text(pc))
        return
    with phase("reading the history"):
        rows = open_history(db, must_exist=True).training_rows()
    if ablate:
        ab = ablation(rows, holdout=holdout, estimator=est)
        if as_json:
            emit_json(ab)
            return
        click.echo(ablation_text(ab))
        return
    ev = evaluate(rows, holdout=holdout, estimator=est)
    if as_json:
        emit_json(ev)
        return
    click.echo(evaluation_text(ev))


@predictor_group.command(name="show")
@quiet_option(expose=False)
@db_option
@json_option
def predictor_show(db: str | None, as_json: bool) -> None:
    """The stored predictor: when it was trained, on what, its features and its scores."""
    from ..errors import PredictorError
    from ..history import open_history
    from ..predictor import FittedPredictor, training_hash
    from ..predictor.support import bounded_view

    history = open_history(db, must_exist=True)
    from ..predictor import DEFAULT_PREDICTOR

    stored = history.load_predictor(DEFAULT_PREDICTOR)
    if stored is None:
        raise PredictorError("no predictor stored in this history; run `advisor predictor train`")
    est = FittedPredictor.from_stored(stored)
    view = bounded_view(history, DEFAULT_PREDICTOR)
    if view is not None:  # the summary stored with the predictor: a constant-time check, no run read
        up_to_date, n_now = not view.changed(), view.count()
    else:
        rows = history.training_rows()
        up_to_date, n_now = training_hash(rows) == est.training_hash, len(rows)
    info = {
        "name": DEFAULT_PREDICTOR,
        "created_at": stored.get("created_at"),
        "n_runs": est.n_runs,
        "datasets": est.datasets,
        "training_hash": stored.get("training_hash"),
        "up_to_date": up_to_date,
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
               else f"The history changed since ({n_now} runs now): run `advisor predictor train`.")
    click.echo(f"Features ({len(info['features'])}): {', '.join(info['features'])}")
    click.echo("")
    click.echo(scores_text(info["scores"]))
