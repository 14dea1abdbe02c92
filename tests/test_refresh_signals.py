"""``advisor history refresh-signals``: a pair whose signals came from older metric code gets
a recomputed set, its runs point at it, and the run measurements stay as they were."""

from __future__ import annotations

import json
import sqlite3

import pytest

from advisor.history import open_history
from advisor.plugins import get_metrics
from advisor.runner import run_finetune
from advisor.specs import DatasetSpec, ModelSpec


@pytest.mark.slow
def test_refresh_recomputes_stale_signal_sets_and_repoints_runs(tmp_path, cli):
    db = str(tmp_path / "h.db")
    run = run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "tpc_cma", shots=2, seed=0,
                       hparams={"epochs": 1}, ood=["faces"], max_test=40, max_ood=20, db=db, save_adapter=False,
                       quiet=True)
    con = sqlite3.connect(db)
    (old_set,) = con.execute("SELECT signal_set_id FROM runs").fetchone()
    before = con.execute("SELECT id_acc_before, id_acc_after, ood_after FROM runs").fetchone()
    # As if the set had been measured by an older version of the IIMM metric.
    con.execute("UPDATE signal_values SET version = 'old', value = value + 1 WHERE name = 'iimm'")
    con.commit()
    con.close()

    dry = cli("history", "refresh-signals", "--db", db, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    (entry,) = json.loads(dry.stdout)["pairs"]
    assert entry["status"] == "would-refresh" and "iimm" in entry["stale_metrics"]

    out = cli("history", "refresh-signals", "--db", db, "--json")
    assert out.exit_code == 0, out.output
    (entry,) = json.loads(out.stdout)["pairs"]
    assert entry["status"] == "refreshed" and entry["runs_repointed"] == 1
    con = sqlite3.connect(db)
    (new_set,) = con.execute("SELECT signal_set_id FROM runs").fetchone()
    assert new_set != old_set
    version, value = con.execute("SELECT version, value FROM signal_values WHERE signal_set_id = ? AND name = 'iimm'",
                                 (new_set,)).fetchone()
    assert version != "old" and value == pytest.approx(run.signals["iimm"], abs=1e-9)
    assert con.execute("SELECT id_acc_before, id_acc_after, ood_after FROM runs").fetchone() == before
    con.close()
    again = cli("history", "refresh-signals", "--db", db, "--json")
    assert [p["status"] for p in json.loads(again.stdout)["pairs"]] == ["current"]
    with open_history(db) as h:
        assert h.count() == 1


@pytest.mark.slow
def test_a_pair_whose_later_runs_point_at_an_older_set_is_stale(tmp_path, cli):
    """A sweep re-pinned to newer code midway leaves a pair's runs on two signal sets; the pair
    is refreshed when any of them is out of date, not only when its first run's is."""
    db = str(tmp_path / "h.db")
    for seed in (0, 1):
        run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", shots=2, seed=seed,
                     hparams={"epochs": 1}, ood=["faces"], max_test=40, max_ood=20, db=db, save_adapter=False,
                     quiet=True)
    with open_history(db) as h:
        (pair,) = h.pairs()
        (row, _) = h.training_rows()
        old_versions = dict(row["signal_versions"], iimm="old")
        old_values = dict(row["signals"], iimm=row["signals"]["iimm"] + 1)
        old_set = h.store_signal_set(pair["model_desc"], pair["dataset_desc"], None, old_values, old_versions)
    con = sqlite3.connect(db)
    first, second = [r[0] for r in con.execute("SELECT id FROM runs ORDER BY id")]
    con.execute("UPDATE runs SET signal_set_id = ? WHERE id = ?", (old_set, second))
    con.commit()
    con.close()

    out = cli("history", "refresh-signals", "--db", db, "--json")
    assert out.exit_code == 0, out.output
    (entry,) = json.loads(out.stdout)["pairs"]
    assert entry["status"] == "refreshed" and entry["stale_metrics"] == ["iimm"] and entry["runs_repointed"] == 2
    con = sqlite3.connect(db)
    sets = {r[0] for r in con.execute("SELECT signal_set_id FROM runs")}
    con.close()
    assert len(sets) == 1 and old_set not in sets


@pytest.mark.slow
def test_refresh_of_one_metric_keeps_the_other_signals(tmp_path, cli):
    """``--metric NAME``: a metric added after the runs is computed and merged into each pair's
    set; every other stored signal keeps its value and version (here a deliberately odd IIMM)."""
    db = str(tmp_path / "h.db")
    run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "tpc_cma", shots=2, seed=0,
                 hparams={"epochs": 1}, ood=["faces"], max_test=40, max_ood=20, db=db, save_adapter=False, quiet=True)
    con = sqlite3.connect(db)
    con.execute("UPDATE signal_values SET value = 123.5, version = 'kept' WHERE name = 'iimm'")
    con.execute("DELETE FROM signal_values WHERE name LIKE 'anchor%'")  # as if recorded before the metric
    con.commit()
    con.close()
    bad = cli("history", "refresh-signals", "--db", db, "--all", "--metric", "no-such-metric")
    assert bad.exit_code != 0 and "unknown metric" in bad.output and "Traceback" not in bad.output
    out = cli("history", "refresh-signals", "--db", db, "--all", "--metric", "anchor", "--json")
    assert out.exit_code == 0, out.output
    with open_history(db) as h:
        (row,) = h.training_rows()
    assert row["signals"]["iimm"] == 123.5 and row["signal_versions"]["iimm"] == "kept"
    assert 0.0 <= row["signals"]["anchor_probe.k1"] <= 1.0 and row["signal_versions"]["anchor_probe.k1"] == get_metrics()["anchor"].version
