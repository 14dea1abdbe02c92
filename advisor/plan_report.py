"""The user's own plan as one HTML page: ``advisor report --model M --dataset D`` (or
``advisor report --from-json rec.json``, a file ``advisor recommend --json`` wrote).

The page is built from the recommendation's JSON (``Recommendation.to_dict()`` with its
``run_command``), so a page rendered from a saved file and one made by asking now are the same.
It shows, for the pair:

1. the decision: the sentence, the ``advisor run`` command, the objective, where the ranking
   came from, the warnings and notes;
2. every candidate (model, method, configuration): predicted ID gain against predicted cost
   (seconds, log axis), both intervals as error bars, one colour per method (``method_colours``),
   one marker per model when there are several; the recommended one ringed;
3. the shots curve: the recommended configuration's predicted ID gain, OOD change and cost at
   the shot counts the history covers, with intervals (a plot and a short table);
4. the evidence: the anchors (what classifiers on the frozen features reach at the pair's
   shots) and the probes (short partial runs), with the signals and the features that moved
   each prediction;
5. the table of candidates: configuration, predictions with intervals, the command that runs it.

Keys that newer recommendations carry (``models``, ``winner_key``, ``run_key``,
``run_model_args``, ``shots_curve``, ``probes``; per candidate ``model``, ``key``,
``out_of_support``, ``configurations_searched``) are optional: without them a section says it is
not available, and the recommended candidate is found from ``winner`` and ``run_command``.
Values that are not finite numbers are treated as missing.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .report import (
    ReportError,
    figure_png,
    html_table,
    log_seconds_axis,
    method_colours,
    method_order,
    page,
    tex_safe,
)

#: One marker per model when a plan ranks several (in the order the plan names them).
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
SOURCES = {"predictor": "the learned predictor",
           "anchor-prior": "the anchor and per-method priors (cold start: no predictor yet)",
           "iimm-heuristic": "the IIMM heuristic (cold start: no predictor yet)"}
SCORES = {"gain": "score = ID gain", "balanced": "score = ID gain + OOD change", "retain": "score = OOD change"}


# ------------------------------------------------------------------------------------------
# Reading a recommendation
# ------------------------------------------------------------------------------------------


def load_recommendation(path: str | Path) -> dict[str, Any]:
    """The recommendation in ``path`` (``advisor recommend --json``; ``-``: standard input),
    checked; one-line errors."""
    import sys

    from .atomic import os_reason, short_path

    shown = "- (standard input)" if str(path) == "-" else short_path(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ReportError(f"--from-json {shown} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ReportError(f"--from-json {shown} is not UTF-8 text (give the output of `advisor recommend --json`)") \
            from None
    except OSError as exc:
        raise ReportError(f"cannot read --from-json {shown}: {os_reason(exc)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"--from-json {shown} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") \
            from None
    return check_recommendation(data, f"--from-json {shown}")


def check_recommendation(data: Any, what: str = "the recommendation") -> dict[str, Any]:
    """``data`` when it has what the page needs (model, dataset, a list of methods each with a
    name); else a one-line ``ReportError``."""
    hint = "(give the output of `advisor recommend --json`)"
    if not isinstance(data, dict):
        raise ReportError(f"{what} is not a recommendation: a JSON {type(data).__name__}, not an object {hint}")
    for key in ("model", "dataset"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ReportError(f"{what} is not a recommendation: no {key!r} {hint}")
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ReportError(f"{what} is not a recommendation: no list of 'methods' {hint}")
    for i, m in enumerate(methods):
        if not isinstance(m, dict) or not isinstance(m.get("method"), str) or not m["method"]:
            raise ReportError(f"{what}: methods[{i}] has no 'method' name {hint}")
    return data


def _num(v: Any) -> float | None:
    """A finite number, else None (a hand-edited file may hold anything)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _gain(v: Any, lo: Any = None, hi: Any = None) -> str:
    """``+0.031 [-0.010, +0.070]`` (accuracy units, 0.01 = 1 point)."""
    v, lo, hi = _num(v), _num(lo), _num(hi)
    if v is None:
        return "n/a"
    v = v + 0.0  # -0.0 reads as +0.000
    return f"{v:+.3f}" if lo is None or hi is None else f"{v:+.3f} [{lo + 0.0:+.3f}, {hi + 0.0:+.3f}]"


