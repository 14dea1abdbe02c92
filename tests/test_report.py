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


def test_report_has_calibration_heldout_pair_and_signal_plots_and_tables():
    from advisor.predictor import AdvisorPredictor

    rows = synthetic_rows(n_datasets=3, shots=(16,))
    text = build_report(rows, estimator=AdvisorPredictor(**SMALL))
    imgs = _images(text)
    # calibration, predicted vs measured, gain vs cost per pair, signals
    assert len(imgs) == 4 and all(i.startswith(PNG_MAGIC) and len(i) > 5000 for i in imgs)
    for word in ("leave-one-dataset-out", "iimm-linear", "best-single-method", "zero-shot-only", "knn", "random",
                 "regret_gain", "Spearman", "coverage", "Calibration", "15 runs; 3 datasets"):
        assert word in text
    assert text.count("<table>") == 2


def test_identical_signals_are_drawn_once_and_every_signal_is_drawn():
    from advisor.report import distinct_signals

    rows = synthetic_rows(n_datasets=3, shots=(16,))
    for i, r in enumerate(rows):
        r["signals"] = dict(r["signals"], gap_copy=r["signals"]["gap"],
                            **{f"extra_{k:02d}": float(i * k) for k in range(30)})  # more than 24 signals
    found = dict(distinct_signals(rows))
    assert found["gap"] == ["gap_copy"] and "gap_copy" not in found
    assert {f"extra_{k:02d}" for k in range(1, 30)} <= set(found)  # extra_00 is 0 everywhere, like none


def test_a_method_named_like_mathtext_does_not_break_the_report():
    """Issue 16: a method called ``$x$`` (or with a lone ``$``) once broke matplotlib's mathtext."""
    from advisor.predictor import AdvisorPredictor
    from advisor.report import tex_safe

    assert tex_safe("$x$") == r"\$x\$"
    rows = synthetic_rows(n_datasets=3, shots=(16,), methods=("lora", "$x$", "a$b", r"$\frac{1}{0$"))
    text = build_report(rows, estimator=AdvisorPredictor(**SMALL))
    assert len(_images(text)) == 4 and "$x$" in text


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
    assert out.read_text().startswith("<!doctype html>") and len(_images(out.read_text())) == 4
    r = CliRunner().invoke(cli, ["report", "--db", db, "-o", str(tmp_path / "missing" / "r.html")])
    assert r.exit_code == 1 and "does not exist" in r.output
    from advisor.history import open_history

    open_history(str(tmp_path / "empty.db")).close()  # an empty history (report refuses a missing file)
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "empty.db"), "-o", str(out)])
    assert r.exit_code == 1 and r.output.startswith("Error: the history has no runs")


def test_wide_tables_scroll_in_their_box_with_3_significant_digits_and_their_columns_explained():
    """Issue 24: the baseline table overflowed the page (12 columns of 16-digit floats)."""
    from advisor.predictor import AdvisorPredictor

    text = build_report(synthetic_rows(n_datasets=3, shots=(16,)), estimator=AdvisorPredictor(**SMALL))
    assert text.count("<div class='scroll'><table>") == text.count("<table>") == 2
    assert ".scroll{overflow-x:auto" in text
    floats = re.findall(r"<td>-?([0-9]*\.[0-9]+)(?:e[+-][0-9]+)?</td>", text)  # integers (run counts) stay whole
    assert floats and all(len(f.replace(".", "").lstrip("0")) <= 3 for f in floats), floats
    assert "ID ρ" in text and "Columns: ID ρ / OOD ρ / cost ρ: Spearman correlation" in text


def _prediction(model, dataset, shots, method, gain, measured=True):
    """One held-out prediction in the shape ``evaluate`` returns (SYNTHETIC numbers)."""
    p = {"model": f"{model}||64", "dataset": dataset, "shots": shots, "method": method, "predicted_id_gain": gain,
         "predicted_cost": 2.0, "lo_id_gain": gain - 0.1, "hi_id_gain": gain + 0.1, "lo_cost": 1.5, "hi_cost": 2.5}
    if measured:
        p.update(measured_id_gain=gain, measured_cost=2.0)
    return p


def test_pair_panels_choose_the_most_methods_at_the_common_shots_spread_over_datasets():
    """Issue 24: the panels showed the largest shot count of the first six datasets by name."""
    from advisor.report import pair_panels

    preds = []
    for d in ("a-data", "b-data", "c-data"):
        for m, g in (("lora", 0.1), ("coop", 0.05), ("full", 0.2)):
            preds.append(_prediction("m1", d, 16, m, g * (3 if d == "c-data" else 1)))
            preds.append(_prediction("m2", d, 16, m, g, measured=m != "full"))  # two methods measured only
        preds.append(_prediction("m1", d, 64, "lora", 0.3))  # the largest shot count, one method
    keys, caption = pair_panels(preds, max_panels=4)
    # most methods at 16 shots; c-data's methods differ most; one per dataset, then m2's best pair
    assert keys[:3] == [("m1||64", "c-data", 16), ("m1||64", "a-data", 16), ("m1||64", "b-data", 16)]
    assert keys[3][2] == 16 and keys[3][0] == "m2||64"
    assert "most common shot count (16 shots" in caption and "at most one per dataset" in caption
    keys, caption = pair_panels(preds, max_panels=2, first=("m2", "b-data", 64))
    assert keys == [("m2||64", "b-data", 16), ("m1||64", "c-data", 16)]  # its pair first, at the shots it has
    assert caption.startswith("First, your pair (m2 on b-data, 16 shots).")
    keys, caption = pair_panels(preds, max_panels=2, first=("unseen", "b-data", 16))
    assert len(keys) == 2 and caption.startswith("Your pair (unseen on b-data) has no runs in the history")


def test_cli_report_refuses_plan_options_without_model(tmp_path):
    from advisor.cli import cli

    r = CliRunner().invoke(cli, ["report", "--shots", "4", "--objective", "gain", "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "--shots, --objective describe a plan to ask for: give --model too" in r.output
    r = CliRunner().invoke(cli, ["report", "--with-history", "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "give --model or --from-json" in r.output
    r = CliRunner().invoke(cli, ["report", "--model", "lit-offline", "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "--model needs --dataset" in r.output
