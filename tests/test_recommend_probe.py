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


#: One shipped model per image tower (open_clip's tiny random configs and the lit-offline
#: EfficientNet-Lite towers). open_clip's pretrained models need downloaded weights: not here.
TOWER_MODELS = {"vit (tiny open_clip)": "tiny-vit", "resnet (tiny open_clip)": "tiny-rn",
                "efficientnet-lite0": "lit-offline", "efficientnet-lite1": "lit1-offline-mix",
                "efficientnet-lite2": "lit2-offline-mix"}


def test_every_shipped_image_tower_has_a_model_in_the_probe_test():
    from advisor_plugins.models.lit_variants import TOWERS, VARIANTS
    from advisor_plugins.models.open_clip import TINY_NAMES

    covered = {VARIANTS[m][0] for m in TOWER_MODELS.values() if m in VARIANTS}
    assert covered == set(TOWERS) and set(TINY_NAMES) <= set(TOWER_MODELS.values())


@pytest.mark.parametrize("model", list(TOWER_MODELS.values()), ids=list(TOWER_MODELS))
def test_recommend_probe_runs_on_every_shipped_tower_and_reports_its_cost(tmp_path, monkeypatch, folder, cli, model):
    import functools

    import advisor.probe

    # Cheap samples for the probes' curve and test sets (the real defaults preprocess every OOD
    # reference set at the tower's resolution: a minute per EfficientNet tower on a CPU).
    monkeypatch.setattr(advisor.probe, "run_probes", functools.partial(
        advisor.probe.run_probes, max_images=30, max_ood=20, ood=("digits",)))
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "history.db")
    record_synthetic(db, _rows_with_curves())
    r = cli("recommend", "--model", model, "--dataset", f"folder:{folder}", "--shots", "4", "--db", db,
            "--allow-random-weights", "--probe", "1", "--probe-budget", "1", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    probes = doc["probes"]
    assert probes and all(p["model"] == model and isinstance(p["cost_s"], float) and p["cost_s"] >= 0 for p in probes)
    first = probes[0]  # the first method always runs a step at least, then the budget stops what follows
    assert first["steps_run"] >= 1 and first["cost_s"] > 0 and first["error"] is None
    assert first["stopped"] in ("epochs", "budget") and [q["epoch"] for q in first["curve"]][0] == 0
    by_key = {m["key"]: m for m in doc["methods"]}
    for p in probes:  # stopped before its first epoch ended: no point to read, the static prediction stays
        if p["curve"] and p["epochs_run"] < 1 and not p["measured"] and p["error"] is None:
            assert by_key[p["key"]]["basis"] != "probed"
            assert any(w.startswith(f"probe of {p['key']} stopped by its budget") for w in doc["warnings"])
    note = next(n for n in doc["notes"] if n.startswith("probes: "))
    cost = sum(p["cost_s"] + p["setup_s"] for p in probes)
    assert f"took {cost:.0f} s in all" in note and "within a budget of 1 s" in note


def test_a_probe_stopped_before_its_epochs_keeps_the_prediction_without_a_probe():
    """The budget stopped the probe inside its first epoch: its curve has point 0 only, which the
    probe predictor cannot read, so the advice keeps its static numbers and a warning says why."""
    from advisor.probe import ProbeResult
    from advisor.recommendation import MethodAdvice, _take_probe

    a = MethodAdvice("lora", id_gain=0.1, id_gain_lo=0.05, id_gain_hi=0.15)
    point0 = {"epoch": 0, "step": 0, "train_loss": None, "val_acc": 0.3, "ood_proxy_acc": 0.5, "train_s": 0.0}
    r = ProbeResult(model="m", method="lora", hparams={}, epochs=10, epochs_run=0, cost_s=1.0, stopped="budget",
                    curve=[point0])
    warnings: list[str] = []
    _take_probe(object(), a, r, None, 1, warnings)  # a predictor that must not be asked
    assert (a.id_gain, a.id_gain_lo, a.id_gain_hi) == (0.1, 0.05, 0.15) and a.basis != "probed"
    assert warnings == [f"probe of {a.key} stopped by its budget after 0 of 1 epoch(s): its prediction stays "
                        "the one without a probe"]
