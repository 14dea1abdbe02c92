"""How long every signal takes, next to the time to embed the same images.

    python benchmarks/signals.py                 # N = 1k, 10k, 50k x C = 10, 100, 1000, d = 512
    python benchmarks/signals.py --n 1000 --c 10 # one configuration

Signals are timed on random unit vectors with random labels (timing does not depend on the
values, and 50k real embeddings at d = 512 do not exist offline). Every built-in metric runs
through ``advisor.signals.run_metrics`` exactly as ``advisor signals`` runs it (without per-layer
states, so MIR is the final-embedding variant); one warm-up call on a tiny set first, so one-time
imports (POT takes about 3 s to import) are not billed to a metric.

Embedding time is *measured* for lit-offline at 64 px on real Fashion-MNIST images on this CPU
(a warm-up batch, then ``--embed-images`` images through ``advisor.embed.encode_images``), plus
the text tower on real prompts, and *extrapolated* linearly to N images and C prompts. Results
go to ``benchmarks/results/signals.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from advisor.signals import run_metrics
from advisor.specs import Embeddings

RESULTS = Path(__file__).resolve().parent / "results" / "signals.json"


def random_embeddings(n: int, c: int, d: int, seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n, d)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = rng.standard_normal((c, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)]) if n >= c else rng.integers(0, c, n)
    return Embeddings(image=image, text=text, labels=labels.astype(np.int64), class_names=[f"c{i}" for i in range(c)])


def measure_embedding(n_images: int, model_name: str, image_size: int) -> dict:
    """Images/s and prompts/s of a real model on real images, on this machine."""
    import torch

    from advisor.data import get_split, load_dataset, sample
    from advisor.embed import encode_images, encode_texts, load_model
    from advisor.specs import ModelSpec

    t0 = time.perf_counter()
    model = load_model(ModelSpec(model_name, image_size=image_size), "cpu")
    load_s = time.perf_counter() - t0
    bundle = load_dataset("fashion-mnist")
    images = sample(get_split(bundle, "train", seed=0), n_images + 64, seed=0)
    warm, timed = images.subset(range(64)), images.subset(range(64, 64 + n_images))
    encode_images(model, warm, batch_size=64, device="cpu", quiet=True)
    t0 = time.perf_counter()
    encode_images(model, timed, batch_size=64, device="cpu", quiet=True)
    img_s = time.perf_counter() - t0
    prompts = [f"a photo of a {c} number {i}." for i in range(26) for c in bundle.class_names][:256]
    encode_texts(model, prompts[:32], device="cpu")
    t0 = time.perf_counter()
    encode_texts(model, prompts, device="cpu")
    txt_s = time.perf_counter() - t0
    return {
        "model": model_name, "image_size": image_size, "dataset": "fashion-mnist (real images)",
        "timed_images": n_images, "image_seconds": img_s, "images_per_s": n_images / img_s,
        "timed_prompts": len(prompts), "text_seconds": txt_s, "prompts_per_s": len(prompts) / txt_s,
        "model_load_seconds": load_s, "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--c", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--embed-model", default="lit-offline")
    p.add_argument("--embed-size", type=int, default=64)
    p.add_argument("--embed-images", type=int, default=512)
    p.add_argument("--blas-threads", type=int, default=None,
                   help="Limit BLAS threads for the signals (threadpoolctl); default: numpy's own setting. "
                        "On a shared 2-core machine 1 thread avoids OpenBLAS spin contention.")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    load_start = list(os.getloadavg())  # other processes on the machine inflate every timing
    run_metrics(random_embeddings(64, 4, 16))  # warm-up: imports, first-call overheads

    print(f"embedding throughput: {args.embed_model} at {args.embed_size} px on real images ...", file=sys.stderr)
    try:
        emb_rate = measure_embedding(args.embed_images, args.embed_model, args.embed_size)
    except Exception as exc:  # noqa: BLE001 - report, still time the signals
        emb_rate = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(emb_rate), file=sys.stderr)
    if args.blas_threads:  # after the embedding measurement: the limit is for the signals only
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")
        run_metrics(random_embeddings(64, 4, 16))

    rows = []
    metric_names: list[str] = []
    for n in args.n:
        for c in args.c:
            if c > n:
                continue
            emb = random_embeddings(n, c, args.d, seed=n + c)
            t0 = time.perf_counter()
            sig = run_metrics(emb)
            wall = time.perf_counter() - t0
            for m in sig.metric_seconds:
                if m not in metric_names:
                    metric_names.append(m)
            row = {"n": n, "c": c, "d": args.d, "seconds": dict(sig.metric_seconds), "signals_total_s": sig.total_seconds,
                   "wall_s": wall, "errors": dict(sig.errors)}
            if "images_per_s" in emb_rate:
                row["embed_s_extrapolated"] = n / emb_rate["images_per_s"] + c / emb_rate["prompts_per_s"]
                row["signals_pct_of_embed"] = 100.0 * sig.total_seconds / row["embed_s_extrapolated"]
            rows.append(row)
            print(f"N={n} C={c}: signals {sig.total_seconds:.2f} s  " + " ".join(
                f"{k}={v:.2f}" for k, v in sig.metric_seconds.items()) + (f"  errors={sig.errors}" if sig.errors else ""),
                file=sys.stderr)

    short = {"modality_gap": "gap", "zero_shot_acc": "zs", "transrate": "trate"}
    header = ["N", "C"] + [short.get(m, m) for m in metric_names] + ["signals", "embed*", "%"]
    table = []
    for r in rows:
        table.append([str(r["n"]), str(r["c"])] + [f"{r['seconds'].get(m, float('nan')):.2f}" for m in metric_names]
                     + [f"{r['signals_total_s']:.2f}", f"{r.get('embed_s_extrapolated', float('nan')):.0f}",
                        f"{r.get('signals_pct_of_embed', float('nan')):.2f}"])
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("seconds per metric (random unit vectors, d=%d, this CPU)" % args.d)
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for t in table:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))
    if "images_per_s" in emb_rate:
        print(f"embed* = N / {emb_rate['images_per_s']:.1f} img/s + C / {emb_rate['prompts_per_s']:.1f} prompts/s: "
              f"{args.embed_model} at {args.embed_size} px, measured on {emb_rate['timed_images']} real Fashion-MNIST "
              f"images and {emb_rate['timed_prompts']} prompts, extrapolated linearly (model load "
              f"{emb_rate['model_load_seconds']:.1f} s not included)")
    else:
        print(f"embedding not measured: {emb_rate.get('error')}")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    import torch

    out = {
        "benchmark": "signals",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "numpy": np.__version__, "torch": torch.__version__, "gpu": torch.cuda.is_available(),
                    "load_average_start": load_start, "load_average_end": list(os.getloadavg())},
        "data": "random unit vectors, labels uniform at random (every class present); no per-layer states",
        "blas_threads": args.blas_threads or "numpy default",
        "embedding": emb_rate,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
