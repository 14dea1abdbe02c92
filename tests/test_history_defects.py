"""Regression tests for the history defects of issue 16, each of which failed before its fix:
read-only commands rewrote the database file; a history in a read-only directory could not be
read; a damaged page was written to without a word; deeply nested JSON and integers >= 2**63
gave tracebacks; ``ADVISOR_DB_TIMEOUT=inf|nan`` gave tracebacks; a read-only history could be
discovered only by a write (after training). Bad input tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from conftest import count_rows, file_sha, make_run

from advisor.errors import HistoryError
from advisor.history import compact, open_history

METHODS = ("full", "lora", "coop", "contcoop", "tpc_cma")


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def _shipped_like(path: Path) -> Path:
    """A small history as the shipped registry is: 3 datasets x 5 methods x 2 shot counts with
    signals, compacted to one rollback-journal file."""
    with open_history(str(path)) as h:
        for d, dataset in enumerate(("digits", "textile", "faces")):
            for m, method in enumerate(METHODS):
                for shots in (4, 16):
                    h.record_run(make_run(
                        dataset=dataset, method=method, shots=shots,
                        id_acc_after=0.3 + 0.1 * m + 0.01 * shots / 4, id_acc_before=0.25,
                        signals={"iimm": 0.2 + 0.2 * d, "modality_gap": 0.9 - 0.1 * d},
                        dataset_desc={"fingerprint": f"fp-{dataset}", "n_classes": 5 + d, "n_train": 100, "n_test": 50}))
    compact(path)
    return path


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make a file or directory unwritable for this process: chmod for ordinary users; root
    ignores permissions, so as root it is made immutable (chattr +i), which binds root too."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("running as root and the file system cannot make a file immutable")
        undo = ["chattr", "-i", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        undo = ["chmod", oct(mode & 0o777)[2:], str(path)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


# --------------------------------------------------------------------------- files left alone


def test_read_only_commands_leave_the_database_byte_identical(cli, tmp_path):
    """``advisor predictor evaluate --db registry.db`` (a README command) used to switch the
    file to WAL mode; so did every other read."""
    db = _shipped_like(tmp_path / "registry.db")
    before = file_sha(db)
    rid = json.loads(cli("history", "list", "--json", "--db", str(db)).stdout)[0]["run_id"]
    assert file_sha(db) == before
    for args in (["history", "list"], ["history", "show", rid], ["history", "export"],
                 ["history", "export", "--format", "jsonl"], ["history", "path"], ["predictor", "evaluate"]):
        r = cli(*args, "--db", str(db))
        assert r.exit_code == 0, (args, r.output)
        assert file_sha(db) == before, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.db"]  # no -wal / -shm left behind


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_history_in_a_read_only_directory_can_be_read(cli, tmp_path, journal):
    """Rollback-journal files open ``mode=ro``; a WAL file that nobody can change (directory
    unwritable, no ``-wal``) opens ``immutable=1``. Writes are refused in one line."""
    folder = tmp_path / "shared"
    folder.mkdir()
    db = _shipped_like(folder / "history.db")
    if journal == "wal":
        with open_history(str(db)) as h:
            h.record_run(make_run(seed=77))  # a write: the file is in WAL mode from now on
        assert not Path(f"{db}-wal").exists()
    n = count_rows("sqlite:///" + str(db), "runs")
    runs_csv = tmp_path / "more.csv"
    runs_csv.write_text("model,dataset,method,seed,id_acc_before,id_acc_after\nm,d,lora,1,0.1,0.2\n")
    before = file_sha(db)
    with _read_only(folder):
        listed = cli("history", "list", "--json", "--db", str(db))
        assert listed.exit_code == 0, listed.output
        assert len(json.loads(listed.stdout)) == n
        _one_line_error(cli("history", "add", str(runs_csv), "--db", str(db)), f"database {db} is read-only")
        with open_history(str(db)) as h:
            with pytest.raises(HistoryError, match="read-only: its directory .* is not writable"):
                h.check_writable()
    assert file_sha(db) == before


def test_damaged_page_is_refused_before_anything_is_written(cli, tmp_path):
    """A damaged b-tree page that ordinary reads and writes of runs never touch: before, runs
    were added next to it without a word; now every command refuses the file in one line."""
    db = _shipped_like(tmp_path / "history.db")
    con = sqlite3.connect(db)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_predictors_name'").fetchone()[0]
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:  # overwrite the index's root page with garbage
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    before = file_sha(db)
    runs_csv = tmp_path / "more.csv"
    runs_csv.write_text("model,dataset,method,seed,id_acc_before,id_acc_after\nm,d,lora,1,0.1,0.2\n")
    _one_line_error(cli("history", "add", str(runs_csv), "--db", str(db)), f"database {db} is damaged",
                    "restore it from a backup")
    _one_line_error(cli("history", "list", "--db", str(db)), "is damaged")
    assert file_sha(db) == before


# --------------------------------------------------------------------------- bad values: one line


def _row(**extra: object) -> dict[str, object]:
    return {"model": "m", "dataset": "d", "method": "lora", "seed": 0, "id_acc_before": 0.1, "id_acc_after": 0.2,
            **extra}


def test_deeply_nested_json_is_one_line(cli, tmp_path, history_url):
    deep_file = tmp_path / "deep.json"  # deeper than Python's parser can recurse: was RecursionError
    deep_file.write_text('[{"model": "m", "dataset": "d", "method": "x", "seed": 0, "id_acc_before": 0.1, '
                         '"id_acc_after": 0.2, "hparams": {"a": ' + "[" * 100000 + "]" * 100000 + "}}]")
    _one_line_error(cli("history", "add", str(deep_file), "--db", history_url), str(deep_file),
                    "is not valid JSON (nested deeper than 64 levels)")
    nested = {"a": 1}
    for _ in range(100):
        nested = {"a": nested}
    jsonl = tmp_path / "nested.jsonl"
    jsonl.write_text(json.dumps(_row(hparams=nested)) + "\n")
    _one_line_error(cli("history", "add", str(jsonl), "--db", history_url),
                    "row 1, column hparams: JSON nested deeper than 64 levels")
    csv_file = tmp_path / "nested.csv"
    csv_file.write_text('model,dataset,method,seed,id_acc_before,id_acc_after,provenance\n'
                        'm,d,lora,0,0.1,0.2,"' + json.dumps(nested).replace('"', '""') + '"\n')
    _one_line_error(cli("history", "add", str(csv_file), "--db", history_url),
                    "row 1, column provenance: JSON nested deeper than 64 levels")
    with open_history(history_url) as h:
        with pytest.raises(HistoryError, match="column hparams: JSON nested deeper than 64 levels"):
            h.record_run(make_run(hparams=nested))
        very = []
        for _ in range(5000):  # deeper than Python's recursion limit
            very = [very]
        with pytest.raises(HistoryError, match="column provenance: .*nested deeper than 64 levels"):
            h.record_run(make_run(provenance={"x": very}))
    assert count_rows(history_url, "runs") == 0


@pytest.mark.parametrize("column, value, fragment", [
    ("seed", 2**63, "column seed: 9223372036854775808 is above the maximum 2147483647"),
    ("seed", 2**31, "column seed: 2147483648 is above the maximum 2147483647"),  # fits SQLite, not PostgreSQL
    ("trainable_params", 2**63, "column trainable_params: 9223372036854775808 is above the maximum 9223372036854775807"),
    ("model.params", 2**64, "column model.params: 18446744073709551616 is above the maximum"),
    ("wall_time_s", 10**400, "column wall_time_s: the integer is too large"),
    ("signal.iimm", 10**400, "column signal.iimm: the integer is too large"),
])
def test_integers_beyond_the_column_type_are_one_line(cli, tmp_path, history_url, column, value, fragment):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([_row(**{column: value})]))
    _one_line_error(cli("history", "add", str(path), "--db", history_url), fragment)
    assert count_rows(history_url, "runs") == 0


def test_record_run_refuses_huge_integers_and_keeps_big_json_numbers(history_url):
    with open_history(history_url) as h:
        with pytest.raises(HistoryError, match="column seed: 9223372036854775808 is above the maximum"):
            h.record_run(make_run(seed=2**63))  # was OverflowError from the driver
        with pytest.raises(HistoryError, match="column trainable_params: .* is above the maximum"):
            h.record_run(make_run(trainable_params=2**64))
        rid = h.record_run(make_run(hparams={"big": 2**70}))  # JSON holds any integer, on both backends
        assert h.get_run(rid)["hparams"] == {"big": 2**70}
        assert h.count() == 1


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1", "1e9", "soon"])
def test_bad_db_timeout_is_one_line(cli, tmp_db, value):
    r = cli("history", "list", "--db", str(tmp_db), env={"ADVISOR_DB_TIMEOUT": value})
    _one_line_error(r, f"ADVISOR_DB_TIMEOUT={value!r}")
    assert not tmp_db.exists()
    with pytest.raises(HistoryError, match="must be a number of seconds"):
        open_history(str(tmp_db), timeout=float("inf"))


# --------------------------------------------------------------------------- writable, checked up front


def test_check_writable_passes_a_writable_history_and_writes_nothing(history_url):
    with open_history(history_url) as h:
        h.record_run(make_run())
        if h.path is not None:
            h.close()
            compact(h.path)
            before = file_sha(h.path)
        h = open_history(history_url)
        h.check_writable()
        h.close()
        if h.path is not None:
            assert file_sha(h.path) == before
    assert count_rows(history_url, "runs") == 1


def test_check_writable_refuses_a_read_only_file_and_url(tmp_db):
    open_history(str(tmp_db)).close()
    with open_history(f"sqlite:///file:{tmp_db}?mode=ro&uri=true") as h:
        with pytest.raises(HistoryError, match=f"database {tmp_db} is read-only"):
            h.check_writable()
    compact(tmp_db)
    with _read_only(tmp_db):
        with open_history(str(tmp_db)) as h:
            assert h.count() == 0  # still readable
            with pytest.raises(HistoryError, match=f"database {tmp_db} is read-only"):
                h.check_writable()
