"""``advisor report``: one self-contained HTML file about the history and the predictor.

Sections: the history in numbers; the held-out evaluation (leave one dataset out: the honest
view of the predictor) with its tables; the plots a user decides from:

- calibration: nominal interval level against the empirical coverage of held-out runs, per target;
- held-out predicted vs measured, per target, labelled by dataset, with the intervals;
- per (model, dataset) pair: each method's predicted gain against its predicted cost, both
  with their intervals, beside what was measured. The pairs shown are chosen by ``pair_panels``
  (the most methods measured at the most common shot count, one per dataset first; the user's
  own pair first when the report is part of a plan page) and the caption says how;
- every signal against the measured gain, Spearman in the title (signals with identical values
  on every run are drawn once, their names joined).

Wide tables scroll inside their own box and show 3 significant digits, with the columns
explained in a note. The user's own plan (``advisor report --model M --dataset D``) is another
page, built by ``advisor.plan_report`` from the pieces here.

Plots are drawn with matplotlib's Agg canvas (no display, no pyplot global state) and embedded as
base64 PNGs, so the file can be mailed or attached to a pull request as is. Every text that
comes from the history (method, dataset, signal names) is escaped for matplotlib's mathtext.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import AdvisorError, PredictorError
from .predictor import DEFAULT_PREDICTOR

#: Colours for datasets (in name order) and for methods whose tuner registers none (a stable hash).
PALETTE = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#1f77b4", "#2ca02c", "#d62728", "#9467bd",
           "#17becf")
TARGET_LABELS = {"id_gain": "ID gain", "ood_change": "OOD change", "cost": "cost (log seconds)"}
#: At most this many (model, dataset) pairs get a gain-vs-cost panel.
MAX_PAIR_PANELS = 6


class ReportError(AdvisorError):
    """The report cannot be written (empty history, unwritable path)."""


def tex_safe(text: Any) -> str:
    """A label matplotlib draws literally: ``$`` would start mathtext (a method named ``$x$``
    must not break the report)."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def _hash_colour(name: str) -> str:
    return PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(PALETTE)]


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """Each method's colour from its tuner's registration; a stable pick for the others."""
    from .plugins import get_tuners

    tuners = get_tuners()
    return {m: (getattr(tuners.get(m), "colour", None) or _hash_colour(m)) for m in methods}


def method_order(methods: Sequence[str]) -> list[str]:
    """Methods in their tuners' registered order; unregistered ones after, by name."""
    from .plugins import get_tuners

    tuners = get_tuners()
    return sorted(set(methods), key=lambda m: (getattr(tuners.get(m), "order", 10**6), m))


def figure_png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def log_seconds_axis(ax: Any, which: str) -> None:
    """A log axis of seconds labelled 1, 2, 5, 10, 20, 50 ... (not 2x10^1, which crowds)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_calibration(calibration: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Nominal level against empirical coverage on held-out runs, one line per target."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect calibration")
    for t, points in calibration.items():
        pts = [(p["level"], p["coverage"]) for p in points if p.get("coverage") is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=tex_safe(TARGET_LABELS.get(t, t)))
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("nominal interval level")
    ax.set_ylabel("share of held-out runs inside")
    ax.set_title("Calibration of the intervals (held out)")
    ax.legend(fontsize=8)
    return figure_png(fig)


def plot_predicted_vs_measured(predictions: Sequence[Mapping[str, Any]]) -> str:
    """One panel per target: held-out prediction (with its interval) against measurement,
    one colour per dataset."""
    from matplotlib.figure import Figure

    targets = list(TARGET_LABELS)
    fig = Figure(figsize=(15, 4.6))
    datasets = sorted({str(p["dataset"]) for p in predictions})
    colour = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(datasets)}
    for k, target in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), k + 1)
        pts = [p for p in predictions
               if p.get(f"measured_{target}") is not None and p.get(f"predicted_{target}") is not None]
        for d in datasets:
            sel = [p for p in pts if str(p["dataset"]) == d]
            if not sel:
                continue
            xs = [p[f"measured_{target}"] for p in sel]
            ys = [p[f"predicted_{target}"] for p in sel]
            lo = [p[f"predicted_{target}"] - p[f"lo_{target}"] if p.get(f"lo_{target}") is not None else 0 for p in sel]
            hi = [p[f"hi_{target}"] - p[f"predicted_{target}"] if p.get(f"hi_{target}") is not None else 0 for p in sel]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", ms=4, alpha=0.75, elinewidth=0.6, capsize=0,
                        color=colour[d], label=tex_safe(d))
        if pts:
            vals = [p[f"measured_{target}"] for p in pts] + [p[f"predicted_{target}"] for p in pts]
            ax.plot([min(vals), max(vals)], [min(vals), max(vals)], color="#999", lw=1, ls="--")
            ax.legend(fontsize=7, title="held-out dataset", title_fontsize=7)
        ax.set_xlabel(f"measured {TARGET_LABELS[target]}")
        ax.set_ylabel(f"predicted {TARGET_LABELS[target]} (held out)")
        ax.set_title(f"{TARGET_LABELS[target]}: predicted vs measured")
    fig.tight_layout()
    return figure_png(fig)


#: A plan's own pair, to be shown first: (model name, dataset name, shots).
PairKey = tuple[str, str, Any]


def _pair_groups(predictions: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Held-out predictions with both gain and cost, per (model key, dataset, shots)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for p in predictions:
        if p.get("predicted_id_gain") is not None and p.get("predicted_cost") is not None:
            groups.setdefault((str(p["model"]), str(p["dataset"]), p.get("shots")), []).append(p)
    return groups


def _model_name(key: str) -> str:
    """``lit-offline`` of the history's model key ``lit-offline||64``."""
    return key.split("|", 1)[0]


