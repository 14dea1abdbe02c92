"""A history at scale (issue 25): streamed training rows and a bit-identical predictor, reads of
``recommend`` that do not grow with the history (no SELECT of runs without a LIMIT; the same
answer as reading every run), bulk writes that stay all or nothing, and SQL-side pagination, on
a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, make_run

from advisor.errors import AdvisorError, HistoryError
from advisor.history import open_history
from advisor.history.io import parse_file, write_rows
from advisor.history.rows import ImportRecord

SAMPLE_EVERY = 5  # every 5th run of the shipped registry: about 300 runs over all its pairs
PAIR = ("lit-offline", "fashion-mnist")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: Any) -> Path:
    """About 300 runs of the shipped registry as a JSON-lines export (the registry is copied
    first: opening a history may migrate it)."""
    tmp = tmp_path_factory.mktemp("scale")
    copy = tmp / "registry.db"
    shutil.copy(REPO / "registry.db", copy)
    with open_history(copy) as h:
        runs = h.runs()[::SAMPLE_EVERY]
    path = tmp / "sample.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        write_rows(runs, "jsonl", f)
    return path


def _orm_training_rows(h: Any) -> list[dict[str, Any]]:
    """``History.training_rows`` as it was before issue 25 (ORM objects for every run, then one
    dict per run): the reference the streamed rows must equal."""
    from sqlalchemy import select

    from advisor.history.rows import training_row
    from advisor.history.schema import SignalSetRow, SignalValue

    with h._read() as s:
        runs = list(s.scalars(h._run_query(None, None, None)))
        latest: dict[Any, dict[str, Any]] = {}
        for m, d, name, value, version in s.execute(
            select(SignalSetRow.model_id, SignalSetRow.dataset_id, SignalValue.name, SignalValue.value, SignalValue.version)
            .join(SignalSetRow, SignalValue.signal_set_id == SignalSetRow.id).order_by(SignalSetRow.created_at, SignalSetRow.id)
        ):
            latest.setdefault((m, d), {})[name] = (value, version)
        return [training_row(r, {**latest.get((r.model_id, r.dataset_id), {}),
                                 **{v.name: (v.value, v.version) for v in (r.signal_set.values if r.signal_set else [])}})
                for r in runs]


def test_streamed_training_rows_equal_the_orm_rows_and_train_a_bit_identical_predictor(sample: Path, tmp_path: Path) -> None:
    from advisor.history import open_reader
    from advisor.predictor import AdvisorPredictor, train_predictor
    from advisor.predictor.rows import training_hash

    db = tmp_path / "h.db"
    with open_history(db) as h:
        h.add_records(parse_file(sample))
        old = _orm_training_rows(h)
        assert len(old) > 250
        assert h.training_rows() == old
        assert list(h.iter_training_rows()) == old
        lean = h.training_rows(lean=True)
        assert all(set(r) == set(o) - {"losses", "curve", "provenance", "adapter_path"} for r, o in zip(lean, old))
        info = train_predictor(h, evaluate=False)  # the new path: lean, streamed rows
        stored = h.load_predictor()
    with open_reader(db) as r:
        assert r.training_rows() == old  # the sqlite3 reader builds the same rows
    reference = AdvisorPredictor().fit_rows(old).model_  # the old path: every field of every run
    assert stored["blob"] == reference.to_json()
    assert stored["training_hash"] == info["training_hash"] == training_hash(old) == reference.training_hash
    assert stored["summary"]["n_runs"] == len(old)


@pytest.mark.parametrize("history_url", ["sqlite", "postgresql"], indirect=True)
def test_recommend_reads_a_bounded_amount_and_answers_as_reading_every_run(history_url: str, sample: Path) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from advisor.predictor import train_predictor
    from advisor.recommendation import recommend

    with open_history(history_url) as h:
        h.add_records(parse_file(sample))
        train_predictor(h, evaluate=False)
        stored = h.load_predictor()
    assert stored["summary"] is not None
    recommend(*PAIR, db=history_url, quiet=True)  # warm: the dataset's descriptors are cached

    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        bounded = recommend(*PAIR, db=history_url, quiet=True).to_dict()
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    reads = [s for s in statements if " FROM runs" in s and s.lstrip().upper().startswith("SELECT")]
    assert reads  # the similar runs
    unbounded = [s for s in reads if "LIMIT" not in s.upper() and "MAX(" not in s.upper()]
    assert not unbounded, unbounded

    with open_history(history_url) as h:  # the same predictor without its summary: every run is read, as before
        h.save_predictor("default", stored["blob"], stored["features"], stored["training_hash"], stored["scores"])
    full = recommend(*PAIR, db=history_url, quiet=True).to_dict()
    for d in (bounded, full):
        d["predictor"].pop("created_at", None)
    assert bounded == full
    assert any(m["similar_runs"] for m in bounded["methods"])


def test_recommend_notes_a_history_changed_since_training(sample: Path, tmp_path: Path) -> None:
    from advisor.predictor import train_predictor
    from advisor.recommendation import recommend

    db = tmp_path / "h.db"
    with open_history(db) as h:
        h.add_records(parse_file(sample))
        train_predictor(h, evaluate=False)
        n = h.count()
        assert not any("changed" in x for x in recommend(*PAIR, db=str(db), quiet=True).notes)
        h.record_run(make_run(seed=991))
    notes = recommend(*PAIR, db=str(db), quiet=True).notes
    assert any(f"(now {n + 1})" in x for x in notes), notes


def _records(n: int, start: int = 0) -> list[ImportRecord]:
    return [ImportRecord(label=f"runs.jsonl row {i + 1}", run=make_run(seed=start + i), recorded_at=None,
                         signal_seconds={}) for i in range(n)]


@pytest.mark.parametrize("history_url", ["sqlite", "postgresql"], indirect=True)
def test_bulk_add_is_all_or_nothing(history_url: str, tmp_path: Path) -> None:
    with open_history(history_url) as h:
        assert h.add_records(_records(3)) == 3
        # a file whose row 1,500 of 3,000 is the same run as one already stored: nothing is written
        batch = _records(3000, start=100)
        batch[1499] = ImportRecord(label="runs.jsonl row 1500", run=make_run(seed=1), recorded_at=None, signal_seconds={})
        with pytest.raises(HistoryError, match="row 1500: run_id '.*' is already in the database"):
            h.add_records(batch)
        assert h.count() == 3
        # the same run twice within one batch (seed 5500): the second names its row, nothing is written
        twice = _records(1000, start=5000) + _records(1, start=5500)
        with pytest.raises(HistoryError, match="row 1: run_id '.*' is already in the database"):
            h.add_records(twice)
        assert h.count() == 3
        # --skip-existing leaves out the stored runs and adds the rest in one go
        assert h.add_records(_records(2000, start=0), skip_existing=True) == 1997
        assert h.count() == 2000


def test_history_add_with_a_bad_row_in_the_middle_writes_nothing(tmp_path: Path, cli: Any) -> None:
    src = tmp_path / "src.db"
    with open_history(src) as h:
        h.add_records(_records(2000))
        rows = h.runs()
    rows[1000]["id_acc_after"] = 1.5
    path = tmp_path / "runs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        write_rows(rows, "jsonl", f)
    db = tmp_path / "new.db"
    result = cli("history", "add", str(path), "--db", str(db))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (f"Error: {path} row 1001, column id_acc_after: 1.5 is not an "
                                                      "accuracy within [0, 1]")
    with open_history(db) as h:
        assert h.count() == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_lone_surrogate_escaped_in_a_large_file_is_refused_though_the_file_is_scanned_once(
        tmp_path: Path, cli: Any, fmt: str) -> None:
    """``history add`` skips the per-cell search for lone surrogates only when the file's text
    holds no surrogate and no JSON escape of one; an escape in row 1,500's JSON cell still
    refuses the file, naming its row and column, and writes nothing."""
    from advisor.history.validate import may_hold_surrogates

    assert not may_hold_surrogates('{"model": "caf\u00e9", "x": "\u00e9t\u00e9"}')
    assert may_hold_surrogates('{"hparams": {"\\udcff": 4}}') and may_hold_surrogates("a\ud800")
    src = tmp_path / "src.db"
    with open_history(src) as h:
        h.add_records(_records(2000))
        rows = h.runs()
    path = tmp_path / f"runs.{fmt}"
    with open(path, "w", encoding="utf-8") as f:
        write_rows(rows, fmt, f)
    good = cli("history", "add", str(path), "--db", str(tmp_path / "good.db"), "--json")
    assert good.exit_code == 0 and json.loads(good.output)["added"] == 2000
    text = path.read_text(encoding="utf-8").splitlines()
    line = 1500 if fmt == "csv" else 1499  # the CSV header is line 0
    assert '"rank"' in text[line] or '""rank""' in text[line]
    text[line] = text[line].replace('"rank"', '"\\udcff"', 1).replace('""rank""', '""\\udcff""', 1)
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    db = tmp_path / "new.db"
    result = cli("history", "add", str(path), "--db", str(db))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {path} row 1500, column hparams: contains a "
                                                            "lone surrogate")
    with open_history(db) as h:
        assert h.count() == 0


@pytest.mark.parametrize("history_url", ["sqlite", "postgresql"], indirect=True)
def test_list_pages_in_sql_with_limit_offset_and_after(history_url: str, cli: Any) -> None:
    with open_history(history_url) as h:
        h.add_records(_records(30))
        h.add_records([ImportRecord(label=f"row {i}", run=make_run(seed=100 + i, method="coop"), recorded_at=None,
                                    signal_seconds={}) for i in range(7)])
        everything = [r["run_id"] for r in h.runs()]
        coop = [r["run_id"] for r in h.runs(method="coop")]
        assert len(everything) == 37 and len(coop) == 7
        pages = [[r["run_id"] for r in h.runs(limit=10, offset=k)] for k in (0, 10, 20, 30)]
        assert sum(pages, []) == everything and [len(p) for p in pages] == [10, 10, 10, 7]
        assert [r["run_id"] for r in h.iter_runs(page=4)] == everything  # keyset pages of 4
        after = [r["run_id"] for r in h.runs(after=everything[9], limit=5)]
        assert after == everything[10:15]
        assert [r["run_id"] for r in h.runs(method="coop", after=coop[2], limit=50)] == coop[3:]
        assert h.runs(after=everything[-1]) == []
        with pytest.raises(HistoryError, match="no run with id 'nope'"):
            h.runs(after="nope")
    out = cli("history", "list", "--method", "coop", "--limit", "2", "--offset", "1", "--json", "--db", history_url)
    assert out.exit_code == 0, out.output
    assert [r["run_id"] for r in json.loads(out.output)] == coop[1:3]
    out = cli("history", "list", "--limit", "3", "--after", everything[30], "--json", "--db", history_url)
    assert [r["run_id"] for r in json.loads(out.output)] == everything[31:34]
    bad = cli("history", "list", "--limit", "-1", "--db", history_url)
    assert bad.exit_code == 2


def test_export_streams_the_same_bytes_as_a_whole_read(tmp_path: Path, sample: Path) -> None:
    import io

    from advisor.history.io import export_columns

    with open_history(tmp_path / "h.db") as h:
        h.add_records(parse_file(sample))
        runs = h.runs()
        assert h.export_columns() == export_columns(runs)
        for fmt in ("csv", "jsonl"):
            whole, streamed = io.StringIO(), io.StringIO()
            write_rows(runs, fmt, whole)
            assert h.export(fmt, streamed) == len(runs)
            assert streamed.getvalue() == whole.getvalue()


@pytest.mark.parametrize("history_url", ["sqlite", "postgresql"], indirect=True)
def test_record_runs_imports_in_one_transaction_and_skips_recorded_runs(history_url: str) -> None:
    with open_history(history_url) as h:
        first = h.record_run(make_run(seed=1))
        out = h.record_runs([make_run(seed=1), make_run(seed=2), make_run(seed=2), make_run(seed=3)])
        assert [inserted for _, inserted in out] == [False, True, False, True]
        assert out[0][0] == first and out[1][0] == out[2][0]
        assert h.count() == 3
        with pytest.raises(AdvisorError):
            h.record_runs([make_run(seed=4), make_run(seed=5, id_acc_after=2.0)])  # invalid: nothing written
        assert h.count() == 3


def test_run_keys_equal_the_keys_recomputed_from_every_row():
    """`import-mlflow` decides "already recorded" from three columns (``History.run_keys``):
    they must equal the (configuration hash, seed) recomputed from every stored row."""
    from pathlib import Path

    from advisor.history import open_history
    from advisor.mlflow_import import existing_keys

    db = Path(__file__).resolve().parent.parent / "registry.db"
    h = open_history(f"sqlite:///file:{db}?mode=ro&uri=true")
    keys, ids = existing_keys(h.runs())
    known = h.run_keys()
    assert len(known) == len(ids) > 1000
    assert {rid: (cfg, seed) for rid, cfg, seed in known} == ids
