"""`advisor history update`: a user's history (a copy of the registry.db installed at first use)
takes in the runs of a newer installed registry, keeps its own, and is told when it lags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import file_sha, make_run, run_advisor
from synthetic_history import record_synthetic, synthetic_rows

from advisor.history import create_registry, open_history
from advisor.history.location import default_path


def _registry(tmp_path: Path, name: str, seeds: list[int]) -> Path:
    """A shipped-registry file holding one run per seed of one configuration."""
    source = tmp_path / f"{name}-source.db"
    with open_history(str(source)) as h:
        for seed in seeds:
            h.record_run(make_run(seed=seed, run_id=f"shipped-{seed}"))
    path = tmp_path / name / "registry.db"
    path.parent.mkdir()
    assert create_registry(path, str(source)) == len(seeds)
    return path


@pytest.fixture
def upgraded(tmp_path, monkeypatch):
    """A user copy made from a one-run registry (plus one run of the user's own), then an
    upgrade that installs a three-run registry."""
    old = _registry(tmp_path, "old", [0])
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_REGISTRY", str(old))
    with open_history() as h:
        h.record_run(make_run(seed=7, run_id="mine"))
    new = _registry(tmp_path, "new", [0, 1, 2])
    monkeypatch.setenv("ADVISOR_REGISTRY", str(new))
    return new


def test_update_adds_the_missing_shipped_runs_and_keeps_the_users_own(cli, upgraded):
    before = file_sha(upgraded)
    out = cli("history", "update", "--no-train", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (doc["added"], doc["present"], doc["shipped"], doc["trained_on"]) == (2, 1, 3, None)
    with open_history() as h:
        assert sorted(r["run_id"] for r in h.runs()) == ["mine", "shipped-0", "shipped-1", "shipped-2"]
    assert file_sha(upgraded) == before  # the installed registry is only read
    again = json.loads(cli("history", "update", "--no-train", "--json").stdout)
    assert (again["added"], again["present"]) == (0, 3)


def test_a_lagging_copy_is_noticed_once_on_stderr_until_updated(upgraded):
    # In a fresh process (the notice is once per process): any command on the default history.
    lagging = run_advisor("history", "list", "--json")
    assert lagging.returncode == 0, lagging.stderr
    assert "has 2 of its 3 runs that your history" in lagging.stderr
    assert "advisor history update" in lagging.stderr and lagging.stderr.count("Note:") == 1
    json.loads(lagging.stdout)  # stdout stays clean JSON
    assert run_advisor("history", "update", "--no-train").returncode == 0
    assert "Note:" not in run_advisor("history", "list").stderr


def test_dry_run_writes_nothing(cli, upgraded):
    copy = default_path()
    before = file_sha(copy)
    out = cli("history", "update", "--dry-run")
    assert out.exit_code == 0 and out.stdout.startswith("Would add 2 of the 3 runs")
    assert file_sha(copy) == before


def test_update_of_the_installed_registry_itself_is_refused(cli, upgraded):
    before = file_sha(upgraded)
    out = cli("history", "update", "--db", str(upgraded))
    assert out.exit_code != 0 and "is the installed registry.db itself" in out.output
    assert "Traceback" not in out.output
    assert file_sha(upgraded) == before and not Path(str(upgraded) + "-wal").exists()


def test_update_without_an_installed_registry_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADVISOR_REGISTRY", str(tmp_path / "nowhere.db"))
    monkeypatch.setattr("advisor.config.shipped_registry", lambda: None)
    out = cli("history", "update", "--db", str(tmp_path / "mine.db"))
    assert out.exit_code != 0 and out.output.strip().splitlines() == [
        "Error: no registry.db is installed with advisor (ADVISOR_REGISTRY names another one)"]


def test_update_retrains_the_predictor_on_the_merged_history(cli, tmp_path, monkeypatch):
    rows = synthetic_rows(n_datasets=4, shots=(4, 16))
    source = tmp_path / "source.db"
    record_synthetic(str(source), rows)
    shipped = tmp_path / "share" / "registry.db"
    shipped.parent.mkdir()
    create_registry(shipped, str(source))
    mine = tmp_path / "mine.db"
    record_synthetic(str(mine), rows[:10])
    monkeypatch.setenv("ADVISOR_REGISTRY", str(shipped))
    out = cli("history", "update", "--db", str(mine), "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["added"] == len(rows) - 10 and doc["trained_on"] == len(rows)
    with open_history(str(mine)) as h:
        assert h.load_predictor() is not None
