"""SYNTHETIC history rows for the predictor, recommend and report tests (generated here only,
never written to registry.db): datasets ``synthetic-<i>`` with a planted relation, e.g. LoRA's
in-domain gain = 0.5 * iimm + noise. Not a test module: imported by them."""

from __future__ import annotations

import math

import numpy as np

METHODS = ("full", "lora", "coop", "contcoop", "tpc_cma")
#: Planted relations: gain = SLOPE[m] * iimm + 0.01 * log2(shots) + noise; OOD change = FORGET[m] * iimm.
SLOPE = {"full": 0.6, "lora": 0.5, "coop": 0.2, "contcoop": 0.25, "tpc_cma": 0.4}
FORGET = {"full": -0.3, "lora": -0.15, "coop": -0.02, "contcoop": -0.01, "tpc_cma": -0.1}
MODEL_DESC = {"name": "tiny-vit", "pretrained": None, "image_size": 32, "family": "synthetic-vit",
              "architecture": "vit", "params": 500000, "embed_dim": 32}


def synthetic_rows(n_datasets=6, seeds=(0,), shots=(4, 16), seed=0, noise=0.02, methods=METHODS, iimms=None):
    """SYNTHETIC history rows (the shape ``History.training_rows`` returns), planted relation above."""
    rng = np.random.RandomState(seed)
    rows = []
    for d in range(n_datasets):
        iimm = float(iimms[d]) if iimms is not None else float(rng.uniform(0.1, 0.9))
        ddesc = {"name": f"synthetic-{d}", "fingerprint": f"fp{d}", "n_classes": 5 + d, "n_train": 1000 + 37 * d,
                 "n_test": 200, "domain": ["grayscale"] if d % 2 else ["texture"], "mean_side_px": 28.0 + d,
                 "is_grayscale": bool(d % 2)}
        signals = {"iimm": iimm, "gap": float(rng.uniform(0.2, 1.0)), "unrelated": float(rng.uniform()),
                   "zero_shot_acc": 0.3}
        for k, m in enumerate(methods):
            for s in shots:
                for sd in seeds:
                    gain = SLOPE.get(m, 0.1) * iimm + 0.01 * math.log2(s) + rng.normal(0, noise)
                    ood = FORGET.get(m, 0.0) * iimm + rng.normal(0, noise)
                    before = 0.3
                    rows.append({
                        "run_id": f"syn-{d}-{m}-{s}-{sd}", "model": MODEL_DESC["name"], "pretrained": None,
                        "dataset": ddesc["name"], "method": m, "shots": s, "seed": sd, "device": "cpu",
                        "id_acc_before": before, "id_acc_after": before + gain,
                        "ood_before": {"ref-a": 0.5, "ref-b": 0.4},
                        "ood_after": {"ref-a": 0.5 + ood, "ref-b": 0.4 + ood},
                        "hparams": {"epochs": 10}, "wall_time_s": float(np.exp(1 + 0.7 * k + 0.1 * math.log2(s) + rng.normal(0, 0.05))),
                        "signals": dict(signals), "model_desc": dict(MODEL_DESC), "dataset_desc": dict(ddesc),
                    })
    return rows


SMALL = dict(n_estimators=30, n_bags=4, conformal_folds=3)


def record_synthetic(db: str, rows) -> None:
    """Write SYNTHETIC rows into a temporary history through the public History API."""
    from advisor.history import open_history
    from advisor.specs import RunResult

    h = open_history(db)
    for r in rows:
        h.record_run(RunResult(
            model=r["model"], pretrained=None, dataset=r["dataset"], method=r["method"], shots=r["shots"],
            seed=r["seed"], hparams={"synthetic": True, "epochs": 10, **r.get("hparams", {})}, split_hash="synthetic",
            id_acc_before=r["id_acc_before"],
            id_acc_after=min(1.0, r["id_acc_after"]), ood_before=r["ood_before"],
            ood_after={k: max(0.0, v) for k, v in r["ood_after"].items()}, gap_before=None, gap_after=None,
            wall_time_s=r["wall_time_s"], train_images_per_s=None, peak_memory_mb=None, trainable_params=1,
            device=r["device"], provenance={"synthetic": True}, signals=r["signals"],
            model_desc=r["model_desc"], dataset_desc=r["dataset_desc"], run_id=r["run_id"],
            curve=list(r.get("curve") or []),
        ))

