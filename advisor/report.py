"""``advisor report``: one self-contained HTML file about the history and the predictor.

Sections: the history in numbers; predicted vs measured gain and OOD change under
leave-one-dataset-out (the honest view of the predictor); the per-target and baseline tables;
each signal against the measured gain, one colour per method. Plots are drawn with matplotlib's
Agg canvas (no display, no pyplot global state) and embedded as base64 PNGs, so the file can be
mailed or attached to a pull request as is.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import AdvisorError, PredictorError

#: Method colours, stable across plots (third-party methods cycle through the rest).
COLOURS = {"full": "#d62728", "lora": "#1f77b4", "coop": "#2ca02c", "contcoop": "#17becf", "tpc_cma": "#9467bd"}
_EXTRA = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


class ReportError(AdvisorError):
    """The report cannot be written (empty history, unwritable path)."""


def _colour(method: str, extra: dict[str, str]) -> str:
    if method in COLOURS:
        return COLOURS[method]
    if method not in extra:
        extra[method] = _EXTRA[len(extra) % len(_EXTRA)]
    return extra[method]


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plot_predicted_vs_measured(predictions: Sequence[Mapping[str, Any]]) -> str:
    """Two panels (ID gain, OOD change): LODO prediction against measurement, per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    extra: dict[str, str] = {}
    for k, target in enumerate(("id_gain", "ood_change")):
        ax = fig.add_subplot(1, 2, k + 1)
        pts = [(p[f"measured_{target}"], p[f"predicted_{target}"], p["method"]) for p in predictions
               if p.get(f"measured_{target}") is not None and p.get(f"predicted_{target}") is not None]
        for m in sorted({p[2] for p in pts}):
            xs = [p[0] for p in pts if p[2] == m]
            ys = [p[1] for p in pts if p[2] == m]
            ax.scatter(xs, ys, s=22, alpha=0.8, color=_colour(m, extra), label=m)
        if pts:
            lo = min(min(p[0], p[1]) for p in pts)
            hi = max(max(p[0], p[1]) for p in pts)
            ax.plot([lo, hi], [lo, hi], color="#999", lw=1, ls="--")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"measured {target}")
        ax.set_ylabel(f"predicted {target} (dataset held out)")
        ax.set_title(f"{target}: leave-one-dataset-out")
    return _png(fig)


def plot_signals(rows: Sequence[Mapping[str, Any]], max_signals: int = 24) -> str:
    """One small panel per signal: its value against the measured ID gain, one colour per method."""
    from matplotlib.figure import Figure

    from .predictor import row_signals, row_method, row_targets

    names = sorted(set().union(*[row_signals(r) for r in rows]))[:max_signals] if rows else []
    if not names:
        return "<p>No signals recorded.</p>"
    cols = 4
    nrows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.7 * nrows))
    extra: dict[str, str] = {}
    methods = sorted({row_method(r) for r in rows})
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for m in methods:
            pts = [(row_signals(r).get(name), row_targets(r)["id_gain"]) for r in rows if row_method(r) == m]
            pts = [p for p in pts if p[0] is not None and math.isfinite(p[1])]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.8, color=_colour(m, extra), label=m)
        ax.set_title(name, fontsize=9)
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
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555}
"""


def build_report(rows: Sequence[Mapping[str, Any]], stored: Mapping[str, Any] | None = None, *, title: str = "",
                 estimator: Any = None) -> str:
    """The report's HTML for these history rows (and the stored predictor, when there is one).
    ``estimator`` (an unfitted ``AdvisorPredictor``) overrides the default hyper-parameters."""
    from .predictor import FittedPredictor, evaluate_lodo, row_dataset, row_method, row_model

    if not rows:
        raise ReportError("the history has no runs: nothing to report (record runs with `advisor run`)")
    parts = [f"<h1>advisor report{(': ' + html.escape(title)) if title else ''}</h1>",
             f"<p class='note'>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>"]
    datasets = sorted({row_dataset(r) for r in rows})
    models = sorted({row_model(r) for r in rows})
    methods = sorted({row_method(r) for r in rows})
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

    parts.append("<h2>Predicted vs measured (leave-one-dataset-out)</h2>")
    if len(datasets) >= 2:
        ev = evaluate_lodo(rows, estimator=estimator)
        parts.append(
            "<p class='note'>For each dataset, the predictor and every baseline were fitted on the runs of the other "
            "datasets only, then asked about the held-out dataset's runs.</p>"
        )
        parts.append(plot_predicted_vs_measured(ev["predictions"]))
        parts.append("<h3>Per target</h3>")
        parts.append(_table([{"target": t, **v} for t, v in ev["targets"].items()], ["target", "spearman", "mae", "n"]))
        parts.append("<h3>Recommendation quality, with baselines</h3>")
        parts.append(
            "<p class='note'>Per held-out (model, dataset, shots) group with at least two methods measured: top-1 = "
            "the recommended method is the best measured one; regret = best measured value minus the recommended "
            "method's (gain objective: ID gain; balanced: ID gain + OOD change).</p>"
        )
        cols = ["name", "id_gain_spearman", "id_gain_mae", "ood_change_spearman", "ood_change_mae", "top1_gain",
                "regret_gain", "groups_gain", "top1_balanced", "regret_balanced", "groups_balanced"]
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

    path = Path(output)
    if path.exists() and path.is_dir():
        raise ReportError(f"{path} is a directory; give a file name such as report.html")
    if not path.parent.exists():
        raise ReportError(f"directory {path.parent} does not exist")
    history = open_history(db)
    text = build_report(history.training_rows(), history.load_predictor("default"))
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
