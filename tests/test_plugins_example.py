"""The example third-party plugin (examples/advisor-example-metric): pip-installed for real,
found through its entry point by fresh ``advisor plugins`` and ``advisor signals`` processes."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_advisor

from advisor.specs import Embeddings

EXAMPLE = REPO / "examples" / "advisor-example-metric"
DIST = "advisor-example-metric"


def _load_module():
    spec = importlib.util.spec_from_file_location("advisor_example_metric_src", EXAMPLE / "advisor_example_metric.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def installed_example(tmp_path):
    # Build from a copy so no build/ or *.egg-info lands in the repository.
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src)
    pip = [sys.executable, "-m", "pip"]
    quiet = {"capture_output": True, "text": True}
    done = subprocess.run(pip + ["install", "--no-deps", "--no-build-isolation", "--no-input", "--no-index", str(src)],
                          **quiet)
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        subprocess.run(pip + ["uninstall", "-y", DIST], **quiet)


def test_installed_example_appears_in_advisor_plugins(installed_example, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ADVISOR_BLOCK_PLUGINS", "ADVISOR_LOAD_PLUGINS")}
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    p = subprocess.run([sys.executable, "-c", code, "plugins", "--json"], capture_output=True, text=True, env=env,
                       timeout=180)
    assert p.returncode == 0, p.stderr
    entries = {e["name"]: e for e in json.loads(p.stdout)}
    assert entries["example_metric"] == {
        "name": "example_metric",
        "package": DIST,
        "version": "0.1.0",
        "hooks": ["register_metrics"],
        "metrics": ["centroid_margin"],
        "tuners": [],
        "datasets": [],
        "models": [],
        "executors": [],
        "reconstructed": [],
    }
    # The test suite's own processes keep third-party plugins out.
    blocked = run_advisor("plugins", "--json")
    assert "example_metric" not in {e["name"] for e in json.loads(blocked.stdout)}

    # Its value appears in `advisor signals`, next to the built-in metrics, equal to a plain reference.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    image = rng.normal(size=(60, 16)) + 2.0 * np.eye(16)[labels]
    npz = str(tmp_path / "example-signals.npz")
    np.savez(npz, image=image, text=rng.normal(size=(3, 16)), labels=labels)
    s = subprocess.run([sys.executable, "-c", code, "signals", "--from-embeddings", npz, "--json"],
                       capture_output=True, text=True, env=env, timeout=180)
    assert s.returncode == 0, s.stderr
    metrics = json.loads(s.stdout)["signals"]
    assert "iimm" in metrics
    assert metrics["centroid_margin"] == pytest.approx(_reference_margin(image, labels), abs=1e-6)


def _reference_margin(x: np.ndarray, y: np.ndarray) -> float:
    """Straight loops over images and classes, independent of the plugin's vectorised code."""
    xn = [v / np.linalg.norm(v) for v in x]
    classes = sorted(set(y.tolist()))
    cents = {}
    for k in classes:
        m = np.mean([xn[i] for i in range(len(xn)) if y[i] == k], axis=0)
        cents[k] = m / np.linalg.norm(m)
    margins = []
    for i, v in enumerate(xn):
        own = float(v @ cents[int(y[i])])
        other = max(float(v @ cents[k]) for k in classes if k != y[i])
        margins.append(own - other)
    return float(np.mean(margins))


def test_example_metric_matches_a_reference_computation():
    mod = _load_module()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    image = rng.normal(size=(60, 8)) + 2.0 * np.eye(3, 8)[labels]
    emb = Embeddings(image=image, text=np.zeros((3, 8)), labels=labels, class_names=["a", "b", "c"])
    got = mod.centroid_margin(emb)
    assert got == pytest.approx(_reference_margin(image, labels), abs=1e-12)
    assert got > 0  # clusters shifted apart
    shuffled = Embeddings(image=image, text=emb.text, labels=rng.permutation(labels), class_names=emb.class_names)
    assert mod.centroid_margin(shuffled) < got
    with pytest.raises(ValueError, match="at least two classes"):
        mod.centroid_margin(Embeddings(image=image, text=emb.text, labels=np.zeros(60, int), class_names=["a"]))
    registered = []
    mod.register_metrics(registered.append)
    assert [m.name for m in registered] == ["centroid_margin"] and registered[0].needs == {"image", "labels"}
