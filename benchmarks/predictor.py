"""How long the predictor takes to train and to evaluate (issue 14).

    python benchmarks/predictor.py                       # both parts, shipped history copied to a temp dir
    python benchmarks/predictor.py --rows 10000 --db registry.db --rounds 1

1. ``train``: ``AdvisorPredictor().fit_rows(rows)`` with the default hyper-parameters (8 bags,
   conformal calibration on 5 grouped folds, three targets) on ``--rows`` SYNTHETIC history
   rows (generated here: 40 datasets x 5 methods x shots x seeds with a planted relation, 24
   signals; never written to any history). Target: under 10 s for 10k rows.
2. ``evaluate``: ``evaluate(rows, holdout="dataset")`` (every fold fits the predictor with its
   calibration, and every baseline) on the shipped history, read from a copy of ``--db`` (the
   original is never opened for writing). Target: under 60 s.

Each is timed ``--rounds`` times in this process, interleaved; the load average is recorded
beside the times (the machine is shared), and the process CPU time beside the wall time (on a
busy machine the wall time is the CPU time stretched by the other processes' share). The
predictor runs with its defaults, ``n_jobs=-1`` included (boosters fitted on up to one thread
per CPU; the fitted predictor does not depend on it). Prints a table and writes
``benchmarks/results/predictor.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "predictor.json"
METHODS = ("m-full", "m-lowrank", "m-prompt", "m-prompt2", "m-map")  # SYNTHETIC method names


def synthetic_history(n_rows: int, seed: int = 0) -> list[dict]:
    """SYNTHETIC rows shaped like ``History.training_rows()``: gain grows with a signal and
    with shots, cost with images x epochs."""
    rng = np.random.RandomState(seed)
    shots_set, seeds = (1, 2, 4, 8, 16), (0, 1)
    per_dataset = len(METHODS) * len(shots_set) * len(seeds)
    rows: list[dict] = []
    d = 0
    while len(rows) < n_rows:
        z = float(rng.uniform(0.05, 0.95))
        signals = {f"s{k:02d}": float(rng.normal()) for k in range(23)} | {"zero_shot_acc": z}
        ddesc = {"name": f"syn-{d}", "fingerprint": f"fp{d}", "n_classes": int(rng.randint(2, 50)),
                 "n_train": int(rng.randint(500, 20000)), "domain": ["syn"], "mean_side_px": 32.0, "is_grayscale": False}
        mdesc = {"name": "syn-model", "family": f"fam-{d % 3}", "params": 10**7, "embed_dim": 256, "image_size": 64}
        for k, m in enumerate(METHODS):
            for s in shots_set:
                for sd in seeds:
                    share = np.clip(0.1 * k + 0.2 * math.tanh(signals["s00"]) + 0.05 * math.log2(s)
                                    + rng.normal(0, 0.03), -1, 1)
                    gain = share * (1 - z) if share >= 0 else share * z
                    images = min(s * ddesc["n_classes"], ddesc["n_train"])
                    rows.append({
                        "run_id": f"syn-{d}-{m}-{s}-{sd}", "model": "syn-model", "dataset": ddesc["name"], "method": m,
                        "shots": s, "seed": sd, "device": "cpu", "hparams": {"epochs": 10 + 10 * (k % 2)},
                        "id_acc_before": z, "id_acc_after": z + gain, "ood_before": {"r": 0.5},
                        "ood_after": {"r": 0.5 - 0.02 * k + rng.normal(0, 0.01)},
                        "wall_time_s": float(images * (10 + 10 * (k % 2)) * 0.01 * (1 + k) * math.exp(rng.normal(0, 0.1))),
                        "trainable_params": 10 ** (3 + k), "signals": dict(signals),
                        "model_desc": mdesc, "dataset_desc": ddesc,
                    })
        d += 1
        if per_dataset * d > 10 * n_rows:  # pragma: no cover - guard
            break
    return rows[:n_rows]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--db", default=str(ROOT / "registry.db"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from advisor.history import open_history
    from advisor.predictor import AdvisorPredictor, evaluate

    rows = synthetic_history(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="advisor-bench-"))
    copy = tmp / "registry.db"
    shutil.copy(args.db, copy)
    shipped = open_history(str(copy)).training_rows()
    times: dict[str, list[float]] = {"train": [], "evaluate": []}
    cpu: dict[str, list[float]] = {"train": [], "evaluate": []}
    loads: list[float] = []
    for _ in range(args.rounds):
        loads.append(_load())
        t0, c0 = time.perf_counter(), time.process_time()
        AdvisorPredictor().fit_rows(rows)
        times["train"].append(time.perf_counter() - t0)
        cpu["train"].append(time.process_time() - c0)
        loads.append(_load())
        t0, c0 = time.perf_counter(), time.process_time()
        ev = evaluate(shipped, holdout="dataset")
        times["evaluate"].append(time.perf_counter() - t0)
        cpu["evaluate"].append(time.process_time() - c0)
    loads.append(_load())
    shutil.rmtree(tmp, ignore_errors=True)
    table = [
        {"what": f"fit_rows on {len(rows)} synthetic rows", "median_s": statistics.median(times["train"]),
         "median_cpu_s": statistics.median(cpu["train"]), "target_s": 10.0, "runs": times["train"], "cpu_runs": cpu["train"]},
        {"what": f"evaluate --holdout dataset on the shipped history ({len(shipped)} runs)",
         "median_s": statistics.median(times["evaluate"]), "median_cpu_s": statistics.median(cpu["evaluate"]),
         "target_s": 60.0, "runs": times["evaluate"], "cpu_runs": cpu["evaluate"]},
    ]
    workers = AdvisorPredictor()._workers(10**6)
    print(f"{'what':<62} {'median s':>9} {'cpu s':>7} {'target s':>9}  met")
    for t in table:
        print(f"{t['what']:<62} {t['median_s']:>9.2f} {t['median_cpu_s']:>7.2f} {t['target_s']:>9.0f}  "
              f"{'yes' if t['median_s'] < t['target_s'] else 'NO'}")
    print(f"load average (1 min) during the runs: {', '.join(f'{v:.1f}' for v in loads)} on {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds; boosters on {workers} thread(s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "table": table, "load_average_1m": loads, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "machine": platform.machine(), "rounds": args.rounds, "booster_threads": workers,
        "evaluate_id_gain": ev["targets"]["id_gain"],
    }, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
