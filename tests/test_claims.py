"""The seed papers' claims on a history: the statistic and its bootstrap interval, checked on
rows built so that the answer is known."""

from __future__ import annotations

import pytest

from advisor.predictor.claims import claims, claims_table


def _row(i: int, method: str, iimm: float, gain: float, ood: float, gap_raw: float, gap_dist: float, zs: float):
    return {"run_id": f"r{i}-{method}", "model": "m", "dataset": f"d{i}", "method": method, "shots": 16, "seed": 0,
            "hparams": {"lr": 0.001}, "id_acc_before": zs, "id_acc_after": zs + gain,
            "ood_before": {"x": 0.5}, "ood_after": {"x": 0.5 + ood},
            "model_desc": {"name": "m"}, "dataset_desc": {"name": f"d{i}"},
            "signals": {"iimm": iimm, "gap_raw": gap_raw, "gap_dist_fd": gap_dist}}


def test_claims_recover_a_planted_relation_with_an_interval_above_zero() -> None:
    rows = []
    for i in range(20):
        x = i / 20
        # gain rises with IIMM; forgetting does not depend on it; zero-shot follows the raw gap only
        rows.append(_row(i, "lora", x, 0.1 + 0.3 * x, -0.01 * ((i * 7) % 5), 1 - x, (i * 13) % 7, 0.2 + 0.6 * x))
    out = {c["claim"]: c for c in claims(rows, {"lora": "low-rank"})}
    gain = out["IIMM predicts in-domain gain (full, LoRA)"]
    assert gain["value"] == pytest.approx(1.0) and gain["lo"] == pytest.approx(1.0) and gain["n_pairs"] == 20
    assert out["raw gap predicts zero-shot accuracy"]["value"] == pytest.approx(1.0)
    assert out["distribution gap beats the raw gap"]["value"] < 0
    assert out["distribution gap beats the raw gap"]["hi"] < 0
    table = claims_table(list(out.values()))
    assert "| IIMM predicts in-domain gain (full, LoRA) | spearman | +1.000 |" in table
