#!/usr/bin/env python
"""Zero-shot accuracy of every lit-offline model on every offline task, and encode speed.

For each image tower the frozen 1280-d features of each task's test images are computed once
(the heads of one tower share them), then each head's projection gives its zero-shot accuracy
with the task's own prompt template. Test images: a fixed stratified sample of at most
``--max-test`` per task (``advisor.data.sample``, seed 0; all when fewer), the same sample
``advisor run --max-images`` scores.

    python scripts/zero_shot_table.py                       # markdown table on stdout
    python scripts/zero_shot_table.py --json /tmp/zs.json --towers efficientnet-lite1

Encode speed (img/s) is the time to preprocess and encode the task images at the working
resolution with this process's torch threads, summed over all tasks; it depends on the load
of the machine, so it is printed with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def frozen_features(model, images, batch_size: int = 128) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The tower's pooled features through the model's own batch preprocessing."""
    from advisor.embed import _uses_fast_path

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            if _uses_fast_path(images, model):
                px = model.preprocess_batch(torch.from_numpy(np.array(images.images[start:stop], copy=True)))
            else:
                px = torch.stack([model.preprocess(images.pil(i)) for i in range(start, stop)])
            out.append(model.image_features(px).float().numpy())
    return np.concatenate(out)


def cached_by_id(fcache: Path, tower: str, task: str, bundle, test, size: int) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    """The features of ``test`` from any earlier sample of the same task (matched by item id):
    this script's own caches, or the test samples ``train_lit_projection.py`` cached."""
    from advisor.config import cache_dir
    from advisor.data import get_split, sample

    pools: list[tuple[list[str], np.ndarray]] = []
    for f in fcache.glob(f"{tower}-{task}-{bundle.fingerprint}-{size}px-*.npz"):
        with np.load(f, allow_pickle=False) as z:
            pools.append((z["ids"].tolist(), z["features"]))
    if (bundle.source or task) == task:  # a base source: the training script's cache
        tag = "" if tower == "efficientnet-lite0" else f"{tower}-"
        full = get_split(bundle, "test")
        for cap in (None, 1000, 500):
            s = sample(full, cap, 0)
            f = cache_dir() / "lit-train-features" / f"{tag}{task}-test-{size}px-{s.split_hash()}.npy"
            if f.is_file():
                pools.append((list(s.ids), np.load(f, allow_pickle=False)))
    for ids, features in pools:
        row = {i: k for k, i in enumerate(ids)}
        if len(features) == len(ids) and all(i in row for i in test.ids):
            return features[[row[i] for i in test.ids]]
    return None


def main(argv: list[str] | None = None) -> int:
    from advisor.config import cache_dir
    from advisor.data import get_split, load_dataset, sample
    from advisor_plugins.datasets.offline import SOURCES as OFFLINE_SOURCES
    from advisor.embed import class_text_features
    from advisor_plugins.datasets.derived import TASKS
    from advisor_plugins.models.lit_offline_model import TOWERS, VARIANTS, LitOfflineModel, load_towers, read_head

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--towers", nargs="*", default=list(TOWERS), choices=list(TOWERS))
    ap.add_argument("--tasks", nargs="*", default=list(OFFLINE_SOURCES) + list(TASKS))
    ap.add_argument("--max-test", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    fcache = cache_dir() / "zero-shot-table-features"
    fcache.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {"accuracy": {}, "encode": {}, "test_images": {}, "chance": {}, "sources": {},
                                "max_test": args.max_test, "image_size": args.image_size, "threads": torch.get_num_threads()}
    bundles = {t: load_dataset(t) for t in args.tasks}
    tests = {t: sample(get_split(b, "test"), args.max_test, 0) for t, b in bundles.items()}
    for t, b in bundles.items():
        results["test_images"][t] = len(tests[t])
        results["chance"][t] = round(1 / len(b.class_names), 3)
        results["sources"][t] = b.source or t
    for tower in args.towers:
        effnet, bert, tokenizer = load_towers("cpu", tower)
        model = LitOfflineModel(effnet, bert, tokenizer, image_size=args.image_size, tower=tower).eval()
        feats: dict[str, np.ndarray] = {}
        encoded, seconds = 0, 0.0
        for task, test in tests.items():
            found = cached_by_id(fcache, tower, task, bundles[task], test, args.image_size)
            if found is not None:
                feats[task] = found
                continue
            t0 = time.perf_counter()
            feats[task] = frozen_features(model, test)
            dt = time.perf_counter() - t0
            encoded, seconds = encoded + len(test), seconds + dt
            path = fcache / f"{tower}-{task}-{bundles[task].fingerprint}-{args.image_size}px-{test.split_hash()}.npz"
            np.savez(path, ids=np.asarray(test.ids), features=feats[task])
            log(f"{tower} {task}: {len(test)} images in {dt:.1f}s")
        if encoded:
            results["encode"][tower] = {"images": encoded, "seconds": round(seconds, 2), "img_per_s": round(encoded / seconds, 1),
                                        "load_average_1min": round(os.getloadavg()[0], 2)}
        prompts = {t: class_text_features(model, b.class_names, b.templates[0]) for t, b in bundles.items()}
        for name, (vt, variant) in VARIANTS.items():
            if vt != tower:
                continue
            w = read_head(variant, tower)["proj.weight"].float().numpy()
            row = {}
            for task in tests:
                z = feats[task] @ w.T
                z /= np.linalg.norm(z, axis=1, keepdims=True)
                p = prompts[task] / np.linalg.norm(prompts[task], axis=1, keepdims=True)
                row[task] = round(float(((z @ p.T).argmax(1) == np.asarray(tests[task].labels)).mean()), 3)
            results["accuracy"][name] = row
        del model, effnet, bert
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    tasks = list(tests)
    print("| model | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for name, row in results["accuracy"].items():
        print(f"| {name} | " + " | ".join(f"{row[t]:.3f}" for t in tasks) + " |")
    print("| chance | " + " | ".join(f"{results['chance'][t]:.3f}" for t in tasks) + " |")
    print("| test images | " + " | ".join(str(results["test_images"][t]) for t in tasks) + " |")
    for tower, e in results["encode"].items():
        print(f"encode {tower} at {args.image_size} px: {e['img_per_s']} img/s ({e['images']} images, {e['seconds']} s, "
              f"{results['threads']} threads, load average {e['load_average_1min']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
