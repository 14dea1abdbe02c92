"""Rows and targets, the feature schema, history-size rules and the training hash (advisor.predictor.rows/features/training)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest

from advisor.predictor import (
    CORE_FEATURES,
    FeatureSchema,
    history_ready,
    row_targets,
    targets_matrix,
    training_hash,
)
from synthetic_history import synthetic_rows


def test_row_targets_are_gain_mean_ood_change_and_log_seconds():
    row = {"id_acc_before": 0.25, "id_acc_after": 0.75, "ood_before": {"a": 0.5, "b": 0.2, "c": 0.9},
           "ood_after": {"a": 0.4, "b": 0.3}, "wall_time_s": 20.0}
    t = row_targets(row)
    assert t["id_gain"] == pytest.approx(0.5)
    assert t["ood_change"] == pytest.approx(((0.4 - 0.5) + (0.3 - 0.2)) / 2)  # only sets measured both times
    assert t["cost"] == pytest.approx(math.log(20.0))
    t2 = row_targets({"id_acc_before": 0.1, "id_acc_after": 0.2, "ood_before": {}, "ood_after": {}, "wall_time_s": 0})
    assert math.isnan(t2["ood_change"]) and math.isnan(t2["cost"])


def test_schema_takes_union_of_signals_and_missing_values_are_nan():
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    rows[0]["signals"]["third_party_score"] = 1.5  # a plugin metric measured for one pair only
    schema = FeatureSchema.from_rows(rows)
    assert "third_party_score" in schema.signals and "iimm" in schema.signals
    X = schema.matrix(rows)
    j = schema.names.index("sig:third_party_score")
    assert X[0, j] == 1.5 and np.isnan(X[1:, j]).all()
    # method is categorical; unknown categories become missing
    jm = schema.names.index("method")
    case = dict(rows[0], method="some-new-tuner")
    assert np.isnan(schema.matrix([case])[0, jm])
    assert schema.names[: len(CORE_FEATURES)] == list(CORE_FEATURES)
    assert schema.names.index("ds_domain:texture") > 0


def test_history_ready_needs_runs_and_datasets():
    ok, why = history_ready(synthetic_rows(n_datasets=2, shots=(4, 16)))  # 20 runs, 2 datasets
    assert not ok and "2 datasets" in why
    ok, why = history_ready(synthetic_rows(n_datasets=3, shots=(16,), methods=("lora", "coop", "full")))  # 9 runs
    assert not ok and "9 usable runs" in why
    assert history_ready(synthetic_rows(n_datasets=3, shots=(16,)))[0]


def test_training_hash_ignores_row_order_and_sees_measurement_changes():
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    h = training_hash(rows)
    assert training_hash(list(reversed(rows))) == h
    changed = [dict(r) for r in rows]
    changed[3] = dict(changed[3], id_acc_after=changed[3]["id_acc_after"] + 0.01)
    assert training_hash(changed) != h


def test_targets_matrix_shape():
    rows = synthetic_rows(n_datasets=2, shots=(16,))
    assert targets_matrix(rows).shape == (len(rows), 3)



def test_row_signals_keeps_finite_numbers_whatever_their_type():
    from advisor.predictor.rows import row_signals

    floats = {"a": 1.5, "b": float("inf"), "c": float("nan"), "d": -0.0}
    assert row_signals({"signals": floats}) == {"a": 1.5, "d": 0.0}
    mixed = {"a": 1.5, "i": 2, "s": "3.25", "bad": "x", "np": np.float64(0.5), "none": None, "ninf": np.float64("-inf")}
    got = row_signals({"signals": mixed})
    assert got == {"a": 1.5, "i": 2.0, "s": 3.25, "np": 0.5} and all(type(v) is float for v in got.values())
    assert list(got) == ["a", "i", "s", "np"]  # the row's order
    assert row_signals({"signals": '{"a": 1.0, "b": "2"}'}) == {"a": 1.0, "b": 2.0}  # JSON text as stored
    assert row_signals({"signals": None}) == {} and row_signals({}) == {}


def test_ood_change_is_the_mean_over_reference_sets_as_numpy_computes_it():
    rng = np.random.RandomState(3)
    for n in (1, 2, 7, 8, 9, 25):  # numpy sums pairwise from 8 values on
        before = {f"r{k}": float(v) for k, v in enumerate(rng.uniform(0, 1, n))}
        after = {k: float(v + rng.normal(0, 0.1)) for k, v in before.items()}
        want = float(np.mean([after[k] - before[k] for k in before]))
        assert row_targets({"ood_before": before, "ood_after": after})["ood_change"] == want


def test_training_hash_of_the_shipped_history_matches_its_stored_predictor(tmp_path):
    """The stored hash was computed by an earlier version of ``training_hash``: a faster one must
    give the same value, or every `advisor recommend` on the shipped history would retrain."""
    import shutil
    from pathlib import Path

    from advisor.history import open_history

    copy = tmp_path / "registry.db"
    shutil.copy(Path(__file__).resolve().parent.parent / "registry.db", copy)
    h = open_history(str(copy))
    stored = h.load_predictor("default")
    assert stored is not None
    assert training_hash(h.training_rows()) == stored["training_hash"]


def test_training_hash_order_free_with_run_ids_that_prefix_quote_or_repeat():
    rows = synthetic_rows(n_datasets=2, shots=(16,))[:6]
    ids = ["a", "ab", 'a"b', "a\\", "", ""]  # prefixes, a quote, a backslash, a repeated (empty) id
    rows = [dict(r, run_id=i) for r, i in zip(rows, ids)]
    h = training_hash(rows)
    rng = np.random.RandomState(0)
    for _ in range(5):
        assert training_hash([rows[i] for i in rng.permutation(len(rows))]) == h
    unique = [dict(r, run_id=f"run-{k}") for k, r in enumerate(rows)]
    hu = training_hash(unique)
    assert all(training_hash([unique[i] for i in rng.permutation(len(unique))]) == hu for _ in range(5))
