#!/usr/bin/env python
"""Cost of the three lit-offline image towers (EfficientNet-Lite0/1/2) at candidate working
resolutions: what picks each tower's working size.

Rows per (tower, px), one torch thread by default:
- ``encode img/s``: ``extract_features(x).mean((2,3))`` on a batch of 128 random images in
  [-1, 1], channels-last, inference mode (the frozen tower's cost in signals and evaluation);
- ``full-FT step s``: one forward + backward + AdamW step of the image tower on a batch of 32
  (``full``'s default batch); a ``full`` run at 16 shots x 10 classes x 10 epochs is 50 steps.

Best of ``--rounds`` (on a shared machine slower rounds measure the neighbours); the load
average is kept in the JSON.

    python benchmarks/towers.py [--sizes 64,96] [--threads 1] [--out benchmarks/results/towers.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_tower(tower: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    from advisor_plugins.models.lit_offline_model import TOWERS

    module, file_class, _ = TOWERS[tower]
    weights = getattr(importlib.import_module(module), file_class).get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(tower, weights_path=weights)
    return net.to(memory_format=torch.channels_last).eval()


def measure(net: torch.nn.Module, size: int, rounds: int) -> dict[str, float]:
    x = (torch.rand(128, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).contiguous(memory_format=torch.channels_last)
    encode, step = [], []
    with torch.inference_mode():
        net.extract_features(x[:8])  # warm-up
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    for _ in range(rounds):
        with torch.inference_mode():
            t = time.perf_counter()
            net.extract_features(x).mean((2, 3))
            encode.append(len(x) / (time.perf_counter() - t))
        net.train()
        t = time.perf_counter()
        opt.zero_grad()
        net.extract_features(x[:32]).mean((2, 3)).pow(2).mean().backward()
        opt.step()
        step.append(time.perf_counter() - t)
        net.eval()
    return {"encode_img_per_s": round(max(encode), 1), "full_ft_step_s": round(min(step), 3),
            "full_run_50_steps_s": round(50 * min(step), 1)}


def main(argv: list[str] | None = None) -> int:
    from advisor_plugins.models.lit_offline_model import TOWERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,96")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "towers.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for tower in TOWERS:
        net = load_tower(tower)
        params = sum(p.numel() for p in net.parameters())
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(net, size, args.rounds)
            rows.append({"tower": tower, "px": size, "params": params, **r, "load_average_1min": round(os.getloadavg()[0], 2)})
            print(f"{tower:<20} {size:>4} px  encode {r['encode_img_per_s']:>7.1f} img/s  full-FT step {r['full_ft_step_s']:.3f} s"
                  f"  (50 steps {r['full_run_50_steps_s']:.1f} s)  load {rows[-1]['load_average_1min']}", flush=True)
    out = {"threads": args.threads, "rounds": args.rounds, "python": platform.python_version(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
