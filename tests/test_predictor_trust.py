"""Predictions a user can trust (issue 12), each behaviour on a real SQLite history file: feasible
gains, monotone shots, cost that extrapolates, conformal intervals whose coverage is computed on
held-out folds, out-of-support flags with exact digits, the holdout modes and the seed noise.
Rows are SYNTHETIC (tests/synthetic_history.py), written to a temporary history and read back."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest

from advisor.predictor import (
    AdvisorPredictor,
    EvaluationError,
    HistorySupport,
    calibrate,
    coverage,
    evaluate,
    holdout_folds,
    row_targets,
    score_quantile,
    seed_noise,
    shots_monotone,
    targets_matrix,
)
from advisor.predictor.spaces import model_targets
from synthetic_history import SMALL, record_synthetic, synthetic_rows

FAST = SMALL


def history_rows(tmp_path, rows):
    """Write rows into a real SQLite history and read them back as the predictor sees them."""
    from advisor.history import open_history

    tmp_path.mkdir(parents=True, exist_ok=True)
    db = str(tmp_path / "history.db")
    record_synthetic(db, rows)
    return open_history(db).training_rows()


def _with_shots(shots, slope):
    rows = synthetic_rows(n_datasets=4, shots=shots, noise=0.005)
    for r in rows:  # gain grows (slope > 0) or shrinks with log2(shots), on top of the planted relation
        r["id_acc_after"] = r["id_acc_before"] + max(-0.29, 0.1 + slope * math.log2(r["shots"]) + 0.05 * r["signals"]["iimm"])
    return rows


# ------------------------------------------------------------------------------- feasibility


def test_predicted_gains_and_intervals_are_feasible_for_a_nearly_solved_task(tmp_path):
    rows = history_rows(tmp_path, synthetic_rows(n_datasets=4, shots=(4, 16)))  # zero-shot 0.3, gains up to ~0.6
    case = dict(rows[0], id_acc_before=0.98, signals=dict(rows[0]["signals"], zero_shot_acc=0.98))
    cases = [dict(case, method=m) for m in ("full", "lora", "coop", "contcoop", "tpc_cma")]
    fp = AdvisorPredictor(**FAST).fit_rows(rows).model_
    p = fp.predict_rows(cases)
    g = 0
    for key in ("mean", "lo", "hi"):
        assert (p[key][:, g] <= 0.02 + 1e-12).all() and (p[key][:, g] >= -0.98 - 1e-12).all()
    # positive control: learning the raw gain predicts more than the 0.02 this task can gain
    raw = AdvisorPredictor(**FAST, gain_target="gain").fit_rows(rows).model_.predict_rows(cases)
    assert (raw["mean"][:, g] > 0.02).any()


def test_headroom_share_round_trips_and_bounds():
    from advisor.predictor import headroom_share, share_to_gain

    z = np.array([0.3, 0.3, 0.9, 0.9])
    gain = np.array([0.35, -0.15, 0.05, -0.45])
    share = headroom_share(gain, z)
    np.testing.assert_allclose(share, [0.5, -0.5, 0.5, -0.5])
    np.testing.assert_allclose(share_to_gain(share, z), gain)
    assert share_to_gain(np.array([5.0, -5.0]), np.array([0.9, 0.9])).tolist() == pytest.approx([0.1, -0.9])


# ------------------------------------------------------------------------------- shots and cost


def test_shots_are_monotone_where_the_history_supports_it(tmp_path):
    rows = history_rows(tmp_path, _with_shots((1, 4, 16), slope=0.04))
    Y = model_targets(rows, {"id_gain": "headroom", "cost": "per-image-epoch"})
    assert "id_gain" in shots_monotone(rows, Y)
    fp = AdvisorPredictor(**FAST).fit_rows(rows).model_
    shots_j = fp.feature_names.index("shots")
    assert fp.monotone[0][shots_j] == 1
    grid = [1, 2, 3, 4, 6, 8, 12, 16, 32, 1000]
    for m in ("full", "coop", "tpc_cma"):
        cases = [dict(rows[0], method=m, shots=s) for s in grid]
        gains = fp.predict_rows(cases)["mean"][:, 0]
        assert (np.diff(gains) >= -1e-12).all(), (m, gains)
    # a history where gains fall with shots gets no constraint on the gain
    falling = history_rows(tmp_path / "b", _with_shots((1, 4, 16), slope=-0.04))
    Yf = model_targets(falling, {"id_gain": "headroom", "cost": "per-image-epoch"})
    assert "id_gain" not in shots_monotone(falling, Yf)


def test_cost_scales_with_images_and_epochs_beyond_the_history(tmp_path):
    rows = history_rows(tmp_path, synthetic_rows(n_datasets=4, shots=(4, 16)))
    fp = AdvisorPredictor(**FAST).fit_rows(rows).model_
    assert fp.spaces["cost"] == "per-image-epoch"
    base = dict(rows[0], method="lora", shots=16)
    more_epochs = dict(base, hparams={"epochs": 40})  # the history ran 10
    more_images = dict(base, shots=1000)  # capped at the training split
    cost = fp.predict_rows([base, more_epochs, more_images])["mean"][:, 2]
    assert cost[1] - cost[0] == pytest.approx(math.log(4), abs=1e-9)  # 4x the epochs: log 4 more
    assert cost[2] > cost[0] + 1.0


# ------------------------------------------------------------------------------- intervals


def test_conformal_quantile_and_scores_follow_their_definition():
    scores = list(range(1, 11))
    assert score_quantile(scores, 0.8) == 9  # ceil(11 * 0.8) = 9th smallest
    assert score_quantile(scores, 0.5) == 6
    assert score_quantile(scores, 0.95) == math.inf  # ceil(11 * 0.95) = 11 > 10
    cal = calibrate(np.array([0.2, -0.4, 0.1, np.nan]), np.array([0.1, 0.1, 0.3, 0.2]))
    assert cal["beta"] == pytest.approx(0.1)
    assert cal["scores"] == pytest.approx(sorted([0.2 / 0.2, 0.4 / 0.2, 0.1 / 0.4]))


def test_coverage_is_measured_on_held_out_folds(tmp_path):
    """The evaluation's coverage equals an independent recomputation: per held-out dataset, a
    predictor fitted on the other datasets only, its 80 % intervals, the share of held-out runs inside."""
    rows = history_rows(tmp_path, synthetic_rows(n_datasets=4, shots=(4, 16), noise=0.04))
    ev = evaluate(rows, estimator=AdvisorPredictor(**FAST))
    Y = targets_matrix(rows)
    lo, hi = np.full(Y.shape, np.nan), np.full(Y.shape, np.nan)
    for _, train, test in holdout_folds(rows, "dataset"):
        fp = AdvisorPredictor(**FAST).fit_rows([rows[i] for i in train]).model_
        p = fp.predict_rows([rows[i] for i in test])
        lo[test], hi[test] = p["lo"], p["hi"]
    for j, t in enumerate(("id_gain", "ood_change", "cost")):
        inside = (Y[:, j] >= lo[:, j]) & (Y[:, j] <= hi[:, j])
        assert ev["targets"][t]["coverage"] == pytest.approx(inside.mean())
        assert ev["targets"][t]["interval"] == 0.8
    assert 0.4 < ev["targets"]["id_gain"]["coverage"] <= 1.0
    levels = [c["level"] for c in ev["calibration"]["id_gain"]]
    assert levels == sorted(levels) and 0.8 in levels
    covs = [c["coverage"] for c in ev["calibration"]["id_gain"]]
    assert covs == sorted(covs)  # wider nominal level, no less coverage
    assert coverage(np.array([1.0, 2.0, np.nan]), np.array([0.0, 2.5, 0.0]), np.array([1.5, 3.0, 1.0])) == (0.5, 2)


def test_intervals_widen_outside_the_history(tmp_path):
    rows = history_rows(tmp_path, synthetic_rows(n_datasets=4, shots=(4, 16)))
    fp = AdvisorPredictor(**FAST).fit_rows(rows).model_
    inside = dict(rows[0])
    outside = dict(rows[0], shots=500, model_desc=dict(rows[0]["model_desc"], family="never-seen"))
    p = fp.predict_rows([inside, outside])
    width = p["hi"] - p["lo"]
    kinds = [{k for k, _ in f} for f in p["flags"]]
    assert kinds[0] == set() and kinds[1] == {"family", "shots"}
    assert (width[1, :2] > width[0, :2] * 1.5).all()  # two kinds: half-widths x 2 (gain, OOD)


# ------------------------------------------------------------------------------- support


def test_out_of_support_flags_name_every_input_with_exact_digits():
    s = HistorySupport(families=["lit"], towers=["effnet"], devices=["cpu"], shots=[4, 16],
                       signal_ranges={"iimm": [1.0000001, 8.03]})
    case = {"model_desc": {"family": "clip", "image_tower": "vit-b"}, "device": "cuda:0", "shots": 1,
            "signals": {"iimm": 1.0}}
    flags = dict(s.flags(case))
    assert set(flags) == {"family", "tower", "device", "shots", "signal"}
    assert "iimm=1.0 lies outside the history's range [1.0000001, 8.03]" == flags["signal"]
    assert "cost is extrapolated" in flags["device"] and "shots=1 lies outside" in flags["shots"]
    inside = {"model_desc": {"family": "lit", "image_tower": "effnet"}, "device": "cpu", "shots": 8,
              "signals": {"iimm": 1.0000001}}
    assert s.flags(inside) == [] and s.widening(inside) == 1.0


# ------------------------------------------------------------------------------- holdout modes


def _two_sources_two_towers(tmp_path):
    rows = synthetic_rows(n_datasets=4, shots=(16,))
    for r in rows:
        d = int(r["dataset"].split("-")[1])
        r["dataset_desc"] = dict(r["dataset_desc"], source="photos" if d < 2 else "scans")
        tower = "tower-a" if d % 2 else "tower-b"
        r["model"] = f"model-{tower}"
        r["model_desc"] = dict(r["model_desc"], name=f"model-{tower}", image_tower=tower)
    return history_rows(tmp_path, rows)


def test_holdout_modes_leave_out_sources_and_towers(tmp_path):
    rows = _two_sources_two_towers(tmp_path)
    src = holdout_folds(rows, "source")
    assert [g for g, _, _ in src] == ["photos", "scans"]
    tow = holdout_folds(rows, "tower")
    assert [g for g, _, _ in tow] == ["tower-a", "tower-b"]
    for g, train, test in tow:
        assert all(rows[i]["model_desc"]["image_tower"] != g for i in train)
        assert all(rows[i]["model_desc"]["image_tower"] == g for i in test)
    ev = evaluate(rows, holdout="tower", estimator=AdvisorPredictor(**FAST))
    assert ev["holdout"] == "tower" and ev["n_held_out"] == 2
    assert {p["held_out"] for p in ev["predictions"]} == {"tower-a", "tower-b"}
    assert {b["name"] for b in ev["baselines"]} == {"predictor", "anchor-only", "best-single-method",
                                                     "zero-shot-only", "iimm-linear", "knn", "random"}
    assert ev["targets"]["id_gain"]["coverage"] is not None


def test_holdout_falls_back_to_dataset_name_and_family_and_needs_two_groups(tmp_path):
    rows = history_rows(tmp_path, synthetic_rows(n_datasets=3, shots=(16,)))  # no source, no image_tower
    assert [g for g, _, _ in holdout_folds(rows, "source")] == ["synthetic-0", "synthetic-1", "synthetic-2"]
    assert [g for g, _, _ in holdout_folds(rows, "tower")] == ["synthetic-vit"]  # the model family
    with pytest.raises(EvaluationError, match="leave-one-tower-out needs runs on at least 2 towers"):
        evaluate(rows, holdout="tower")
    with pytest.raises(EvaluationError, match="unknown holdout"):
        evaluate(rows, holdout="planet")


# ------------------------------------------------------------------------------- seed noise


def test_seed_noise_is_the_pooled_spread_of_repeated_configurations(tmp_path):
    rows = history_rows(tmp_path, synthetic_rows(n_datasets=2, shots=(16,), seeds=(0, 1, 2), noise=0.03))
    noise = seed_noise(rows)
    assert noise["configurations"] == 10
    by: dict[tuple, list[float]] = {}
    for r in rows:
        by.setdefault((r["dataset"], r["method"]), []).append(row_targets(r)["id_gain"])
    pooled = math.sqrt(sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in by.values()) / sum(len(v) - 1 for v in by.values()))
    assert noise["id_gain"]["sd"] == pytest.approx(pooled)
    assert seed_noise(synthetic_rows(n_datasets=2, shots=(16,)))["id_gain"]["sd"] is None
