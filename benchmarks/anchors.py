"""The anchor metric against every other signal, on the same embeddings, in the same rounds.

    python benchmarks/anchors.py                          # 2,000 images (the signal sample) of two datasets
    python benchmarks/anchors.py --datasets digits --rounds 5

For each dataset the training split's default signal sample (``advisor.signals.
DEFAULT_SIGNAL_IMAGES`` images, as ``advisor signals`` embeds it) is embedded once with
lit-offline; then ``--rounds`` rounds, each: every metric but ``anchor`` (``run_metrics``), then
``anchor`` alone, with the 1-minute load average recorded. The headline per dataset is the
ratio of the median anchor time to the median time of all the other signals (target, issue
22: at most 1.0). Prints a table and writes ``benchmarks/results/anchors.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "anchors.json"
TARGET = 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="fashion-mnist,digits")
    p.add_argument("--model", default="lit-offline")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    from advisor.embed import embed
    from advisor.plugins import get_metrics
    from advisor.signals import DEFAULT_SIGNAL_IMAGES, run_metrics
    from advisor.specs import DatasetSpec, ModelSpec

    others = [m for m in get_metrics() if m != "anchor"]
    rows = []
    for name in args.datasets.split(","):
        emb = embed(ModelSpec(args.model), DatasetSpec(name), split="train", max_images=DEFAULT_SIGNAL_IMAGES,
                    quiet=True, with_layers=False)
        run_metrics(emb, others[:1])  # warm-up: imports are not billed to a metric
        t_other, t_anchor, loads = [], [], []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            t = time.perf_counter()
            run_metrics(emb, others)
            t_other.append(time.perf_counter() - t)
            t = time.perf_counter()
            run_metrics(emb, ["anchor"])
            t_anchor.append(time.perf_counter() - t)
        other, anchor = statistics.median(t_other), statistics.median(t_anchor)
        rows.append({"dataset": name, "n_images": int(len(emb.labels)), "n_classes": len(emb.class_names),
                     "other_signals_s": round(other, 3), "anchor_s": round(anchor, 3),
                     "ratio": round(anchor / other, 3), "met": anchor / other <= TARGET,
                     "load": [round(v, 2) for v in loads]})
    head = f"{'dataset':<15} {'images':>6} {'classes':>7} {'other signals s':>15} {'anchor s':>9} {'ratio':>6}  met  load"
    print(head)
    for r in rows:
        print(f"{r['dataset']:<15} {r['n_images']:>6} {r['n_classes']:>7} {r['other_signals_s']:>15} "
              f"{r['anchor_s']:>9} {r['ratio']:>6}  {'yes' if r['met'] else 'no':<4} {r['load']}")
    doc = {"benchmark": "anchors", "model": args.model, "rounds": args.rounds, "target_ratio": TARGET,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
