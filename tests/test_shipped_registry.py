"""Issue 11: the shipped registry.db is the second-edition grid (sweeps/registry.toml), measured
as the issue asks, with nothing machine-specific or heavy inside. Read straight from the file
(read-only URI), so these checks hold for exactly what a user installs."""

from __future__ import annotations

import collections
import json
import sqlite3
from pathlib import Path

import pytest

REGISTRY = Path(__file__).resolve().parent.parent / "registry.db"


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    if not REGISTRY.is_file():
        pytest.skip("no registry.db in this checkout")
    con = sqlite3.connect(f"file:{REGISTRY}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "SELECT r.*, m.name AS model, m.extra AS model_extra, m.pretrained AS pretrained, d.name AS dataset, "
            "d.extra AS dataset_extra, d.n_test AS n_test FROM runs r JOIN models m ON m.id = r.model_id "
            "JOIN datasets d ON d.id = r.dataset_id").fetchall()
    finally:
        con.close()
    out = []
    for r in rows:
        row = dict(r)
        for key in ("hparams", "provenance", "model_extra", "dataset_extra", "ood_before", "ood_after"):
            row[key] = json.loads(row[key]) if row[key] else {}
        out.append(row)
    return out


def test_the_grid_spans_towers_models_sources_and_tasks(runs):
    assert len(runs) >= 1000
    towers = collections.defaultdict(set)
    for r in runs:
        towers[r["model_extra"].get("image_tower")].add(r["model"])
    assert None not in towers and len(towers) >= 3
    assert all(len(models) >= 2 for models in towers.values()), towers  # two heads or more per tower
    assert sum(len(m) for m in towers.values()) >= 8
    sources = {r["dataset_extra"].get("source") for r in runs}
    assert None not in sources and len(sources) >= 5
    assert len({r["dataset"] for r in runs}) >= 12
    assert {r["method"] for r in runs} >= {"full", "lora", "coop", "contcoop", "tpc_cma"}


def test_every_model_task_method_at_16_shots_and_the_planned_subsets(runs):
    at16 = {(r["model"], r["dataset"], r["method"]) for r in runs if r["shots"] == 16}
    models = {r["model"] for r in runs}
    datasets = {r["dataset"] for r in runs}
    methods = {r["method"] for r in runs}
    assert at16 == {(m, d, k) for m in models for d in datasets for k in methods}
    assert {r["shots"] for r in runs} == {1, 4, 16, 64}
    towers_of = lambda shots: {r["model_extra"]["image_tower"] for r in runs if r["shots"] == shots}  # noqa: E731
    assert towers_of(1) == towers_of(4) == towers_of(16)  # the other shot counts span every tower
    sources_of = lambda shots: {r["dataset_extra"]["source"] for r in runs if r["shots"] == shots}  # noqa: E731
    assert sources_of(1) == sources_of(16)


def test_16_shot_configurations_with_three_seeds_span_every_tower(runs):
    seeds = collections.defaultdict(set)
    for r in runs:
        if r["shots"] == 16:
            key = (r["model"], r["dataset"], r["method"], json.dumps(r["hparams"], sort_keys=True))
            seeds[key].add(r["seed"])
    repeated = [k for k, s in seeds.items() if len(s) >= 3]
    assert len(repeated) >= 150
    tower = {r["model"]: r["model_extra"]["image_tower"] for r in runs}
    assert {tower[k[0]] for k in repeated} == set(tower.values())


def test_a_forgetting_axis_for_the_tower_updating_methods(runs):
    lrs = collections.defaultdict(set)
    for r in runs:
        lrs[r["method"]].add(r["hparams"].get("lr"))
    assert len(lrs["full"]) >= 2 and len(lrs["lora"]) >= 2


def test_measurements_are_fixed_samples_with_standard_errors(runs):
    for r in runs:
        m = r["provenance"]["measurement"]
        assert m["id_n"] >= min(500, r["n_test"]), (r["run_id"], m["id_n"])
        assert m["id_se_before"] is not None and m["id_se_after"] is not None
        assert set(m["ood_n"]) == set(r["ood_after"]) and set(m["ood_se_after"]) == set(r["ood_after"])
        assert r["provenance"].get("git_sha") and r["provenance"].get("packages", {}).get("torch")


def test_no_random_weights_no_adapter_paths_and_small(runs):
    assert not [r["run_id"] for r in runs if r["adapter_path"]]
    assert not [r["model"] for r in runs if r["model_extra"].get("random_weights")]
    assert REGISTRY.stat().st_size < 40 * 2**20