def pair_panels(predictions: Sequence[Mapping[str, Any]], max_panels: int = MAX_PAIR_PANELS,
                first: PairKey | None = None) -> tuple[list[tuple], str]:
    """The (model key, dataset, shots) groups worth a panel, and a caption saying how they were
    chosen. At the most common shot count (the one most groups have), groups with the most
    methods measured come first, then those whose methods' measured gains differ most (where
    the choice of method matters), one per dataset until every dataset has one, then the rest;
    groups at other shot counts only when those run out. ``first`` (a plan's
    own pair: model name, dataset, shots) leads when the history has it, at its shots if
    measured there, else at the shot count with most methods."""
    groups = _pair_groups(predictions)
    if not groups:
        return [], ""
    shot_counts: dict[Any, int] = {}
    for key in groups:
        shot_counts[key[2]] = shot_counts.get(key[2], 0) + 1
    common = max(shot_counts, key=lambda s: (shot_counts[s], -1 if s is None else s))

    def measured(key: tuple) -> int:
        return len({str(p["method"]) for p in groups[key] if p.get("measured_id_gain") is not None})

    def spread(key: tuple) -> float:
        """How far apart the methods' mean measured gains are: where the choice matters most."""
        gains: dict[str, list[float]] = {}
        for p in groups[key]:
            if p.get("measured_id_gain") is not None:
                gains.setdefault(str(p["method"]), []).append(float(p["measured_id_gain"]))
        means = [sum(v) / len(v) for v in gains.values()]
        return max(means) - min(means) if len(means) > 1 else 0.0

    def strength(key: tuple) -> tuple:
        return (-measured(key), -spread(key), key[1], key[0])

    chosen: list[tuple] = []
    lead, own_first = "", False
    if first is not None:
        model, dataset, shots = first
        own = [k for k in groups if _model_name(k[0]) == str(model) and k[1] == str(dataset)]
        if own:
            best = min(own, key=lambda k: (k[2] != shots, strength(k)))
            chosen.append(best)
            own_first = True
            lead = f"First, your pair ({_model_name(best[0])} on {best[1]}, {best[2]} shots). "
        else:
            lead = f"Your pair ({model} on {dataset}) has no runs in the history, so no panel. "
    at_common = sorted((k for k in groups if k[2] == common), key=strength)
    elsewhere = sorted((k for k in groups if k[2] != common), key=lambda k: (strength(k), str(k[2])))
    seen = {k[1] for k in chosen}
    for ordered in (at_common, elsewhere):
        for spread in (True, False):  # one pair per dataset first, then a second pair of a dataset
            for key in ordered:
                if len(chosen) >= max_panels:
                    break
                if key in chosen or (spread and key[1] in seen):
                    continue
                chosen.append(key)
                seen.add(key[1])
    others = sorted({k[2] for k in chosen[int(own_first):] if k[2] != common},
                    key=lambda s: -1 if s is None else s)
    caption = (
        f"{lead}Panels: {len(chosen)} of {len(groups)} held-out (model, dataset, shots) groups, those with the "
        f"most methods measured at the most common shot count ({common} shots, {shot_counts[common]} groups), "
        "then those whose methods' measured gains differ most (where the choice matters), at most one per "
        "dataset until every dataset has one"
        + (f"; then groups at {', '.join(map(str, others))} shots" if others else "") + "."
    )
    return chosen, caption


