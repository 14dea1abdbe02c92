"""The sweep's own overhead per run, and what a second worker buys, measured in one run.

A 20-run grid of shipped-history-like runs (``lit-offline`` at 64 px, 16 shots, the CPU
schedules of ``sweeps/registry.toml``) runs through ``advisor sweep`` twice into fresh
histories, with ``--max-parallel 1`` and ``--max-parallel 2``, alternating over ``--rounds``.
Per run it splits the wall time into training, evaluation (before/after, ID and OOD), pair
preparation (model load, data, zero-shot, signals: paid once per (model, dataset) pair per
worker), the database write and scheduling/process start (the rest), from the runs' recorded
phase timings and the sweep_jobs timestamps.

    python benchmarks/sweep.py            # table on stdout, JSON in benchmarks/results/sweep.json

Targets (issue 10): overhead below 15 % of a typical run; --max-parallel 2 at least 1.6x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = """
name = "bench-sweep"
[run]
max_images = 500
max_ood = 500
save_adapter = false
[[block]]
models = ["lit-offline"]
datasets = ["digits", "textile"]
methods = ["full", "lora", "coop", "contcoop", "tpc_cma"]
shots = [16]
seeds = [0, 1]
[block.method_hparams.full]
epochs = 10
[block.method_hparams.lora]
epochs = 20
[block.method_hparams.coop]
epochs = 20
[block.method_hparams.contcoop]
epochs = 20
[block.method_hparams.tpc_cma]
epochs = 20
"""


def one_sweep(parallel: int, workdir: Path) -> dict:
    db = workdir / f"p{parallel}-{time.time_ns()}.db"
    spec = workdir / "grid.toml"
    spec.write_text(GRID)
    env = {**os.environ, "ADVISOR_HOME": str(workdir / "home"), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import sys; from advisor.cli import cli; sys.exit(cli())",
                          "sweep", "--spec", str(spec), "--db", str(db), "--max-parallel", str(parallel), "--json",
                          "--log-dir", str(workdir / f"logs-{parallel}")], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"sweep failed: {out.stderr[-2000:]}")
    import sqlite3

    con = sqlite3.connect(db)
    jobs = con.execute("SELECT started_at, finished_at, run_id FROM sweep_jobs").fetchall()
    prov = {rid: json.loads(p) for rid, p in con.execute("SELECT run_id, provenance FROM runs")}
    con.close()
    n = len(jobs)
    per = []
    for started, finished, rid in jobs:
        t = prov[rid]["timing"]
        job_s = finished - started
        per.append({"job_s": job_s, "train_s": t["train_s"], "evaluate_s": t["evaluate_s"], "prepare_s": t["prepare_s"],
                    "write_s": max(0.0, job_s - t["train_s"] - t["evaluate_s"] - t["prepare_s"])})
    busy = sum(p["job_s"] for p in per)
    sched = max(0.0, wall * parallel - busy) / n  # process start, imports, claiming, idle at the end
    mean = {k: statistics.fmean(p[k] for p in per) for k in per[0]}
    typical_run = mean["train_s"] + mean["evaluate_s"]
    overhead = mean["prepare_s"] + mean["write_s"] + sched
    return {"parallel": parallel, "runs": n, "wall_s": round(wall, 2), "per_run_mean": {k: round(v, 3) for k, v in mean.items()},
            "scheduling_and_start_s": round(sched, 3), "overhead_s": round(overhead, 3),
            "overhead_fraction_of_run": round(overhead / typical_run, 4), "load_before": load_before,
            "load_after": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="advisor-bench-sweep-") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for p in ((1, 2) if r % 2 == 0 else (2, 1)):
                res = one_sweep(p, work)
                res["round"] = r
                results.append(res)
                print(f"round {r} parallel {p}: {res['wall_s']:.0f} s", file=sys.stderr, flush=True)
    by = {p: [r for r in results if r["parallel"] == p] for p in (1, 2)}
    wall = {p: statistics.median(r["wall_s"] for r in by[p]) for p in (1, 2)}
    speedup = wall[1] / wall[2]
    rows = [("max-parallel", "runs", "wall s", "train s/run", "eval s/run", "prepare s/run", "write s/run",
             "sched+start s/run", "overhead / run")]
    for r in results:
        m = r["per_run_mean"]
        rows.append((str(r["parallel"]), str(r["runs"]), f"{r['wall_s']:.0f}", f"{m['train_s']:.1f}", f"{m['evaluate_s']:.1f}",
                     f"{m['prepare_s']:.1f}", f"{m['write_s']:.2f}", f"{r['scheduling_and_start_s']:.1f}",
                     f"{100 * r['overhead_fraction_of_run']:.1f} %"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nspeed-up of --max-parallel 2 over 1 on the 20-run grid: {speedup:.2f}x (target >= 1.6x)")
    doc = {"benchmark": "sweep", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "results": results, "speedup_parallel2": round(speedup, 3),
           "targets": {"overhead_fraction_max": 0.15, "speedup_min": 1.6}}
    Path(args.output).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
