"""The History store on a real SQLite file and a real PostgreSQL database (the ``history`` and
``history_url`` fixtures run each test on both): recording, retries, signals, predictors, location."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import count_rows, file_sha, make_run

import advisor
from advisor.errors import HistoryError
from advisor.history import (
    SCHEMA_VERSION,
    create_registry,
    dataset_key,
    model_key,
    open_history,
    record_run,
    resolve_url,
)
from advisor.history.store import default_path


def test_record_run_stores_every_runresult_field(history, history_url):
    run = make_run()
    run_id = history.record_run(run)
    [row] = history.training_rows()
    expected = asdict(run)
    for name in ("signals", "signal_versions", "model_desc", "dataset_desc", "run_id"):
        expected.pop(name)
    for name, value in expected.items():
        assert row[name] == value, name
    assert row["run_id"] == run_id
    assert row["signals"] == run.signals
    assert row["signal_versions"] == run.signal_versions
    assert row["model_desc"] == {"name": "tiny-vit", "pretrained": None, "source": None, **run.model_desc}
    assert row["dataset_desc"] == {"name": "digits", **run.dataset_desc}
    assert count_rows(history_url, "runs") == 1
    assert count_rows(history_url, "signal_values") == 2


def test_retried_run_is_recorded_once(history, history_url):
    first = history.record_run(make_run())
    again = history.record_run(make_run(wall_time_s=99.0))  # same configuration and seed: a retry
    assert again == first
    assert count_rows(history_url, "runs") == 1
    other_seed = history.record_run(make_run(seed=1))
    assert other_seed != first
    assert count_rows(history_url, "runs") == 2


def test_runs_share_model_dataset_and_identical_signal_sets(history, history_url):
    for method in ("lora", "coop", "full"):
        history.record_run(make_run(method=method))
    assert count_rows(history_url, "models") == 1
    assert count_rows(history_url, "datasets") == 1
    assert count_rows(history_url, "signal_sets") == 1
    history.record_run(make_run(method="contcoop", model_desc={"image_size": 96}))  # another resolution
    assert count_rows(history_url, "models") == 2


def test_runs_filters_and_order(history):
    history.record_run(make_run(method="lora", seed=0))
    history.record_run(make_run(method="coop", seed=0))
    history.record_run(make_run(method="lora", seed=1, dataset="textile", dataset_desc={"fingerprint": "t"}))
    assert [r["method"] for r in history.runs()] == ["lora", "coop", "lora"]
    assert [r["seed"] for r in history.runs(method="lora")] == [0, 1]
    assert [r["dataset"] for r in history.runs(dataset="textile")] == ["textile"]
    assert history.runs(model="ViT-B-32") == []


def test_latest_signals_takes_newest_value_per_metric(history):
    md = {"name": "tiny-vit", "pretrained": None, "image_size": 64}
    dd = {"name": "digits", "fingerprint": "fp-digits"}
    assert history.latest_signals(model_key(md), dataset_key(dd)) is None
    history.store_signal_set(md, dd, "s1", {"iimm": 0.25, "gap": 0.5}, {"iimm": "1"}, {"iimm": 0.1})
    history.store_signal_set(md, dd, "s1", {"iimm": 0.375}, {"iimm": "2"}, {})
    assert history.latest_signals("tiny-vit||64", "digits|fp-digits") == {"iimm": 0.375, "gap": 0.5}


def test_training_rows_fill_signals_measured_later(history):
    history.record_run(make_run())
    # A newly installed metric plugin measured the same pair afterwards.
    history.store_signal_set({"name": "tiny-vit", "image_size": 64}, {"name": "digits", "fingerprint": "fp-digits"},
                             "abc123", {"new_metric": 0.5, "iimm": 0.9}, {"new_metric": "1"}, {})
    [row] = history.training_rows()
    # The run's own values win; the missing metric is filled in.
    assert row["signals"] == {"iimm": 0.3125, "modality_gap": 0.8125, "new_metric": 0.5}


def test_store_signal_set_rejects_non_finite(history, history_url):
    with pytest.raises(HistoryError, match="'gap' is not a finite number"):
        history.store_signal_set({"name": "m"}, {"name": "d"}, None, {"gap": float("nan")})
    assert count_rows(history_url, "signal_sets") == 0


def test_record_run_validates_like_an_import(history, history_url):
    with pytest.raises(HistoryError, match=r"column id_acc_after: 1\.5 is not an accuracy within \[0, 1\]"):
        history.record_run(make_run(id_acc_after=1.5))
    with pytest.raises(HistoryError, match=r"column ood_before: 'mnist-5k': -0.5 is not an accuracy"):
        history.record_run(make_run(ood_before={"mnist-5k": -0.5}))
    assert count_rows(history_url, "runs") == 0


def test_record_run_accepts_numpy_values(history):
    np = pytest.importorskip("numpy")
    run = make_run(id_acc_after=np.float32(0.5), trainable_params=np.int64(7),
                   model_desc={"image_size": np.int64(64), "params": np.int64(10)},
                   dataset_desc={"fingerprint": "f", "domain": ("digits",), "is_grayscale": np.bool_(True)})
    rid = history.record_run(run)
    row = history.get_run(rid)
    assert row["id_acc_after"] == 0.5 and row["trainable_params"] == 7
    assert row["dataset.domain"] == ["digits"] and row["dataset.is_grayscale"] is True


def test_module_level_record_run_and_public_api(history_url):
    rid = advisor.record_run(make_run(), db=history_url)
    assert record_run(make_run(), db=history_url) == rid
    with open_history(history_url) as h:
        assert [r["run_id"] for r in h.runs()] == [rid]


def test_on_run_recorded_runs_after_commit(history, history_url):
    from advisor.hookspecs import hookimpl
    from advisor.plugins import load_plugins

    seen = []

    class Watcher:
        @hookimpl
        def on_run_recorded(self, run, run_id, db_url):
            # Committed: visible to an independent connection.
            seen.append((run_id, db_url, count_rows(history_url, "runs")))

    class Broken:
        @hookimpl
        def on_run_recorded(self, run, run_id, db_url):
            raise RuntimeError("mirror down")

    pm = load_plugins()
    pm.register(Watcher(), name="watcher")
    pm.register(Broken(), name="broken")
    try:
        rid = history.record_run(make_run())
        history.record_run(make_run())  # a retry records nothing and notifies nobody
    finally:
        pm.unregister(name="watcher")
        pm.unregister(name="broken")
    assert seen == [(rid, history.url, 1)]
    assert count_rows(history_url, "runs") == 1


def test_predictors_round_trip(history):
    assert history.load_predictor() is None
    history.save_predictor("default", "tree-1", ["iimm", "shots"], "h1", {"spearman": 0.5})
    pid = history.save_predictor("default", "tree-2", ["iimm"], "h2", {"spearman": 0.75})
    p = history.load_predictor("default")
    assert p["id"] == pid and p["blob"] == "tree-2" and p["features"] == ["iimm"]
    assert p["training_hash"] == "h2" and p["scores"] == {"spearman": 0.75}
    assert history.load_predictor("other") is None


def test_get_run_by_prefix_and_unknown(history):
    rid = history.record_run(make_run(run_id="lora-abcdef"))
    history.record_run(make_run(run_id="lora-abxxxx", seed=3))
    assert history.get_run("lora-abc")["run_id"] == rid
    with pytest.raises(HistoryError, match="ambiguous"):
        history.get_run("lora-ab")
    with pytest.raises(HistoryError, match="no run with id 'nope'"):
        history.get_run("nope")


def test_explicit_run_id_clash_is_an_error(history):
    history.record_run(make_run(run_id="mine"))
    with pytest.raises(HistoryError, match="run_id 'mine' is already in"):
        history.record_run(make_run(run_id="mine", seed=5))


def test_resolve_url():
    assert resolve_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert resolve_url(None) == "sqlite:///" + str(default_path())
    with pytest.raises(HistoryError, match="bad database URL"):
        resolve_url("://nothing")


def test_default_db_starts_from_shipped_registry_without_writing_it(tmp_path, monkeypatch):
    source = tmp_path / "source.db"
    with open_history(str(source)) as h:
        h.record_run(make_run(run_id="shipped-1"))
    shipped = tmp_path / "share" / "registry.db"
    shipped.parent.mkdir()
    assert create_registry(shipped, str(source)) == 1
    before = file_sha(shipped)
    monkeypatch.setenv("ADVISOR_REGISTRY", str(shipped))
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    with open_history() as h:
        assert h.path == tmp_path / "home" / "registry.db"
        assert [r["run_id"] for r in h.runs()] == ["shipped-1"]
        h.record_run(make_run(seed=7))
        assert len(h.runs()) == 2
    assert file_sha(shipped) == before
    assert not Path(str(shipped) + "-wal").exists()
    with open_history() as h:  # the copy is made once, then reused
        assert len(h.runs()) == 2


def test_repo_registry_is_migrated_and_self_contained():
    path = Path(__file__).resolve().parent.parent / "registry.db"
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        versions = [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY version")]
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert mode == "delete"  # no -wal side file needed to read it


def test_create_registry_leaves_the_sweep_bookkeeping_behind(tmp_path):
    from advisor.history.sweeps import register_sweep

    source = tmp_path / "source.db"
    with open_history(str(source)) as h:
        h.record_run(make_run(run_id="shipped-1"))
        register_sweep(h, "sw-test", {"name": "t"}, "local", [("k1", "m|d", 0, {"model": "m", "pretrained": None, "dataset": "d", "method": "lora", "shots": 4, "seed": 0, "hparams": {}})], 60.0)
    out = tmp_path / "registry.db"
    assert create_registry(out, str(source)) == 1
    con = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        assert con.execute("SELECT COUNT(*) FROM sweeps").fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM sweep_jobs").fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    finally:
        con.close()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:  # the source keeps them
        assert src.execute("SELECT COUNT(*) FROM sweep_jobs").fetchone()[0] == 1
    finally:
        src.close()


def test_create_registry_empty(tmp_path):
    out = tmp_path / "registry.db"
    assert create_registry(out) == 0
    with open_history(str(out)) as h:
        assert h.schema_version == SCHEMA_VERSION and h.count() == 0


def test_record_run_takes_integral_floats_as_integers(history):
    rid = history.record_run(make_run(trainable_params=1024.0, model_desc={"image_size": 64.0, "params": 2.0e6}))
    row = history.get_run(rid)
    assert row["trainable_params"] == 1024 and row["model.image_size"] == 64 and row["model.params"] == 2000000
    with pytest.raises(HistoryError, match="column model.image_size: expected an integer"):
        history.record_run(make_run(seed=9, model_desc={"image_size": 64.5}))


def test_read_only_url_reads_without_touching_the_file(tmp_db):
    history = open_history(str(tmp_db))
    history.record_run(make_run())
    history.close()
    with sqlite3.connect(tmp_db) as con:  # a file as shipped: rollback journal, not WAL
        con.execute("PRAGMA journal_mode = DELETE")
    before = file_sha(Path(tmp_db))
    ro = open_history(f"sqlite:///file:{tmp_db}?mode=ro&uri=true")
    assert len(ro.runs()) == 1
    with pytest.raises(HistoryError, match="read-only"):
        ro.record_run(make_run(seed=99))
    ro.close()
    assert file_sha(Path(tmp_db)) == before


def test_history_modules_import_no_circle():
    """Issue 13: io.py and store.py imported each other (the circle hidden in a function). Every
    import between the package's modules, at any depth in a file, must form no loop."""
    import ast

    folder = Path(advisor.__file__).parent / "history"
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[name] = deps & modules
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import circle: " + " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert "store" not in graph["io"] and "io" in graph["store"]


