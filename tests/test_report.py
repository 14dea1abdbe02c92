"""``advisor report``: a self-contained HTML file with embedded PNG plots and the baseline table.

Runs are SYNTHETIC (tests/synthetic_history.py), in a temporary SQLite history.
"""

from __future__ import annotations

import base64
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import pytest
from click.testing import CliRunner

from advisor.report import ReportError, build_report
from synthetic_history import SMALL, record_synthetic, synthetic_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_has_lodo_plot_signal_plots_and_baseline_table():
    from advisor.predictor import AdvisorPredictor

    rows = synthetic_rows(n_datasets=3, shots=(16,))
    text = build_report(rows, estimator=AdvisorPredictor(**SMALL))
    imgs = _images(text)
    assert len(imgs) == 2 and all(i.startswith(PNG_MAGIC) and len(i) > 5000 for i in imgs)
    for word in ("leave-one-dataset-out", "iimm-linear", "best-single-method", "zero-shot-only", "knn", "random",
                 "regret_gain", "spearman", "15 runs; 3 datasets"):
        assert word in text
    assert text.count("<table>") == 2


def test_report_with_one_dataset_skips_lodo_and_escapes_names():
    rows = synthetic_rows(n_datasets=1, shots=(16,))
    for r in rows:
        r["dataset_desc"] = dict(r["dataset_desc"], name="<b>odd</b>")
    text = build_report(rows)
    assert "Needs runs on at least two datasets" in text and "&lt;b&gt;odd&lt;/b&gt;" in text
    assert "<b>odd</b>" not in text
    assert len(_images(text)) == 1  # the signal plots only


def test_empty_history_is_a_one_line_error():
    with pytest.raises(ReportError, match="no runs"):
        build_report([])


def test_cli_report_writes_html(tmp_path, monkeypatch):
    from advisor.cli import cli

    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "h.db")
    record_synthetic(db, synthetic_rows(n_datasets=3, shots=(16,)))
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", "--db", db, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("<!doctype html>") and len(_images(out.read_text())) == 2
    r = CliRunner().invoke(cli, ["report", "--db", db, "-o", str(tmp_path / "missing" / "r.html")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "empty.db"), "-o", str(out)])
    assert r.exit_code == 1 and r.output.startswith("Error: the history has no runs")
