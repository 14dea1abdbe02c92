#!/usr/bin/env python
"""Training throughput of each tuner next to the model's forward-only throughput, same model,
same images, same run.

Rows (images/s = training images x epochs / wall time of ``tuner.train``):
- ``forward only``: ``model.encode_image`` on the same preprocessed training images, no grad
  (what one embedding pass costs), timed right before every training run and once at the end
  (the median is shown; ``x fwd`` compares each method with the forward pass timed next to it,
  because the machine may be shared);
- one row per registered tuner (``advisor.plugins.list_tuners()``, in their declared order), with
  its defaults except ``epochs`` (fixed per tuner family, so runs stay short: ``EPOCHS_BY_FAMILY``)
  and, for the frozen-image-tower methods, no cached features: their wall time includes the one
  up-front image pass they make.

Also reported per row: trainable parameters, first and last epoch loss, and training accuracy
before/after (a sanity check that the run learned something, not an evaluation).

CPU: lit-offline at 64 px, 16 shots x 10 classes of a real offline dataset (default mnist-5k).

    python benchmarks/train.py [--dataset mnist-5k] [--shots 16] [--threads 1] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: Epochs per tuner family (``Tuner.family``, a ``advisor.specs.TUNER_FAMILIES`` key) for the
#: benchmark: the defaults would be 10-200. Cheap output maps train longer; other families 2.
EPOCHS_BY_FAMILY = {"full": 2, "low-rank": 2, "prompt": 5, "output-map": 20}
DEFAULT_EPOCHS = 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lit-offline")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=None, help="comma-separated tuners (default: every registered one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's). 1 is steadier on a shared machine.")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from advisor import tuning as T
    from advisor.data import few_shot, get_split, load_dataset
    from advisor.embed import load_model
    from advisor.plugins import get_tuner, list_tuners
    from advisor.runner import preprocess_images
    from advisor.specs import ModelSpec, TrainContext

    bundle = load_dataset(args.dataset)
    template = bundle.templates[0] if bundle.templates else "a photo of a {}."
    train = few_shot(get_split(bundle, "train"), args.shots, args.seed)
    base = load_model(ModelSpec(args.model, image_size=args.image_size), args.device)
    pixels = preprocess_images(base, train)
    labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    n = len(labels)

    def forward_rate() -> float:
        t0 = time.perf_counter()
        T.encode_frozen_images(base, pixels, args.device, 32)
        return n / (time.perf_counter() - t0)

    # The machine may be shared: the forward pass is timed right before every training run and
    # each row is compared with its neighbour; the forward row reports the median.
    T.encode_frozen_images(base, pixels[:32], args.device, 32)  # warm-up
    acc0 = T.top1_accuracy(T.ZeroShotAdapted(base), pixels, labels, bundle.class_names, template)
    rows = []
    forward_rates = []
    methods = [m for m in args.methods.split(",") if m] if args.methods else [t.name for t in list_tuners()]
    for method in methods:
        tuner = get_tuner(method)
        epochs = EPOCHS_BY_FAMILY.get(tuner.family, DEFAULT_EPOCHS)
        fwd = forward_rate()
        forward_rates.append(fwd)
        model = copy.deepcopy(base)
        ctx = TrainContext(model=model, class_names=list(bundle.class_names), template=template,
                           train_pixels=pixels, train_labels=labels, device=args.device, seed=args.seed,
                           epochs=epochs, shots=args.shots)
        t0 = time.perf_counter()
        result = tuner.train(ctx)
        wall = time.perf_counter() - t0
        acc = T.top1_accuracy(result.adapted, pixels, labels, bundle.class_names, template)
        rows.append({"method": method, "epochs": epochs, "images_per_s": n * epochs / wall, "wall_s": wall,
                     "forward_images_per_s_adjacent": fwd, "vs_forward": n * epochs / wall / fwd,
                     "trainable_params": result.trainable_params, "loss_first": result.losses[0],
                     "loss_last": result.losses[-1], "train_acc": acc, "extra": result.extra})
        del model, result
    forward_rates.append(forward_rate())
    med = statistics.median(forward_rates)
    rows.insert(0, {"method": "forward only", "epochs": 1, "images_per_s": med, "wall_s": n / med,
                    "forward_images_per_s_all": forward_rates, "vs_forward": 1.0,
                    "trainable_params": 0, "loss_first": None, "loss_last": None, "train_acc": acc0})

    print(f"{args.model} @ {args.image_size}px on {args.device}, {args.dataset} {args.shots} shots x "
          f"{len(bundle.class_names)} classes = {n} images, torch threads {torch.get_num_threads()}")
    print(f"{'method':<13}{'epochs':>7}{'images/s':>10}{'x fwd':>7}{'wall s':>8}{'trainable':>12}"
          f"{'loss first->last':>20}{'train acc':>10}")
    for r in rows:
        loss = "" if r["loss_first"] is None else f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
        print(f"{r['method']:<13}{r['epochs']:>7}{r['images_per_s']:>10.1f}{r['vs_forward']:>7.2f}{r['wall_s']:>8.1f}"
              f"{r['trainable_params']:>12,}{loss:>20}{r['train_acc']:>10.3f}")
    out = {
        "model": args.model, "image_size": args.image_size, "dataset": args.dataset, "shots": args.shots,
        "n_images": n, "device": args.device, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows,
        "note": "images/s = training images x epochs / wall time of tuner.train; forward only = encode_image without grad (median of the passes timed before each method and at the end); vs_forward = method images/s / adjacent forward images/s",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
