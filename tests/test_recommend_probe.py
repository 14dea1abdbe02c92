"""Issue 23: `advisor recommend --probe` on a user's `folder:` dataset: every candidate method
runs the first epochs of its real schedule on the pair, the partial curves feed the probe
predictor, a method whose whole run fits the budget is measured, and the answer says what the
probes cost and what they changed.

The history is SYNTHETIC (tests/synthetic_history.py; never written to registry.db), with
learning curves whose first-epoch validation gain carries the runs' in-domain gain. The probes
are real runs of the tiny open_clip model on real image files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthetic_history import record_synthetic, synthetic_rows


def _rows_with_curves() -> list[dict]:
    rows = synthetic_rows(n_datasets=4, shots=(4,), iimms=[0.2, 0.4, 0.6, 0.9], noise=0.005)
    for r in rows:
        gain = r["id_acc_after"] - r["id_acc_before"]
        r["hparams"] = {"epochs": 10, "lr": 1e-3}
        r["curve"] = [  # SYNTHETIC points: the first epoch shows a fifth of the run's gain
            {"epoch": 0, "step": 0, "train_loss": None, "val_acc": 0.3, "ood_proxy_acc": 0.5, "train_s": 0.0},
            {"epoch": 1, "step": 2, "train_loss": 1.0, "val_acc": 0.3 + gain / 5, "ood_proxy_acc": 0.5, "train_s": 0.1},
        ]
    return rows


@pytest.fixture
def folder(tmp_path):
    """Real PNG files, one folder per class (3 classes x 12 images of distinct colours)."""
    from PIL import Image

    rng = np.random.RandomState(0)
    root = tmp_path / "images"
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            px = rng.randint(0, 60, size=(24, 24, 3)).astype(np.uint8)
            px[..., c] = 200 + rng.randint(0, 50)
            Image.fromarray(px).save(root / name / f"{i}.png")
    return root


def test_recommend_probe_on_a_folder_dataset(tmp_path, monkeypatch, folder, cli):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "history.db")
    record_synthetic(db, _rows_with_curves())
    r = cli("recommend", "--model", "tiny-vit", "--dataset", f"folder:{folder}", "--shots", "4", "--db", db,
            "--allow-random-weights", "--probe", "--json", "--objective", "gain")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    probes = {p["method"]: p for p in doc["probes"]}
    eligible = {m["method"] for m in doc["methods"] if m["eligible"]}
    assert set(probes) == eligible and eligible
    for p in probes.values():  # K=1 epoch of the real schedule, no budget: none run whole
        assert p["epochs_run"] == 1 and p["stopped"] == "epochs" and not p["measured"]
        assert [q["epoch"] for q in p["curve"]][:2] == [0, 1] and p["cost_s"] > 0
    assert all(m["basis"] == "probed" for m in doc["methods"] if m["eligible"])
    assert any(n.startswith("probes: ") and "epoch(s) each took" in n for n in doc["notes"])
    assert any("the probes changed" in n for n in doc["notes"])
    assert any("probe-1" in n for n in doc["notes"])  # the probe predictor was trained now and stored

    # a budget big enough for the tiny model's whole runs: they are measured, not predicted
    r = cli("recommend", "--model", "tiny-vit", "--dataset", f"folder:{folder}", "--shots", "4", "--db", db,
            "--allow-random-weights", "--probe", "--probe-budget", "600", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    measured = [m for m in doc["methods"] if m["basis"] == "measured"]
    assert measured
    for m in measured:
        assert m["id_gain_lo"] == m["id_gain"] == m["id_gain_hi"]
        p = next(p for p in doc["probes"] if p["key"] == m["key"])
        assert p["measured"] and p["id_gain"] == pytest.approx(m["id_gain"])

    text = cli("recommend", "--model", "tiny-vit", "--dataset", f"folder:{folder}", "--shots", "4", "--db", db,
               "--allow-random-weights", "--probe")
    assert text.exit_code == 0 and "~ predicted from its probe's first epochs too" in text.stdout


def test_probe_options_are_checked_before_any_work(cli, tmp_path):
    for args, message in ((["--probe", "0"], "0"), (["--probe", "--probe-budget", "-3"], "--probe-budget")):
        r = cli("recommend", "--model", "tiny-vit", "--dataset", "digits", "--db", str(tmp_path / "none.db"), *args)
        assert r.exit_code != 0 and message in r.stderr and "Traceback" not in r.stderr
