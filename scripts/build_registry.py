"""Build the shipped history (``registry.db``) from real fine-tuning runs on this machine.

Every row is a run this script executed with ``advisor.runner.run_finetune`` (the code behind
``advisor run``), with its provenance. Resumable: a (model, dataset, method, shots, seed) that
is already in the database is skipped. Each (model, dataset) pair runs in one worker process so
the test sets and zero-shot measurements are prepared once per pair.

    python scripts/build_registry.py --db registry.db --jobs 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("lit-offline", "lit-offline-fashion", "lit-offline-mnist", "lit-offline-textile", "lit-offline-digits")
DEFAULT_METHODS = ("full", "lora", "coop", "contcoop", "tpc_cma")
#: Epochs for the CPU-built history: full fine-tuning of both towers trains at ~56 img/s at 64 px on
#: this 2-core machine, the others at ~170-3000 img/s (benchmarks/train.py), so each run stays ~30 s.
CPU_EPOCHS = {"full": 10, "lora": 20, "coop": 20, "contcoop": 20, "tpc_cma": 20}


def _done(db: str, model: str, dataset: str, method: str, shots: int, seed: int) -> bool:
    from advisor.history import open_history

    return any(
        r.get("shots") == shots and r.get("seed") == seed
        for r in open_history(db).runs(model=model, dataset=dataset, method=method)
    )


def run_pair(db: str, model: str, dataset: str, methods: list[str], shots: list[int], seeds: list[int],
             threads: int, epochs: dict[str, int]) -> list[str]:
    """Worker: every method x shots x seed for one (model, dataset) pair."""
    import torch

    torch.set_num_threads(threads)
    from advisor.errors import AdvisorError
    from advisor.runner import run_finetune, summarize
    from advisor.specs import DatasetSpec, ModelSpec

    lines = []
    for method, k, seed in itertools.product(methods, shots, seeds):
        if _done(db, model, dataset, method, k, seed):
            lines.append(f"skip  {model:22s} {dataset:14s} {method:9s} shots={k} seed={seed} (already recorded)")
            continue
        t0 = time.time()
        try:
            run = run_finetune(ModelSpec(model), DatasetSpec(dataset), method, shots=k, seed=seed,
                               epochs=epochs.get(method), db=db, quiet=True)
        except AdvisorError as exc:
            lines.append(f"FAIL  {model:22s} {dataset:14s} {method:9s} shots={k} seed={seed}: {exc}")
            continue
        except Exception:  # noqa: BLE001 - report and keep the sweep going
            lines.append(f"CRASH {model:22s} {dataset:14s} {method:9s} shots={k} seed={seed}:\n{traceback.format_exc()}")
            continue
        s = summarize(run)
        line = (f"ok    {model:22s} {dataset:14s} {method:9s} shots={k} seed={seed} "
                f"id {s['id_acc_before']:.3f}->{s['id_acc_after']:.3f} ood {s['ood_change']:+.3f} "
                f"gap {s['gap_before']:.3f}->{s['gap_after']:.3f} {s['wall_time_s']:.1f}s ({time.time() - t0:.0f}s total)")
        print(line, flush=True)
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(ROOT / "registry.db"))
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--datasets", nargs="+", default=None, help="default: every offline built-in")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--shots", nargs="+", type=int, default=[16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", nargs="+", default=[f"{m}={e}" for m, e in CPU_EPOCHS.items()], metavar="METHOD=N",
                    help="epochs per method (the tuners' own defaults follow the papers and are sized for GPUs)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (each one torch thread per core share)")
    args = ap.parse_args(argv)
    epochs = {k: int(v) for k, v in (item.split("=", 1) for item in args.epochs)}

    from advisor.data import OFFLINE_DATASETS
    from advisor.history import open_history

    open_history(args.db)  # create + migrate once, before workers race to do it
    datasets = args.datasets or list(OFFLINE_DATASETS)
    pairs = list(itertools.product(args.models, datasets))
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    print(f"{len(pairs)} pairs x {len(args.methods)} methods x {len(args.shots)} shots x {len(args.seeds)} seeds "
          f"-> {args.db} ({args.jobs} workers, {threads} threads each)", flush=True)
    failures = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_pair, args.db, m, d, args.methods, args.shots, args.seeds, threads, epochs): (m, d)
                for m, d in pairs}
        for fut in as_completed(futs):
            for line in fut.result():
                if not line.startswith("ok"):
                    print(line, flush=True)
                failures += line.startswith(("FAIL", "CRASH"))
    print(f"done; {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
