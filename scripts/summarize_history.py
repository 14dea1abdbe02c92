"""Print the measured outcomes in a history as markdown tables (used for the README and notes).

    python scripts/summarize_history.py --db registry.db
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from advisor.history import open_history
from advisor.plugins import sort_methods
from advisor.predictor import row_targets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="registry.db")
    ap.add_argument("--model", default=None, help="per-run table for this model only")
    args = ap.parse_args()
    # Read-only: opening a file read-write would switch the shipped registry to WAL mode.
    db = args.db if "://" in args.db else f"sqlite:///file:{args.db}?mode=ro&uri=true"
    rows = open_history(db).runs()
    by = collections.defaultdict(list)
    for r in rows:
        t = row_targets(r)
        by[(r["method"], r["shots"])].append((t["id_gain"], t["ood_change"], r["wall_time_s"],
                                              r["trainable_params"], r["gap_before"], r["gap_after"]))
    # Methods in their tuners' registered order; methods no installed tuner registers come last.
    rank = {m: i for i, m in enumerate(sort_methods(r["method"] for r in rows))}
    print(f"{len(rows)} runs\n")
    print("| method | shots | runs | mean ID gain | mean OOD change | median wall s | gap before -> after (mean) |")
    print("|---|---|---|---|---|---|---|")
    for (m, k), v in sorted(by.items(), key=lambda x: (rank[x[0][0]], x[0][1] or 0)):
        a = np.array(v, dtype=float)
        print(f"| {m} | {k} | {len(v)} | {a[:, 0].mean():+.3f} | {a[:, 1].mean():+.3f} | {np.median(a[:, 2]):.1f} | "
              f"{a[:, 4].mean():.3f} -> {a[:, 5].mean():.3f} |")
    if args.model:
        print(f"\n| dataset | method | shots | zero-shot | after | ID gain | OOD change | wall s | trainable params |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sorted((r for r in rows if r["model"] == args.model), key=lambda r: (r["dataset"], r["shots"], rank[r["method"]])):
            t = row_targets(r)
            print(f"| {r['dataset']} | {r['method']} | {r['shots']} | {r['id_acc_before']:.3f} | {r['id_acc_after']:.3f} | "
                  f"{t['id_gain']:+.3f} | {t['ood_change']:+.3f} | {r['wall_time_s']:.1f} | {r['trainable_params']:,} |")


if __name__ == "__main__":
    main()
