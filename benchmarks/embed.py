#!/usr/bin/env python
"""Embedding throughput: the whole pipeline next to raw ``encode_image``, same model, same
images, same run.

Rows (images/s):
- ``raw encode_image``: pixels already preprocessed in memory; only the model's forward.
- ``pipeline, arrays``: ``advisor.embed.encode_images`` on an in-memory uint8 ImageSet
  (vectorised resize + normalise, batching, copy back to numpy).
- ``pipeline, files``: the same images as PNG files (DataLoader, PIL decode, the model's
  ``preprocess``), with 0 and 1 worker processes.
- ``embed() end to end``: ``advisor.embed.embed`` with the cache off (dataset load, split,
  images, class prompts).

CPU: lit-offline at 64 px. GPU (when present): ViT-B-32 (random weights: same cost as trained
ones), batch 256, bf16 autocast. Modes are interleaved over several rounds; each mode's best
round is its throughput (as ``timeit`` takes the minimum time: on a shared machine the slower
rounds measure the neighbours), and every round is kept in the JSON with the load average.

    python benchmarks/embed.py [--n 256] [--rounds 7] [--out benchmarks/results/embed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _images(n: int, dataset: str):  # type: ignore[no-untyped-def]
    from advisor.data import get_split, load_dataset, sample

    bundle = load_dataset(dataset)
    return sample(get_split(bundle, "train"), n, 0)


def _write_pngs(images, folder: Path):  # type: ignore[no-untyped-def]
    from advisor.specs import ImageSet

    paths = []
    for i in range(len(images)):
        p = folder / f"{i:05d}.png"
        images.pil(i).save(p)
        paths.append(str(p))
    return ImageSet(images=paths, labels=images.labels, ids=images.ids)


def _time(fn, n: int, device: str) -> float:  # type: ignore[no-untyped-def]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def bench(model_spec, dataset: str, n: int, batch_size: int, device: str, rounds: int, workers: list[int]) -> dict:  # type: ignore[no-untyped-def]
    from advisor.embed import _autocast, embed, encode_images, load_model
    from advisor.specs import DatasetSpec

    model = load_model(model_spec, device)
    images = _images(n, dataset)
    n = len(images)
    dev = torch.device(device)
    with torch.inference_mode():
        pixels = model.preprocess_batch(torch.from_numpy(np.array(images.images))).to(dev)
    batches = [pixels[i : i + batch_size] for i in range(0, n, batch_size)]

    def raw() -> None:
        with torch.inference_mode(), _autocast(dev):
            for b in batches:
                model.encode_image(b)

    tmp = tempfile.TemporaryDirectory(prefix="advisor-bench-")
    files = _write_pngs(images, Path(tmp.name))
    modes = {"raw encode_image": raw, "pipeline, arrays": lambda: encode_images(model, images, batch_size=batch_size, quiet=True)}
    for w in workers:
        modes[f"pipeline, files ({w} workers)"] = lambda w=w: encode_images(model, files, batch_size=batch_size, num_workers=w, quiet=True)
    raw()  # warm-up (allocator, kernels)
    results: dict[str, list[float]] = {k: [] for k in modes}
    load = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, fn in modes.items():
            results[name].append(_time(fn, n, device))
        load.append(os.getloadavg()[0])
    tmp.cleanup()

    e2e_runs, n_e2e = [], 0
    for _ in range(max(1, rounds // 2)):
        t = time.perf_counter()
        emb = embed(model_spec, DatasetSpec(dataset), split="test", device=device, batch_size=batch_size, use_cache=False, quiet=True)
        n_e2e = len(emb.labels)
        e2e_runs.append(n_e2e / (time.perf_counter() - t))
    results[f"embed() end to end ({dataset} test, {n_e2e} images, cache off)"] = e2e_runs

    raw_best = max(results["raw encode_image"])
    raw_runs = results["raw encode_image"]
    rows = []
    for name, vals in results.items():
        paired = [v / r for v, r in zip(vals, raw_runs)] if len(vals) == len(raw_runs) else []
        rows.append({"mode": name, "images_per_s": round(max(vals), 1), "median": round(statistics.median(vals), 1),
                     "runs": [round(v, 1) for v in vals], "vs_raw": round(max(vals) / raw_best, 3),
                     "median_round_ratio": round(statistics.median(paired), 3) if paired else None})
    return {
        "model": model_spec.name, "image_size": model.image_size, "device": device, "batch_size": batch_size,
        "precision": "bf16" if device.startswith("cuda") else "fp32", "dataset": dataset, "n_images": n,
        "rounds": rounds, "load_average_1min": [round(x, 2) for x in load], "rows": rows,
    }


def print_table(result: dict) -> None:
    print(f"\n{result['model']} @ {result['image_size']} px, {result['device']} {result['precision']}, "
          f"batch {result['batch_size']}, {result['n_images']} {result['dataset']} images, best of {result['rounds']} rounds")
    print(f"{'mode':<66}{'images/s':>10}{'median':>9}{'vs raw':>8}")
    for r in result["rows"]:
        print(f"{r['mode']:<66}{r['images_per_s']:>10.1f}{r['median']:>9.1f}{r['vs_raw']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    from advisor.specs import ModelSpec

    ap = argparse.ArgumentParser(description="Embedding pipeline throughput vs raw encode_image.")
    ap.add_argument("--n", type=int, default=256, help="images per measurement (CPU)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--gpu-n", type=int, default=8192)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    args = ap.parse_args(argv)

    results = []
    cpu = bench(ModelSpec("lit-offline"), args.dataset, args.n, args.batch_size, "cpu", args.rounds, [0, 1])
    print_table(cpu)
    results.append(cpu)
    if torch.cuda.is_available():
        gpu = bench(ModelSpec("ViT-B-32"), args.dataset, args.gpu_n, 256, "cuda", args.rounds, [4])
        print_table(gpu)
        results.append(gpu)
    else:
        print("\n(no GPU: the ViT-B-32 / bf16 / batch 256 measurement was skipped)")
    out = {
        "benchmark": "embed",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
