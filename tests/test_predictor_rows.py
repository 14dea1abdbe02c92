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

