"""The sqlite3 read path (advisor.history.reader): the same answers as History, no SQLAlchemy,
nothing written, and the full History for everything it does not serve."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.history import dataset_key, model_key, open_history
from advisor.history.reader import BOOL_COLUMNS, JSON_COLUMNS, Reader, open_reader
from conftest import REPO, make_run


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    db = tmp_path / "h.db"
    with open_history(db) as h:
        h.record_run(make_run())
        h.record_run(make_run(method="coop", seed=1, hparams={"n_ctx": 4}, signals={"iimm": 0.5, "modality_gap": 0.7},
                              dataset_desc={"fingerprint": "fp-digits", "n_classes": 10, "is_grayscale": False,
                                            "extra_tag": [1, 2]}))
        h.store_signal_set({"name": "tiny-vit", "image_size": 64, "family": "vit"},
                           {"name": "digits", "fingerprint": "fp-digits"}, "later", {"new_metric": 2.5}, {"new_metric": "3"}, {})
        h.store_signal_set({"name": "lonely", "image_size": 32, "note": "no runs"}, {"name": "d2", "fingerprint": "f2"},
                           "s", {"iimm": 0.1}, {}, {})
        h.save_predictor("default", "blob-text", ["sig:iimm"], "hash", {"spearman": 0.5})
    return db


def test_reader_answers_exactly_what_history_answers(filled: Path) -> None:
    reader = open_reader(filled)
    assert isinstance(reader, Reader)
    with open_history(filled) as h:
        assert reader.training_rows() == h.training_rows()
        assert reader.models() == h.models()
        for row in h.training_rows():
            keys = (model_key(row["model_desc"]), dataset_key(row["dataset_desc"]))
            assert reader.latest_signals(*keys) == h.latest_signals(*keys)
        assert reader.latest_signals("lonely||32", "d2|f2") == h.latest_signals("lonely||32", "d2|f2") == {"iimm": 0.1}
        assert reader.latest_signals("nobody||", "d|") is None
        assert reader.load_predictor("default") == h.load_predictor("default")
        assert reader.load_predictor("other") is None
    reader.close()


def test_reader_matches_history_on_the_shipped_registry(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    db.write_bytes((REPO / "registry.db").read_bytes())
    with open_history(db) as h:  # migrated to the current schema first, as a user copy is
        expected = (h.training_rows(), h.models(), h.load_predictor("default"))
    with open_reader(db) as reader:
        assert isinstance(reader, Reader)
        assert (reader.training_rows(), reader.models(), reader.load_predictor("default")) == expected


def test_reading_writes_nothing(filled: Path) -> None:
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in filled.parent.iterdir()}
    with open_reader(filled) as reader:
        reader.training_rows(), reader.models(), reader.load_predictor("default")
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in filled.parent.iterdir()}
    assert after == before


def test_reads_import_no_sqlalchemy(filled: Path) -> None:
    code = (f"import sys; from advisor.history import open_reader; r = open_reader({str(filled)!r}); "
            "r.training_rows(); r.models(); r.load_predictor('default'); r.latest_signals('a', 'b'); "
            "print(type(r).__name__, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Reader", "False"]


def test_everything_else_goes_to_the_full_history(filled: Path) -> None:
    with open_reader(filled) as reader:
        assert reader.count() == 2  # not a reader method: served by History
        reader.store_signal_set({"name": "m", "image_size": 8}, {"name": "d", "fingerprint": "f"}, "s", {"iimm": 1.0}, {}, {})
        assert reader.latest_signals("m||8", "d|f") == {"iimm": 1.0}  # the reader sees the write


def test_a_missing_file_a_url_or_an_old_schema_opens_the_full_history(tmp_path: Path, filled: Path) -> None:
    from advisor.history import History

    assert isinstance(open_reader(tmp_path / "new.db"), History)  # created and migrated, as before
    assert isinstance(open_reader(f"sqlite:///{filled}"), History)
    import sqlite3

    with sqlite3.connect(filled) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)")
    assert not isinstance(open_reader(filled), Reader)


def test_decoded_columns_are_the_schemas_json_and_boolean_columns() -> None:
    from sqlalchemy import JSON, Boolean

    from advisor.history.schema import Base

    for table in Base.metadata.sorted_tables:
        if table.name not in ("models", "datasets", "runs", "predictors"):
            continue
        assert set(JSON_COLUMNS.get(table.name, ())) == {c.name for c in table.columns if isinstance(c.type, JSON)}
        assert set(BOOL_COLUMNS.get(table.name, ())) == {c.name for c in table.columns if isinstance(c.type, Boolean)}