def _secs(v: Any, lo: Any = None, hi: Any = None) -> str:
    """``16.7 [7.86, 35.5]`` seconds, 3 significant digits."""
    v, lo, hi = _num(v), _num(lo), _num(hi)
    if v is None:
        return "n/a"
    return f"{v:.3g}" if lo is None or hi is None else f"{v:.3g} [{lo:.3g}, {hi:.3g}]"


def _hp(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------
# The candidates
# ------------------------------------------------------------------------------------------


def plan_models(rec: Mapping[str, Any]) -> list[str]:
    """The candidate models in the plan's order: ``models``, else those its methods name, else
    the one ``model``."""
    names = [str(m) for m in _list(rec.get("models")) if m]
    for m in rec["methods"]:
        if m.get("model") and str(m["model"]) not in names:
            names.append(str(m["model"]))
    return names or [str(rec["model"])]


def _command_args(command: Any) -> tuple[list[str], str | None] | None:
    """(model arguments, dataset) of an ``advisor run ... --dataset D --method M ...`` command."""
    if not isinstance(command, str):
        return None
    try:
        tokens = shlex.split(command)
    except ValueError:
        return None
    if tokens[:2] != ["advisor", "run"] or "--dataset" not in tokens:
        return None
    i = tokens.index("--dataset")
    return tokens[2:i], (tokens[i + 1] if i + 1 < len(tokens) else None)


def _command_model(args: Sequence[str]) -> str | None:
    return args[args.index("--model") + 1] if "--model" in args and args.index("--model") + 1 < len(args) else None


def candidates(rec: Mapping[str, Any], model_args: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """One row per candidate (model, method, configuration) in the plan's order, with the
    recommended one marked (``best``) and the ``advisor run`` command of each (``model_args``:
    the exact ``--model/--pretrained/--image-size`` of a model label, when known)."""
    default_model = str(rec["model"])
    if model_args is None and isinstance(rec.get("model_args"), dict):
        model_args = {str(k): [str(a) for a in v] for k, v in rec["model_args"].items() if isinstance(v, list)}
    rows = []
    for i, m in enumerate(rec["methods"]):
        hparams = m.get("hparams") if isinstance(m.get("hparams"), dict) else {}
        model = str(m.get("model") or default_model)
        rows.append({
            "index": i, "model": model, "method": str(m["method"]),
            "key": str(m.get("key") or (f"{m['model']} + {m['method']}" if m.get("model") else m["method"])),
            "searched": m.get("configurations_searched") if isinstance(m.get("configurations_searched"), int) else 0,
            "rank": m.get("rank"), "eligible": m.get("eligible", True) is not False,
            "excluded": m.get("excluded"), "hparams": hparams,
            "out_of_support": [str(x) for x in _list(m.get("out_of_support"))],
            "contributions": _list(m.get("contributions")), "contribution_base": _num(m.get("contribution_base")),
            "contribution_other": _num(m.get("contribution_other")),
            **{k: _num(m.get(k)) for k in ("id_gain", "id_gain_lo", "id_gain_hi", "ood_change", "ood_change_lo",
                                           "ood_change_hi", "cost_s", "cost_s_lo", "cost_s_hi", "score")},
            "best": False,
        })
    best = recommended(rec, rows)
    if best is not None:
        best["best"] = True
    for row in rows:
        row["command"] = candidate_command(rec, row, model_args)
    return rows


def recommended(rec: Mapping[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The candidate the plan recommends: ``winner_key`` (when the advice is to keep zero-shot,
    ``run_key``, the one it would measure); for a recommendation without keys, ``winner`` (else
    ``run_method``) of the model its ``run_command`` names."""
    key = rec.get("winner_key") or rec.get("run_key")
    if key is not None:
        return next((r for r in rows if r["key"] == key), None)
    method = rec.get("winner") or rec.get("run_method")
    pool = [r for r in rows if r["method"] == method]
    if not pool:
        return None
    parsed = _command_args(rec.get("run_command"))
    names = {_command_model(parsed[0]), _label_of(parsed[0])} if parsed else {rec.get("model")}
    same = [r for r in pool if r["model"] in names]
    return min(same or pool, key=lambda r: (r["rank"] if isinstance(r["rank"], int) else 10**6, r["index"]))


def _label_of(args: Sequence[str]) -> str | None:
    """``ViT-B-32/openai@224`` (``ModelSpec.label``) of ``--model/--pretrained/--image-size`` arguments."""
    values = dict(zip(args[::2], args[1::2]))
    if "--model" not in values:
        return None
    return (values["--model"] + (f"/{values['--pretrained']}" if values.get("--pretrained") else "")
            + (f"@{values['--image-size']}" if values.get("--image-size") else ""))


def _args_of_label(label: str) -> list[str]:
    """Best reading of a model label (``name[/pretrained][@size]``) as arguments, for a saved
    plan that does not carry them: a name that is itself a path or ``hf-hub:ORG/REPO`` keeps its
    slashes."""
    name, size = label, None
    match = re.fullmatch(r"(.+)@(\d+)", name)
    if match:
        name, size = match.group(1), match.group(2)
    pretrained = None
    if "/" in name and not name.startswith(("hf-hub:", "/", ".", "~")) and name.count("/") == 1:
        name, pretrained = name.split("/")
    return (["--model", name] + (["--pretrained", pretrained] if pretrained else [])
            + (["--image-size", size] if size else []))


def _run_model_args(rec: Mapping[str, Any]) -> list[str] | None:
    args = rec.get("run_model_args")
    if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
        return list(args)
    parsed = _command_args(rec.get("run_command"))
    return parsed[0] if parsed and parsed[0] else None


def candidate_command(rec: Mapping[str, Any], row: Mapping[str, Any],
                      model_args: Mapping[str, Sequence[str]] | None = None) -> str:
    """``advisor run`` for one candidate: the plan's own command for the recommended one; for
    another, its model's arguments (the recommended model's when it is the same), the plan's
    dataset, its method and its configuration."""
    from .recommendation import run_overrides

    if row["best"] and isinstance(rec.get("run_command"), str) and rec["run_command"]:
        return str(rec["run_command"])
    parsed = _command_args(rec.get("run_command"))
    dataset = (parsed[1] if parsed else None) or str(rec["dataset"])
    run_args = _run_model_args(rec)
    single = not any(m.get("model") for m in rec["methods"])
    if model_args and row["model"] in model_args:
        args_m = list(model_args[row["model"]])
    elif run_args and (single or _label_of(run_args) == row["model"]):
        args_m = run_args
    else:
        args_m = ["--model", row["model"]] if single else _args_of_label(row["model"])
    shots = rec.get("shots")
    args = ["advisor", "run", *args_m, "--dataset", dataset, "--method", row["method"]]
    if isinstance(shots, int) and not isinstance(shots, bool):
        args += ["--shots", str(shots)]
    try:
        hparams = run_overrides(row["method"], row["hparams"], shots if isinstance(shots, int) else None)
    except Exception:  # noqa: BLE001 - a tuner's defaults failing must not lose the page
        hparams = dict(row["hparams"])
    for k, v in hparams.items():
        args += ["--hparam", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    return " ".join(shlex.quote(a) for a in args)


def _config(hparams: Mapping[str, Any]) -> str:
    """``epochs 20, lr 0.002`` (what the history ran; empty keys left out)."""
    return ", ".join(f"{k} {_hp(hparams[k])}" for k in ("epochs", "lr") if hparams.get(k) is not None) or "defaults"


def _label(row: Mapping[str, Any], several: bool) -> str:
    return f"{row['model']} / {row['method']}" if several else row["method"]


def _legend_handles(methods: Sequence[str], colours: Mapping[str, str], models: Sequence[str],
                    markers: Mapping[str, str]) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m], marker="o", ls="", label=tex_safe(m)) for m in methods]
    if len(models) > 1:
        handles += [Line2D([], [], color="#555", marker=markers[m], ls="", label=tex_safe(m)) for m in models]
    return handles


def plot_candidates(rec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """Predicted ID gain against predicted cost (log seconds) of every candidate with both,
    intervals as error bars; colour by method, marker by model; the recommended one ringed."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    shown = [r for r in rows if r["id_gain"] is not None and r["cost_s"] is not None]
    if not shown:
        return ("<p class='note'>Not available: no candidate has both a predicted ID gain and a predicted cost "
                "(a cold-start ranking has no cost model).</p>")
    models = plan_models(rec)
    several = len({r["model"] for r in rows}) > 1
    markers = {m: MODEL_MARKERS[i % len(MODEL_MARKERS)] for i, m in enumerate(models)}
    methods = method_order({r["method"] for r in shown})
    colours = method_colours(methods)
    fig = Figure(figsize=(9.5, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    for r in shown:
        c, g = r["cost_s"], r["id_gain"]
        xerr = ([[max(0.0, c - r["cost_s_lo"])], [max(0.0, r["cost_s_hi"] - c)]]
                if r["cost_s_lo"] is not None and r["cost_s_hi"] is not None else None)
        yerr = ([[max(0.0, g - r["id_gain_lo"])], [max(0.0, r["id_gain_hi"] - g)]]
                if r["id_gain_lo"] is not None and r["id_gain_hi"] is not None else None)
        ax.errorbar([c], [g], xerr=xerr, yerr=yerr, fmt=markers.get(r["model"], "o"), ms=7, capsize=3,
                    elinewidth=1, color=colours[r["method"]], alpha=0.9 if r["eligible"] else 0.35, zorder=3)
    extra = []
    best = next((r for r in shown if r["best"]), None)
    if best is not None:  # a ring, named in the legend (a label in the plot would hide some candidate's bars)
        ax.scatter([best["cost_s"]], [best["id_gain"]], s=420, facecolors="none", edgecolors="#111", linewidths=2,
                   zorder=4)
        word = "best-ranked (advice: keep zero-shot)" if rec.get("keep_zero_shot") else "recommended"
        extra.append(Line2D([], [], marker="o", ms=14, mfc="none", mec="#111", mew=2, ls="",
                            label=tex_safe(f"{word}: {_label(best, several)}")))
    extra.append(Line2D([], [], color="#999", lw=0.9, ls="--", label="zero-shot (no fine-tuning)"))
    ax.axhline(0, color="#999", lw=0.9, ls="--")
    budget = _num(rec.get("budget"))
    if budget is not None:
        ax.axvline(budget, color="#a33", lw=1, ls=":")
        extra.append(Line2D([], [], color="#a33", lw=1, ls=":", label=f"budget {budget:g} s"))
    log_seconds_axis(ax, "x")
    level = _num(rec.get("interval"))
    bars = f", bars: {level:.0%} intervals" if level is not None else ", bars: intervals"
    ax.set_xlabel(f"predicted training cost, seconds (log){bars}")
    ax.set_ylabel("predicted ID gain (accuracy, 0.01 = 1 point)")
    ax.set_title(tex_safe(f"Candidates for {rec['dataset']}: predicted gain against cost"), fontsize=10)
    ax.legend(handles=_legend_handles(methods, colours, models if several else [], markers) + extra, fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method" + (" / model" if several else ""),
              title_fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


# ------------------------------------------------------------------------------------------
# The shots curve, the anchors, the probes
# ------------------------------------------------------------------------------------------


def _curve_points(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = ("id_gain", "id_gain_lo", "id_gain_hi", "ood_change", "ood_change_lo", "ood_change_hi", "cost_s",
            "cost_s_lo", "cost_s_hi", "anchor_probe")
    points = []
    for p in _list(rec.get("shots_curve")):
        if isinstance(p, dict) and isinstance(p.get("shots"), int) and p["shots"] > 0:
            points.append({"shots": p["shots"], **{k: _num(p.get(k)) for k in keys},
                           "out_of_support": "; ".join(str(x) for x in _list(p.get("out_of_support")))})
    return sorted(points, key=lambda p: p["shots"])


def plot_shots_curve(points: Sequence[Mapping[str, Any]], shots: Any) -> str:
    """Left: predicted ID gain and OOD change against shots per class (log axis) with their
    intervals; right: predicted cost. The plan's own shots dotted."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.9))
    xs = [p["shots"] for p in points]
    ax = fig.add_subplot(1, 2, 1)
    for key, colour, label, nudge in (("id_gain", "#1f77b4", "ID gain", 0.95), ("ood_change", "#d62728",
                                                                                 "OOD change", 1.05)):
        pts = [p for p in points if p[key] is not None]
        if not pts:
            continue
        err = [[max(0.0, p[key] - p[f"{key}_lo"]) if p[f"{key}_lo"] is not None else 0 for p in pts],
               [max(0.0, p[f"{key}_hi"] - p[key]) if p[f"{key}_hi"] is not None else 0 for p in pts]]
        ax.errorbar([p["shots"] * nudge for p in pts], [p[key] for p in pts], yerr=err, fmt="o-", ms=5, capsize=3,
                    color=colour, label=label)
    ax.axhline(0, color="#999", lw=0.8, ls="--")
    ax.set_ylabel("predicted change (accuracy)")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    pts = [p for p in points if p["cost_s"] is not None]
    if pts:
        err = [[max(0.0, p["cost_s"] - p["cost_s_lo"]) if p["cost_s_lo"] is not None else 0 for p in pts],
               [max(0.0, p["cost_s_hi"] - p["cost_s"]) if p["cost_s_hi"] is not None else 0 for p in pts]]
        ax2.errorbar([p["shots"] for p in pts], [p["cost_s"] for p in pts], yerr=err, fmt="o-", ms=5, capsize=3,
                     color="#555")
        log_seconds_axis(ax2, "y")
    ax2.set_ylabel("predicted cost, seconds (log)")
    for a, title in ((ax, "Gain and OOD change per shot count"), (ax2, "Cost per shot count")):
        a.set_xscale("log", base=2)
        a.set_xticks(xs)
        a.set_xticklabels([str(x) for x in xs])
        a.set_xlabel("training images per class (shots)")
        a.set_title(title, fontsize=10)
        if isinstance(shots, int) and not isinstance(shots, bool):
            a.axvline(shots, color="#888", lw=1, ls=":")
    fig.tight_layout()
    return figure_png(fig)


def shots_section(rec: Mapping[str, Any], best: Mapping[str, Any] | None) -> list[str]:
    parts = ["<h2>What more labels buy: the shots curve</h2>"]
    points = _curve_points(rec)
    if not points:
        parts.append("<p class='note'>Not available: this recommendation has no <code>shots_curve</code> (an "
                     "<code>advisor recommend</code> that predicts the recommended configuration at other shot "
                     "counts writes one).</p>")
        return parts
    what = f"{best['method']} on {best['model']}, {_config(best['hparams'])}" if best else "the recommended one"
    parts.append(f"<p class='note'>The recommended configuration ({html.escape(what)}) predicted at each shot count "
                 "the history covers, with its intervals; the dotted line and the marked row are your shot count."
                 + (" <i>Linear probe</i>: what a linear probe on the frozen features reaches at that shot count "
                    "(accuracy)." if any(p["anchor_probe"] is not None for p in points) else "") + "</p>")
    parts.append(plot_shots_curve(points, rec.get("shots")))
    rows = [{"shots": p["shots"], "ID gain": _gain(p["id_gain"], p["id_gain_lo"], p["id_gain_hi"]),
             "OOD change": _gain(p["ood_change"], p["ood_change_lo"], p["ood_change_hi"]),
             "cost s": _secs(p["cost_s"], p["cost_s_lo"], p["cost_s_hi"]),
             "linear probe": "" if p["anchor_probe"] is None else f"{p['anchor_probe']:.3f}",
             "outside the history": p["out_of_support"],
             "_class": "mine" if p["shots"] == rec.get("shots") else ""} for p in points]
    cols = ["shots", "ID gain", "OOD change", "cost s"]
    cols += ["linear probe"] if any(p["anchor_probe"] is not None for p in points) else []
    cols += ["outside the history"] if any(p["out_of_support"] for p in points) else []
    parts.append(html_table(rows, cols, left=("outside the history",)))
    return parts


ANCHORS = (("probe", "linear probe", "logistic regression on the frozen image features"),
           ("prototype", "class prototypes", "nearest class mean of the frozen image features"),
           ("knn", "kNN", "nearest neighbours among the training images"),
           ("zero_shot", "zero-shot", "the model's text prompts, on the same images"))


def anchors_section(rec: Mapping[str, Any]) -> list[str]:
    shots = rec.get("shots")
    at = "every training image" if shots is None else f"{shots} shots per class"
    parts = ["<h2>The evidence: anchors and probes</h2>", "<h3>Anchors</h3>"]
    anchors = rec.get("anchors") if isinstance(rec.get("anchors"), dict) else {}
    rows = []
    for key, name, what in ANCHORS:
        v = _num(anchors.get(key))
        if v is None:
            continue
        sd = _num(anchors.get("probe_sd")) if key == "probe" else None
        rows.append({"anchor": name, "accuracy": f"{v:.3f}" + (f" ± {sd:.3f}" if sd else ""), "what": what})
    if not rows:
        parts.append("<p class='note'>Not available: the pair's signals have no anchors (they are measured "
                     "when the pair's signals are computed by an advisor version with the anchor metric).</p>")
    else:
        parts.append(f"<p class='note'>What cheap classifiers on the frozen features reach on your data at {at}, "
                     "with no fine-tuning (accuracy on held-out images; ± is the spread over draws of the shots). "
                     "The predictor reads them as anchors of the gain.</p>")
        parts.append(html_table(rows, ["anchor", "accuracy", "what"], left=("what",)))
    parts.append("<h3>Probes</h3>")
    parts += probes_section(rec)
    return parts


def _probe_rows(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in _list(rec.get("probes")):
        if not isinstance(p, dict):
            continue
        curve = [c for c in _list(p.get("curve")) if isinstance(c, dict) and _num(c.get("epoch")) is not None]
        out.append({"model": str(p.get("model") or rec["model"]), "method": str(p.get("method") or "?"),
                    "epochs_run": p.get("epochs_run"), "epochs": p.get("epochs"), "cost_s": _num(p.get("cost_s")),
                    "measured": p.get("measured") is True, "id_gain": _num(p.get("id_gain")),
                    "ood_change": _num(p.get("ood_change")), "stopped": p.get("stopped"), "error": p.get("error"),
                    "curve": curve})
    return out


def probes_section(rec: Mapping[str, Any]) -> list[str]:
    probes = _probe_rows(rec)
    if not probes:
        return ["<p class='note'>Not available: this recommendation ran no probes (short partial training runs "
                "whose learning curves back the prediction).</p>"]
    stops = {"epochs": "partial run: its probe epochs ran", "budget": "partial run: its budget ran out"}
    rows = []
    for p in probes:
        if p["error"]:
            outcome = f"failed: {p['error']}"
        elif p["measured"]:
            outcome = "measured: the whole run fitted the budget"
        else:
            outcome = stops.get(str(p["stopped"]), "partial run: curve only")
        rows.append({"model": p["model"], "method": p["method"],
                     "epochs run": f"{_hp(p['epochs_run'])} of {_hp(p['epochs'])}" if p["epochs"] is not None
                     else _hp(p["epochs_run"]),
                     "cost s": _secs(p["cost_s"]), "outcome": outcome,
                     "measured ID gain": _gain(p["id_gain"]) if p["measured"] and p["id_gain"] is not None else "",
                     "measured OOD change": _gain(p["ood_change"]) if p["measured"] and p["ood_change"] is not None
                     else ""})
    parts = ["<p class='note'>Short training runs made for this plan (the first epochs of each candidate's real "
             "schedule on your shots); a probe whose whole run fitted the budget has a measured outcome, the others "
             "a learning curve the predictor reads.</p>",
             html_table(rows, ["model", "method", "epochs run", "cost s", "outcome"]
                        + (["measured ID gain", "measured OOD change"] if any(p["measured"] for p in probes) else []),
                        left=("model", "method", "outcome"))]
    if any(p["curve"] for p in probes):
        parts.append(plot_probes(probes))
    return parts


def plot_probes(probes: Sequence[Mapping[str, Any]]) -> str:
    """Validation accuracy (and OOD-proxy accuracy, when recorded) per epoch of each probe."""
    from matplotlib.figure import Figure

    methods = method_order({p["method"] for p in probes})
    colours = method_colours(methods)
    several = len({p["model"] for p in probes}) > 1
    has_ood = any(_num(c.get("ood_proxy_acc")) is not None for p in probes for c in p["curve"])
    fig = Figure(figsize=(11 if has_ood else 6.5, 3.8))
    panels = [("val_acc", "validation accuracy")] + ([("ood_proxy_acc", "OOD proxy accuracy")] if has_ood else [])
    styles = ["-", "--", "-.", ":"]
    models = sorted({p["model"] for p in probes})
    for k, (key, name) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for p in probes:
            pts = [(_num(c["epoch"]), _num(c.get(key))) for c in p["curve"]]
            pts = [(e, v) for e, v in pts if v is not None]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", ms=3, color=colours[p["method"]],
                        ls=styles[models.index(p["model"]) % len(styles)],
                        label=tex_safe(f"{p['model']} / {p['method']}" if several else p["method"]))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"Probes: {name} per epoch", fontsize=10)
        if k == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


# ------------------------------------------------------------------------------------------
# The table of candidates and the page
# ------------------------------------------------------------------------------------------


def candidates_table(rec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per candidate (rank, model, method, configuration, predictions with intervals,
    notes), and under it the ``advisor run`` command that trains it."""
    level = _num(rec.get("interval"))
    lv = f" [{level:.0%}]" if level is not None else ""
    cols = ["#", "model", "method", "epochs", "lr", f"ID gain{lv}", f"OOD change{lv}", f"cost s{lv}", "score",
            "notes"]
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" if k in (1, 2, 9) else f"<th>{html.escape(c)}</th>"
                   for k, c in enumerate(cols))
    body = []
    for r in rows:
        notes = []
        if r["best"]:
            notes.append("best-ranked; advice: keep zero-shot" if rec.get("keep_zero_shot") else "recommended")
        if r["searched"] > 1:
            notes.append(f"best of {r['searched']} configurations")
        if r["excluded"]:
            notes.append(f"excluded: {r['excluded']}")
        notes += [f"outside the history: {x}" for x in r["out_of_support"]]
        cells = [str(r["rank"]) if r["rank"] is not None else "", r["model"], r["method"],
                 _hp(r["hparams"].get("epochs")), _hp(r["hparams"].get("lr")),
                 _gain(r["id_gain"], r["id_gain_lo"], r["id_gain_hi"]),
                 _gain(r["ood_change"], r["ood_change_lo"], r["ood_change_hi"]),
                 _secs(r["cost_s"], r["cost_s_lo"], r["cost_s_hi"]),
                 "" if r["score"] is None else f"{r['score']:+.3f}", "; ".join(notes)]
        kinds = ["n", "l n", "l n"] + ["n"] * 6 + ["l"]  # names and numbers on one line; notes wrap
        tds = "".join(f"<td class='{k}'>{html.escape(c)}</td>" for k, c in zip(kinds, cells))
        cls = " class='best'" if r["best"] else ""
        body.append(f"<tr{cls}>{tds}</tr><tr{cls}><td class='cmd' colspan='{len(cols)}'>"
                    f"<code>{html.escape(r['command'])}</code></td></tr>")
    return (f"<div class='scroll'><table class='plan'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table></div>")


def _explanations(rows: Sequence[Mapping[str, Any]], several: bool) -> str:
    items = []
    for r in rows:
        if r["contribution_base"] is None:
            continue
        parts = [f"base {r['contribution_base']:+.3f}"]
        for c in r["contributions"]:
            if isinstance(c, dict) and _num(c.get("value")) is not None:
                parts.append(f"{c.get('feature')} {c['value']:+.3f}")
        if r["contribution_other"] is not None:
            parts.append(f"others {r['contribution_other']:+.3f}")
        items.append(f"<li>{html.escape(_label(r, several))}: {html.escape(' + '.join(parts))}</li>")
    if not items:
        return ""
    return ("<details><summary>Why these gains: predicted ID gain = base + the features that moved it most + the "
            f"others</summary><ul>{''.join(items)}</ul></details>")


def _signals(rec: Mapping[str, Any]) -> str:
    signals = rec.get("signals") if isinstance(rec.get("signals"), dict) else {}
    rows = [{"signal": k, "value": _num(v)} for k, v in sorted(signals.items())]
    if not rows:
        return ""
    src = {"history": "from the history", "computed": "computed now and stored",
           "embeddings": "from your embeddings file"}.get(str(rec.get("signals_source")), "")
    return (f"<details><summary>The pair's {len(rows)} signals{(' (' + src + ')') if src else ''}</summary>"
            + html_table(rows, ["signal", "value"]) + "</details>")


def _decision(rec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], origin: str) -> list[str]:
    shots = rec.get("shots")
    models = plan_models(rec)
    title = f"Your plan: {', '.join(models)} on {rec['dataset']}" + (f", {shots} shots" if shots is not None else "")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
             f"{html.escape(origin)}.</p>"]
    if rec.get("sentence"):
        parts.append(f"<p><b>{html.escape(str(rec['sentence']))}</b></p>")
    best = next((r for r in rows if r["best"]), None)
    if best is not None:
        lead = ("To measure it anyway" if rec.get("keep_zero_shot") or not rec.get("winner")
                else "To run it with the configuration predicted")
        parts.append(f"<p>{lead}:</p><pre>{html.escape(best['command'])}</pre>")
    objective = str(rec.get("objective") or "")
    facts = []
    if objective:
        facts.append(f"objective {html.escape(objective)} ({SCORES.get(objective, '')})")
    if rec.get("source"):
        facts.append(f"ranked by {html.escape(SOURCES.get(str(rec['source']), str(rec['source'])))}")
    if _num(rec.get("interval")) is not None:
        facts.append(f"intervals at {_num(rec.get('interval')):.0%}")
    if rec.get("device"):
        facts.append(f"cost predicted for device {html.escape(str(rec['device']))}")
    if _num(rec.get("max_forgetting")) is not None:
        facts.append(f"at most {_num(rec.get('max_forgetting')):g} forgetting")
    if _num(rec.get("budget")) is not None:
        facts.append(f"budget {_num(rec.get('budget')):g} s")
    if facts:
        parts.append(f"<p>{'; '.join(facts)}.</p>")
    support = rec.get("support") if isinstance(rec.get("support"), dict) else {}
    if support.get("runs") is not None:
        parts.append(f"<p class='note'>History: {html.escape(str(support.get('runs')))} runs over "
                     f"{html.escape(str(support.get('datasets')))} datasets.</p>")
    outside = [str(x) for x in _list(rec.get("out_of_support"))]
    if outside:
        parts.append(f"<p class='warn'>Outside the history (intervals widened): {html.escape('; '.join(outside))}</p>")
    for w in _list(rec.get("warnings")):
        parts.append(f"<p class='warn'>Warning: {html.escape(str(w))}</p>")
    for n in _list(rec.get("notes")):
        parts.append(f"<p class='note'>Note: {html.escape(str(n))}</p>")
    return parts


def build_plan_report(rec: Mapping[str, Any], *, origin: str = "a recommendation", history: Sequence[str] = (),
                      model_args: Mapping[str, Sequence[str]] | None = None) -> str:
    """The plan page's HTML for a recommendation (``Recommendation.to_dict()`` or ``advisor
    recommend --json``); ``history`` appends the history report's sections; ``model_args``
    names each model label's exact ``advisor run`` arguments (else read from the plan)."""
    rec = check_recommendation(dict(rec))
    rows = candidates(rec, model_args)
    several = len({r["model"] for r in rows}) > 1
    best = next((r for r in rows if r["best"]), None)
    parts = _decision(rec, rows, origin)
    parts.append("<h2>Every candidate: predicted gain against cost</h2>")
    parts.append("<p class='note'>Each point is a candidate (model, method, configuration) at your shot count, with "
                 "the intervals of its predicted ID gain (vertical) and cost (horizontal). Faded: excluded by a "
                 "constraint or not predictable.</p>")
    parts.append(plot_candidates(rec, rows))
    missing = [r for r in rows if r["id_gain"] is None or r["cost_s"] is None]
    if missing:
        parts.append("<p class='note'>Not drawn (no predicted gain or cost): "
                     + html.escape(", ".join(_label(r, several) for r in missing)) + ".</p>")
    parts += shots_section(rec, best)
    parts += anchors_section(rec)
    parts.append("<h2>The candidates</h2>")
    parts.append("<p class='note'>Ranked by the objective's score; gains and OOD changes in accuracy (0.01 = 1 point, "
                 "negative OOD change = forgetting), cost in seconds of training, each with its interval. Each "
                 "prediction is for the configuration shown (epochs, lr; the command carries every hyper-parameter "
                 "that differs from the tuner's defaults).</p>")
    parts.append(candidates_table(rec, rows))
    parts.append(_explanations(rows, several))
    parts.append(_signals(rec))
    if history:
        parts.append("<hr><h2>The history behind the predictor</h2>")
        parts += list(history)
    return page(f"advisor plan: {rec['model']} on {rec['dataset']}", [p for p in parts if p])
