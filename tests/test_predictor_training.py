"""Training against a real SQLite history, and the `advisor predictor` commands (advisor.predictor.training)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest

from advisor.errors import PredictorError
from advisor.predictor import CORE_FEATURES, AdvisorPredictor, FittedPredictor, training_hash
from synthetic_history import SMALL, record_synthetic, synthetic_rows


@pytest.fixture
def synthetic_db(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "history.db")
    record_synthetic(db, synthetic_rows(n_datasets=4, shots=(16,)))
    return db


def test_train_predictor_on_real_history_round_trips(synthetic_db):
    from advisor.history import open_history
    from advisor.predictor import train_predictor

    h = open_history(synthetic_db)
    info = train_predictor(h, estimator=AdvisorPredictor(**SMALL))
    stored = h.load_predictor("default")
    assert stored["training_hash"] == info["training_hash"] == training_hash(h.training_rows())
    assert stored["features"][: len(CORE_FEATURES)] == list(CORE_FEATURES)
    assert {"sig:iimm", "sig:gap", "sig:unrelated"} <= set(stored["features"])
    assert set(stored["scores"]["targets"]) == {"id_gain", "ood_change", "cost"}
    est = FittedPredictor.from_stored(stored)
    rows = h.training_rows()
    fresh = AdvisorPredictor(**SMALL).fit_rows(rows)
    np.testing.assert_array_equal(est.predict(est.rows_matrix(rows)), fresh.predict(fresh.rows_matrix(rows)))


def test_train_refuses_a_too_small_history(tmp_path, monkeypatch):
    from advisor.history import open_history
    from advisor.predictor import train_predictor

    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    with pytest.raises(PredictorError, match="0 usable runs"):
        train_predictor(open_history(str(tmp_path / "empty.db")))


def test_cli_predictor_train_evaluate_show(synthetic_db):
    from click.testing import CliRunner

    from advisor.cli import cli

    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(cli, ["predictor", "show", "--db", synthetic_db])
    assert r.exit_code == 1 and "no predictor stored" in r.output
    r = runner.invoke(cli, ["predictor", "train", "--db", synthetic_db, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["n_runs"] == 20 and len(info["datasets"]) == 4
    r = runner.invoke(cli, ["predictor", "evaluate", "--db", synthetic_db])
    assert r.exit_code == 0, r.output
    for word in ("spearman", "mae", "id_gain", "ood_change", "cost", "coverage @80%", "seed-noise MAE",
                 "best-single-method", "zero-shot-only", "iimm-linear", "knn", "random", "regret gain", "calibration"):
        assert word in r.output
    # The README's copy (scripts/readme_results.py) renders the --json document with the
    # command's own function: it must be exactly what the command prints.
    from advisor.cli.predictor import evaluation_text

    doc = runner.invoke(cli, ["predictor", "evaluate", "--db", synthetic_db, "--json"])
    with runner.isolation(env={"COLUMNS": "200"}):
        rendered = evaluation_text(json.loads(doc.output))
    assert rendered + "\n" == r.output
    r = runner.invoke(cli, ["predictor", "show", "--db", synthetic_db, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["up_to_date"] is True
    # one more run: `show` sees the change from the stored summary's state, without reading every run
    from synthetic_history import record_synthetic, synthetic_rows

    extra = synthetic_rows(n_datasets=1, shots=(16,), seeds=(5,))[:1]  # a new seed: a new run
    extra[0]["run_id"] = "syn-extra"
    record_synthetic(synthetic_db, extra)
    r = runner.invoke(cli, ["predictor", "show", "--db", synthetic_db])
    assert r.exit_code == 0 and "The history changed since (21 runs now)" in r.output