def plot_pairs(predictions: Sequence[Mapping[str, Any]], keys: Sequence[tuple] | None = None) -> str:
    """One panel per (model key, dataset, shots) group of ``keys`` (default: ``pair_panels``):
    each method's held-out predicted ID gain against its predicted cost in seconds, with both
    intervals, and every measured run of the method as an open circle."""
    from matplotlib.figure import Figure

    groups = _pair_groups(predictions)
    keys = [k for k in (pair_panels(predictions)[0] if keys is None else keys) if k in groups]
    if not keys:
        return "<p>No held-out predictions with both gain and cost.</p>"
    methods = method_order({str(p["method"]) for k in keys for p in groups[k]})
    colours = method_colours(methods)
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.8 * nrows))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for m in methods:
            sel = [p for p in groups[key] if p["method"] == m]
            if not sel:
                continue
            p = sel[0]
            c, g = math.exp(p["predicted_cost"]), p["predicted_id_gain"]
            xerr = ([[c - math.exp(p["lo_cost"])], [math.exp(p["hi_cost"]) - c]]
                    if p.get("lo_cost") is not None else None)
            yerr = [[g - p["lo_id_gain"]], [p["hi_id_gain"] - g]] if p.get("lo_id_gain") is not None else None
            ax.errorbar([c], [g], xerr=xerr, yerr=yerr, fmt="o", color=colours[m], capsize=2, label=tex_safe(m))
            done = [q for q in sel if q.get("measured_id_gain") is not None and q.get("measured_cost") is not None]
            if done:
                ax.scatter([math.exp(q["measured_cost"]) for q in done], [q["measured_id_gain"] for q in done], s=40,
                           facecolors="none", edgecolors=colours[m])
        log_seconds_axis(ax, "x")
        ax.axhline(0, color="#bbb", lw=0.8)
        model, dataset, shots = key
        ax.set_title(tex_safe(f"{_model_name(model)} on {dataset}, {shots} shots"), fontsize=9)
        ax.set_xlabel("predicted cost, seconds (log)")
        ax.set_ylabel("predicted ID gain")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m], marker="o", ls="-", label=tex_safe(m)) for m in methods]
    handles.append(Line2D([], [], color="#555", marker="o", mfc="none", ls="", label="measured run"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.8 * nrows)))  # room for the legend above the panels
    return figure_png(fig)