def test_validate_run_checks_the_dataclass_itself():
    """record_run validates the RunResult field by field (no detour through a CSV row): the
    result is a clean RunResult, and a bad field is named as a column."""
    np = pytest.importorskip("numpy")
    from advisor.history.validate import validate_run
    from advisor.specs import RunResult

    clean = validate_run(make_run(trainable_params=np.int64(7), shots=4.0, device="", hparams={"t": (1, 2)},
                                  model_desc={"name": "ignored", "image_size": 64.0, "identity": "w1"},
                                  signal_versions={"iimm": "1", "failed_metric": "3"}))
    assert isinstance(clean, RunResult)
    assert clean.trainable_params == 7 and type(clean.trainable_params) is int and clean.shots == 4
    assert clean.device is None and clean.hparams == {"t": [1, 2]}
    assert clean.model_desc == {"image_size": 64, "identity": "w1"}  # name comes from run.model
    assert clean.signal_versions == {"iimm": "1"}  # a version without a value is dropped
    with pytest.raises(HistoryError, match=r"cannot record run, column model\.embed_dim: 0 is below the minimum 1"):
        validate_run(make_run(model_desc={"embed_dim": 0}))
    with pytest.raises(HistoryError, match="bad signal name 'no spaces'"):
        validate_run(make_run(signals={"no spaces": 0.5}))
    with pytest.raises(HistoryError, match=r"column hparams: \['lr'\] is nan, not a finite number"):
        validate_run(make_run(hparams={"lr": float("nan")}))
