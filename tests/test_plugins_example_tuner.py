"""The example third-party tuner (examples/advisor-example-tuner, ``clip_adapter``) takes part
like a built-in: pip-installed for real (``--target`` + PYTHONPATH, so no other process on the
machine sees it), it is listed by ``advisor plugins``, documented by ``advisor run --help``,
``advisor run --method clip_adapter`` records a row, ``advisor predictor train`` learns it and
``advisor recommend`` ranks it beside the built-ins. Nothing in the core names it."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

EXAMPLE = REPO / "examples" / "advisor-example-tuner"
CODE = "import sys; from advisor.cli import cli; sys.exit(cli())"
BUILTINS = {"full", "lora", "coop", "contcoop", "tpc_cma"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example built and installed by pip into a private directory."""
    root = tmp_path_factory.mktemp("example-tuner")
    src = root / "src"
    shutil.copytree(EXAMPLE, src)  # build from a copy: no build/ or *.egg-info in the repository
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
                           "--no-index", "--target", str(root / "site"), str(src)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return root / "site"


def _advisor(site, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("ADVISOR_BLOCK_PLUGINS", "ADVISOR_LOAD_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ADVISOR_LOAD_PLUGINS"] = "example_tuner"  # only this third-party plugin
    env["COLUMNS"] = "400"
    p = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True, env=env, timeout=timeout,
                       check=False)
    assert p.returncode == 0, f"advisor {' '.join(args)} failed:\n{p.stderr}"
    return p


def test_installed_example_tuner_takes_part_like_a_builtin(site, tmp_path):
    entries = {e["name"]: e for e in json.loads(_advisor(site, "plugins", "--json").stdout)}
    assert entries["example_tuner"] == {
        "name": "example_tuner", "package": "advisor-example-tuner", "version": "0.1.0",
        "hooks": ["register_tuners"], "metrics": [], "tuners": ["clip_adapter"], "datasets": [], "models": [],
        "executors": [], "reconstructed": [],
    }
    help_text = " ".join(_advisor(site, "run", "--help").stdout.split())
    assert "clip_adapter: CLIP-Adapter (Gao et al. 2021)" in help_text
    assert "ratio float, default 0.2: residual ratio" in help_text
    assert "reduction int, default 4: bottleneck reduction" in help_text

    # A copy of the shipped history (real runs of the five built-ins), never the file itself.
    db = tmp_path / "history.db"
    shutil.copyfile(REPO / "registry.db", db)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        shipped_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    run = json.loads(_advisor(site, "run", "--method", "clip_adapter", "--model", "tiny-vit", "--dataset", "digits",
                              "--shots", "2", "--epochs", "1", "--hparam", "ratio=0.5", "--ood", "mnist-5k",
                              "--max-images", "60", "--db", str(db), "--json", "--quiet").stdout)
    assert run["method"] == "clip_adapter" and run["run_id"]
    assert run["hparams"]["ratio"] == 0.5 and run["hparams"]["reduction"] == 4  # override, declared default
    assert run["trainable_params"] == 2 * 32 * (32 // 4)  # tiny-vit: embed dim 32, two bias-free layers
    rows = json.loads(_advisor(site, "history", "list", "--method", "clip_adapter", "--db", str(db), "--json").stdout)
    assert [r["run_id"] for r in rows] == [run["run_id"]]

    info = json.loads(_advisor(site, "predictor", "train", "--db", str(db), "--json").stdout)
    assert info["n_runs"] == shipped_runs + 1  # the shipped runs and the one just recorded
    from advisor.history import open_history
    from advisor.predictor import FittedPredictor

    with open_history(str(db)) as h:
        learned = FittedPredictor.from_stored(h.load_predictor("default"))
    assert "clip_adapter" in learned.schema.categories["method"]  # a category the predictor learned

    rec = json.loads(_advisor(site, "recommend", "--model", "tiny-vit", "--dataset", "digits", "--db", str(db),
                              "--allow-random-weights", "--json").stdout)
    assert rec["source"] == "predictor"
    ranked = {m["method"]: m for m in rec["methods"]}
    assert set(ranked) == BUILTINS | {"clip_adapter"}
    assert sorted(m["rank"] for m in rec["methods"]) == list(range(1, 7))
    assert all(isinstance(m["id_gain"], float) and math.isfinite(m["id_gain"]) for m in rec["methods"])
    assert ranked["clip_adapter"]["support_runs"] >= 1  # the run just recorded


def _example_module():
    spec = importlib.util.spec_from_file_location(
        "advisor_example_tuner", EXAMPLE / "advisor_example_tuner" / "__init__.py",
        submodule_search_locations=[str(EXAMPLE / "advisor_example_tuner")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["advisor_example_tuner"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_example_adapter_is_the_residual_blend_of_clip_adapter():
    mod = _example_module()
    try:
        from advisor_example_tuner.adapter import Adapter

        torch.manual_seed(0)
        adapter = Adapter(16, reduction=4, ratio=0.3)
        f = torch.randn(5, 16)
        w1, w2 = (adapter.fc[i].weight.detach().numpy().astype(np.float64) for i in (0, 2))
        x = f.numpy().astype(np.float64)
        reference = 0.3 * np.maximum(np.maximum(x @ w1.T, 0) @ w2.T, 0) + 0.7 * x
        assert np.allclose(adapter(f).detach().numpy(), reference, atol=1e-6)
        assert mod.CLIP_ADAPTER.family == "output-map" and not mod.CLIP_ADAPTER.reconstructed
    finally:
        for name in [n for n in sys.modules if n.startswith("advisor_example_tuner")]:
            del sys.modules[name]


def test_example_tuner_learns_separable_features():
    """On frozen features that a class-wise shift makes separable, training the adapter raises
    training accuracy above the untouched model's (the adapter can move features)."""
    from advisor import tuning as T
    from advisor.embed import load_model
    from advisor.specs import ModelSpec, TrainContext

    _example_module()
    try:
        from advisor_example_tuner.adapter import train

        model = load_model(ModelSpec("tiny-vit"), "cpu")
        names = ["a", "b", "c", "d"]
        labels = torch.arange(40) % 4
        with torch.no_grad():
            txt = torch.nn.functional.normalize(T.encode_class_texts(model, names, "a photo of a {}.", "cpu"), dim=-1)
        g = torch.Generator().manual_seed(0)
        feats = (torch.randn(40, txt.shape[1], generator=g) + 1.0 * txt[(labels + 1) % 4]).abs()  # towards the next class
        ctx = TrainContext(model=model, class_names=names, template="a photo of a {}.", train_pixels=None,
                           train_labels=labels, device="cpu", seed=0, epochs=60, lr=1e-2,
                           hparams={"ratio": 0.8, "warmup_epochs": 0}, image_features=feats)
        result = train(ctx)

        def accuracy(f):
            return float((torch.nn.functional.normalize(f, dim=-1) @ txt.T).argmax(1).eq(labels).float().mean())

        before = accuracy(feats)
        with torch.no_grad():
            after = accuracy(result.adapted.adapter(feats))
        assert result.losses[-1] < result.losses[0]
        assert after > before + 0.25, (before, after)
    finally:
        for name in [n for n in sys.modules if n.startswith("advisor_example_tuner")]:
            del sys.modules[name]
