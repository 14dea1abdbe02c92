"""scripts/readme_results.py: the README's generated blocks are where the script expects them,
the seed spread is the per-configuration standard deviation, and the verdict names every
baseline that is at least as good as the predictor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
readme_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_results)


def test_the_readme_has_every_generated_block():
    readme_results.check_markers((ROOT / "README.md").read_text())


def test_replace_blocks_refuses_a_readme_without_markers():
    with pytest.raises(SystemExit, match="measured"):
        readme_results.replace_blocks("# no markers\n", {"measured": "x"})


def test_replace_blocks_swaps_only_the_bodies():
    text = "a\n" + "".join(f"<!-- results:{n}:begin -->\nold\n<!-- results:{n}:end -->\n" for n in readme_results.BLOCKS)
    out = readme_results.replace_blocks(text, {"measured": "NEW"})
    assert "<!-- results:measured:begin -->\nNEW\n<!-- results:measured:end -->" in out
    assert out.count("old") == len(readme_results.BLOCKS) - 1 and out.startswith("a\n")


def _row(seed, before, after, ood_before, ood_after, method="lora", lr=0.005):
    return {"model": "m", "pretrained": None, "dataset": "d", "method": method, "shots": 16, "seed": seed,
            "hparams": {"lr": lr, "epochs": 20}, "id_acc_before": before, "id_acc_after": after,
            "ood_before": {"x": ood_before}, "ood_after": {"x": ood_after}, "wall_time_s": 10.0 + seed,
            "dataset.extra": {"source": "src"}, "model.extra": {"image_tower": "t"}}


def test_seed_spread_is_the_standard_deviation_across_seeds():
    gains = [0.10, 0.16, 0.13]
    oods = [-0.02, 0.00, -0.04]
    rows = [_row(s, 0.5, 0.5 + g, 0.7, 0.7 + o) for s, (g, o) in enumerate(zip(gains, oods))]
    rows.append(_row(0, 0.5, 0.9, 0.7, 0.3, lr=0.05))  # another learning rate: its own line, one seed
    table = readme_results.measured_table(rows)
    lines = [ln for ln in table.splitlines() if ln.startswith("| lora")]
    assert len(lines) == 2
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[:5] == ["lora", "16", "0.005", "3", "1"]
    assert float(cells[5]) == pytest.approx(np.mean(gains), abs=5e-4)
    assert float(cells[6]) == pytest.approx(np.std(gains, ddof=1), abs=5e-4)
    assert float(cells[8]) == pytest.approx(np.std(oods, ddof=1), abs=5e-4)
    assert float(cells[9]) == pytest.approx(min(oods), abs=5e-4)
    other = [c.strip() for c in lines[1].strip("|").split("|")]
    assert other[2] == "0.05" and other[6] == "n/a" and float(other[9]) == pytest.approx(-0.4, abs=5e-4)


def test_verdict_names_the_baselines_at_least_as_good():
    ev = {"baselines": [
        {"name": "predictor", "id_gain_spearman": 0.8, "id_gain_mae": 0.05, "regret_gain": 0.02},
        {"name": "knn", "id_gain_spearman": 0.85, "id_gain_mae": 0.06, "regret_gain": 0.02},
        {"name": "random", "id_gain_spearman": 0.9, "id_gain_mae": 0.01, "regret_gain": 0.0},
    ]}
    lines = readme_results.verdict(ev).splitlines()
    assert lines == ["- ID-gain Spearman: predictor 0.8; not beaten by it: knn 0.85",
                     "- regret (gain): predictor 0.02; not beaten by it: knn 0.02"]
    ev["baselines"][1].update(id_gain_spearman=0.1, regret_gain=0.5)
    assert readme_results.verdict(ev) == "- The predictor beats every baseline on every score above."