def distinct_signals(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(signal, other signals with the same value on every run) for every distinct signal,
    in name order: identical signals are drawn once."""
    from .predictor import row_signals

    names = sorted(set().union(*[row_signals(r) for r in rows])) if rows else []
    columns = {n: tuple(round(row_signals(r).get(n, math.nan), 9) for r in rows) for n in names}
    out: list[tuple[str, list[str]]] = []
    seen: dict[tuple, int] = {}
    for n in names:
        key = tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in columns[n])
        if key in seen:
            out[seen[key]][1].append(n)
        else:
            seen[key] = len(out)
            out.append((n, []))
    return out


def plot_signals(rows: Sequence[Mapping[str, Any]]) -> str:
    """One small panel per distinct signal: its value against the measured ID gain, one colour
    per method, Spearman over all runs in the title."""
    from matplotlib.figure import Figure

    from .predictor import row_method, row_signals, row_targets, spearman

    signals = distinct_signals(rows)
    if not signals:
        return "<p>No signals recorded.</p>"
    import numpy as np

    cols = 4
    nrows = math.ceil(len(signals) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.8 * nrows))
    methods = method_order({row_method(r) for r in rows})
    colours = method_colours(methods)
    gains = np.array([row_targets(r)["id_gain"] for r in rows])
    for i, (name, same) in enumerate(signals):
        ax = fig.add_subplot(nrows, cols, i + 1)
        xs = np.array([row_signals(r).get(name, math.nan) for r in rows])
        for m in methods:
            sel = np.array([row_method(r) == m for r in rows]) & np.isfinite(xs) & np.isfinite(gains)
            if sel.any():
                ax.scatter(xs[sel], gains[sel], s=10, alpha=0.8, color=colours[m], label=tex_safe(m))
        rho = spearman(xs, gains)
        title = name + (f" (= {', '.join(same)})" if same else "")
        ax.set_title(tex_safe(f"{title}\nSpearman {rho:+.2f}" if math.isfinite(rho) else f"{title}\nSpearman n/a"),
                     fontsize=8)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("measured ID gain", fontsize=8)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return figure_png(fig)


def cell_text(v: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits, None empty, the rest escaped."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}g}"
    return html.escape(str(v))


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Mapping[str, str] | None = None,
               *, raw: Sequence[str] = (), left: Sequence[str] = ()) -> str:
    """A table inside a box that scrolls sideways when it is wider than the page (it never
    pushes the page wider). ``headers`` renames columns; cells of the ``raw`` columns are HTML
    already (the caller escaped them); ``left`` columns are left-aligned (text); a row's
    ``_class`` becomes its CSS class."""
    headers = headers or {}
    head = "".join(f"<th class='l'>{html.escape(headers.get(c, c))}</th>" if c in left else
                   f"<th>{html.escape(headers.get(c, c))}</th>" for c in columns)

    def cell(r: Mapping[str, Any], c: str) -> str:
        text = str(r.get(c) or "") if c in raw else cell_text(r.get(c))
        return f"<td class='l'>{text}</td>" if c in left else f"<td>{text}</td>"

    def tr(r: Mapping[str, Any]) -> str:
        cls = f" class='{html.escape(str(r['_class']))}'" if r.get("_class") else ""
        return f"<tr{cls}>" + "".join(cell(r, c) for c in columns) + "</tr>"

    body = "".join(tr(r) for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3;white-space:nowrap}td:first-child,th:first-child{text-align:left}td.l,th.l{text-align:left}
img{max-width:100%}.note{color:#555}.warn{color:#a33}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
td.n{white-space:nowrap}td.cmd{text-align:left;border-top:none;color:#333;padding-left:2.5em}
td.cmd code{font-size:12px}
table.plan tbody tr:nth-child(odd) td{border-bottom:none}
tr.best td,tr.mine td{background:#fff6d5}tr.best td.n{font-weight:600}
"""


def page(title: str, parts: Sequence[str]) -> str:
    """A complete HTML document: ``title`` (plain text) and the body's parts (HTML)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


#: The held-out evaluation's columns: short headers, explained in ``BASELINE_NOTE``.
TARGET_HEADERS = {"spearman": "Spearman", "mae": "MAE", "coverage": "coverage", "interval": "level",
                  "median_width": "median width"}
TARGET_NOTE = ("Spearman: rank correlation of held-out prediction and measurement; MAE: mean absolute error (accuracy "
               "for the gains, natural log of seconds for the cost); "
               "seed-noise MAE: the MAE between seeds of one configuration (the floor); coverage: share of held-out "
               "runs inside the interval of nominal level <i>level</i>; median width: of those intervals; n: runs.")
BASELINE_HEADERS = {
    "name": "predictor or baseline", "id_gain_spearman": "ID ρ", "id_gain_mae": "ID MAE",
    "ood_change_spearman": "OOD ρ", "ood_change_mae": "OOD MAE", "cost_spearman": "cost ρ",
    "top1_gain": "top-1 gain", "regret_gain": "regret gain", "groups_gain": "groups gain",
    "top1_balanced": "top-1 bal.", "regret_balanced": "regret bal.", "groups_balanced": "groups bal.",
}
BASELINE_NOTE = (
    "Columns: ID ρ / OOD ρ / cost ρ: Spearman correlation of the held-out prediction with the measured ID gain, "
    "OOD change and cost; ID MAE / OOD MAE: mean absolute error (accuracy units, 0.01 = 1 point). Per held-out "
    "(model, dataset, shots) group with at least two methods measured: top-1 = share of groups where the "
    "recommended method is the best measured one; regret = best measured value minus the recommended method's, "
    "averaged; groups = how many groups. <i>gain</i>: objective ID gain; <i>bal.</i>: balanced, ID gain + OOD "
    "change. best-single-method is chosen on the training folds. Numbers to 3 significant digits; every digit is in "
    "<code>advisor predictor evaluate --json</code> (keys <code>regret_gain</code>, <code>top1_balanced</code> ...)."
)


def build_report(rows: Sequence[Mapping[str, Any]], stored: Mapping[str, Any] | None = None, *, title: str = "",
                 estimator: Any = None, first_pair: PairKey | None = None) -> str:
    """The report's HTML for these history rows (and the stored predictor, when there is one).
    ``estimator`` (an unfitted ``AdvisorPredictor``) overrides the default hyper-parameters;
    ``first_pair`` (model name, dataset, shots) is shown first among the per-pair panels."""
    parts = [f"<h1>advisor report{(': ' + html.escape(title)) if title else ''}</h1>",
             f"<p class='note'>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>"]
    parts += history_sections(rows, stored, estimator=estimator, first_pair=first_pair)
    return page("advisor report", parts)


def history_sections(rows: Sequence[Mapping[str, Any]], stored: Mapping[str, Any] | None = None, *,
                     estimator: Any = None, first_pair: PairKey | None = None) -> list[str]:
    """The history report's sections (headed ``<h2>``), for ``build_report`` and a plan page."""
    from .predictor import FittedPredictor, evaluate, row_dataset, row_method, row_model

    if not rows:
        raise ReportError("the history has no runs: nothing to report (record runs with `advisor run`)")
    parts: list[str] = []
    datasets = sorted({row_dataset(r) for r in rows})
    models = sorted({row_model(r) for r in rows})
    methods = method_order({row_method(r) for r in rows})
    parts.append("<h2>History</h2>")
    parts.append(
        f"<p>{len(rows)} runs; {len(datasets)} datasets ({html.escape(', '.join(datasets))}); "
        f"{len(models)} models ({html.escape(', '.join(models))}); methods: {html.escape(', '.join(methods))}.</p>"
    )
    if stored is not None:
        try:
            est = FittedPredictor.from_stored(stored)
            parts.append(f"<p>Stored predictor: trained {html.escape(str(stored.get('created_at')))} on "
                         f"{est.n_runs} runs, {est.n_features} features.</p>")
        except PredictorError as exc:
            parts.append(f"<p class='note'>Stored predictor unusable: {html.escape(str(exc))}</p>")

    parts.append("<h2>Held-out evaluation (leave-one-dataset-out)</h2>")
    if len(datasets) >= 2:
        ev = evaluate(rows, holdout="dataset", estimator=estimator)
        parts.append(
            "<p class='note'>For each dataset, the predictor (with its interval calibration) and every baseline "
            "were fitted on the runs of the other datasets only, then asked about the held-out dataset's runs.</p>"
        )
        noise = ev.get("seed_noise") or {}
        target_rows = [{"target": t, **v, "seed-noise MAE": (noise.get(t) or {}).get("mad")}
                       for t, v in ev["targets"].items()]
        parts.append("<h3>Per target</h3>")
        parts.append(html_table(target_rows, ["target", "spearman", "mae", "seed-noise MAE", "coverage", "interval",
                                              "median_width", "n"], TARGET_HEADERS))
        parts.append(f"<p class='note'>{TARGET_NOTE}</p>")
        parts.append("<h3>Calibration of the intervals</h3>")
        parts.append(plot_calibration(ev["calibration"]))
        parts.append("<h3>Predicted vs measured, held out</h3>")
        parts.append(plot_predicted_vs_measured(ev["predictions"]))
        parts.append("<h3>Gain against cost per pair (held out)</h3>")
        keys, caption = pair_panels(ev["predictions"], first=first_pair)
        parts.append(f"<p class='note'>Filled: predicted with its interval (both axes); open: each measured run. "
                     f"{html.escape(caption)}</p>")
        parts.append(plot_pairs(ev["predictions"], keys))
        parts.append("<h3>Recommendation quality, with baselines</h3>")
        cols = list(BASELINE_HEADERS)
        parts.append(html_table(ev["baselines"], cols, BASELINE_HEADERS))
        parts.append(f"<p class='note'>{BASELINE_NOTE}</p>")
    else:
        parts.append("<p>Needs runs on at least two datasets.</p>")

    parts.append("<h2>Signals against measured in-domain gain</h2>")
    parts.append(plot_signals(rows))
    return parts


def check_output(output: str | Path) -> Path:
    """The report's file, refused (one line) before any work when it cannot be written."""
    from .atomic import FileWriteError, check_target, os_reason, short_path

    path = Path(output)
    try:
        if path.is_dir():
            raise ReportError(f"{path} is a directory; give a file name such as report.html")
        check_target(path)  # a missing folder or a name too long: refused before the history is read
    except FileWriteError as exc:
        raise ReportError(str(exc)) from None
    except OSError as exc:
        raise ReportError(f"cannot write {short_path(path)}: {os_reason(exc)}") from None
    return path


def write_html(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a full disk leaves
    no partial or empty report."""
    from .atomic import FileWriteError, atomic_write

    try:
        atomic_write(path, lambda f: f.write(text))
    except FileWriteError as exc:
        raise ReportError(str(exc)) from None
    return path


def write_report(db: str | None, output: str | Path) -> Path:
    """Build the report for the history at ``db`` and write it to ``output``."""
    from .history import open_history

    path = check_output(output)
    history = open_history(db, must_exist=True)
    return write_html(path, build_report(history.training_rows(), history.load_predictor(DEFAULT_PREDICTOR)))
