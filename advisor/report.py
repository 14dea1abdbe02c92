"""``advisor report``: one self-contained HTML file about the history and the predictor.

Sections: the history in numbers; the held-out evaluation (leave one dataset out: the honest
view of the predictor) with its tables; the plots a user decides from:

- calibration: nominal interval level against the empirical coverage of held-out runs, per target;
- held-out predicted vs measured, per target, labelled by dataset, with the intervals;
- per (model, dataset) pair: each method's predicted gain against its predicted cost, both
  with their intervals, beside what was measured;
- every signal against the measured gain, Spearman in the title (signals with identical values
  on every run are drawn once, their names joined).

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


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


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
    return _png(fig)


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
    return _png(fig)


def plot_pairs(predictions: Sequence[Mapping[str, Any]], max_panels: int = MAX_PAIR_PANELS) -> str:
    """Per (model, dataset, shots) group (at most ``max_panels``, the largest shots first): each
    method's held-out predicted ID gain against its predicted cost in seconds, with both
    intervals, and the measured values as open circles."""
    from matplotlib.figure import Figure

    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for p in predictions:
        if p.get("predicted_id_gain") is not None and p.get("predicted_cost") is not None:
            groups.setdefault((str(p["model"]), str(p["dataset"]), p.get("shots")), []).append(p)
    if not groups:
        return "<p>No held-out predictions with both gain and cost.</p>"
    by_dataset: dict[str, tuple] = {}
    for key in sorted(groups, key=lambda k: (-(k[2] or 0), k)):
        by_dataset.setdefault(key[1], key)  # one panel per dataset, its largest shots
    keys = list(by_dataset.values())[:max_panels]
    methods = method_order({str(p["method"]) for ps in groups.values() for p in ps})
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
            xerr = [[c - math.exp(p["lo_cost"])], [math.exp(p["hi_cost"]) - c]] if p.get("lo_cost") is not None else None
            yerr = [[g - p["lo_id_gain"]], [p["hi_id_gain"] - g]] if p.get("lo_id_gain") is not None else None
            ax.errorbar([c], [g], xerr=xerr, yerr=yerr, fmt="o", color=colours[m], capsize=2, label=tex_safe(m))
            if p.get("measured_id_gain") is not None and p.get("measured_cost") is not None:
                ax.scatter([math.exp(p["measured_cost"])], [p["measured_id_gain"]], s=40, facecolors="none",
                           edgecolors=colours[m])
        ax.set_xscale("log")
        ax.axhline(0, color="#bbb", lw=0.8)
        model, dataset, shots = key
        ax.set_title(tex_safe(f"{model.split('|')[0]} on {dataset}, {shots} shots"), fontsize=9)
        ax.set_xlabel("predicted cost, seconds (log)")
        ax.set_ylabel("predicted ID gain")
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


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
    return _png(fig)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555}
"""


def build_report(rows: Sequence[Mapping[str, Any]], stored: Mapping[str, Any] | None = None, *, title: str = "",
                 estimator: Any = None) -> str:
    """The report's HTML for these history rows (and the stored predictor, when there is one).
    ``estimator`` (an unfitted ``AdvisorPredictor``) overrides the default hyper-parameters."""
    from .predictor import FittedPredictor, evaluate, row_dataset, row_method, row_model

    if not rows:
        raise ReportError("the history has no runs: nothing to report (record runs with `advisor run`)")
    parts = [f"<h1>advisor report{(': ' + html.escape(title)) if title else ''}</h1>",
             f"<p class='note'>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>"]
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
        parts.append(_table(target_rows, ["target", "spearman", "mae", "seed-noise MAE", "coverage", "interval",
                                          "median_width", "n"]))
        parts.append("<h3>Calibration of the intervals</h3>")
        parts.append(plot_calibration(ev["calibration"]))
        parts.append("<h3>Predicted vs measured, held out</h3>")
        parts.append(plot_predicted_vs_measured(ev["predictions"]))
        parts.append("<h3>Gain against cost per pair (held out)</h3>")
        parts.append("<p class='note'>Filled: predicted with its interval (both axes); open: measured.</p>")
        parts.append(plot_pairs(ev["predictions"]))
        parts.append("<h3>Recommendation quality, with baselines</h3>")
        parts.append(
            "<p class='note'>Per held-out (model, dataset, shots) group with at least two methods measured: top-1 = "
            "the recommended method is the best measured one; regret = best measured value minus the recommended "
            "method's (gain objective: ID gain; balanced: ID gain + OOD change). best-single-method is chosen on the "
            "training folds.</p>"
        )
        cols = ["name", "id_gain_spearman", "id_gain_mae", "ood_change_spearman", "ood_change_mae", "cost_spearman",
                "top1_gain", "regret_gain", "groups_gain", "top1_balanced", "regret_balanced", "groups_balanced"]
        parts.append(_table(ev["baselines"], cols))
    else:
        parts.append("<p>Needs runs on at least two datasets.</p>")

    parts.append("<h2>Signals against measured in-domain gain</h2>")
    parts.append(plot_signals(rows))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>advisor report</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>"
    )


def write_report(db: str | None, output: str | Path) -> Path:
    """Build the report for the history at ``db`` and write it to ``output``."""
    from .history import open_history

    from .atomic import FileWriteError, atomic_write, check_target

    path = Path(output)
    try:
        if path.is_dir():
            raise ReportError(f"{path} is a directory; give a file name such as report.html")
        check_target(path)  # a missing folder or a name too long: refused before the history is read
    except FileWriteError as exc:
        raise ReportError(str(exc)) from None
    except OSError as exc:
        from .atomic import os_reason, short_path

        raise ReportError(f"cannot write {short_path(path)}: {os_reason(exc)}") from None
    history = open_history(db, must_exist=True)
    text = build_report(history.training_rows(), history.load_predictor(DEFAULT_PREDICTOR))
    try:  # a temporary file renamed into place: a full disk leaves no partial or empty report
        atomic_write(path, lambda f: f.write(text))
    except FileWriteError as exc:
        raise ReportError(str(exc)) from None
    return path
