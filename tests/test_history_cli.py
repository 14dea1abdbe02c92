"""``advisor history`` add / list / show / export / path, round trips, and every bad input:
one line naming the problem, non-zero exit, no traceback, no row written. Each test that is not
about SQLite files runs on a real SQLite file and a real PostgreSQL database (``history_url``)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import count_rows, make_run

from advisor.history import SCHEMA_VERSION, location, open_history

HEADER = ["run_id", "model", "pretrained", "dataset", "method", "shots", "seed", "hparams", "id_acc_before",
          "id_acc_after", "ood_before", "ood_after", "wall_time_s", "model.image_size", "dataset.fingerprint",
          "dataset.domain", "dataset.is_grayscale", "signal_versions", "signal.iimm", "signal.modality_gap"]
ROWS = [
    ["r1", "tiny-vit", "", "digits", "lora", "4", "0", '{"lr": 0.001, "rank": 4}', "0.25", "0.75",
     '{"mnist-5k": 0.5}', '{"mnist-5k": 0.375}', "12.5", "64", "fp-d", '["digits"]', "true", '{"iimm": "1"}',
     "0.3125", "0.8125"],
    ["r2", "tiny-vit", "", "digits", "coop", "4", "0", '{"ctx": 4}', "0.25", "0.5", "{}", "{}", "3", "64", "fp-d",
     '["digits"]', "true", '{"iimm": "1"}', "0.3125", "0.8125"],
    ["r3", "lit-offline", "", "textile", "full", "", "1", "", "0.1", "0.9", "", "", "", "", "fp-t", "", "false", "",
     "0.5", ""],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def runs_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "runs.csv", HEADER, ROWS)


def count_runs(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        return con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    finally:
        con.close()


def assert_one_line_error(result, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- happy paths


def test_add_list_show(cli, runs_csv, history_url):
    r = cli("history", "add", str(runs_csv), "--db", history_url)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"Added 3 runs to {location(history_url)}"
    listed = json.loads(cli("history", "list", "--db", history_url, "--json").stdout)
    assert [x["run_id"] for x in listed] == ["r1", "r2", "r3"]
    assert listed[0]["hparams"] == {"lr": 0.001, "rank": 4}
    assert listed[0]["signal.iimm"] == 0.3125 and listed[0]["signal_versions"] == {"iimm": "1"}
    assert listed[2]["shots"] is None and listed[2]["hparams"] == {} and "signal.modality_gap" not in listed[2]
    only = json.loads(cli("history", "list", "--db", history_url, "--json", "--method", "coop").stdout)
    assert [x["run_id"] for x in only] == ["r2"]
    assert json.loads(cli("history", "list", "--db", history_url, "--json", "--dataset", "textile").stdout)[0]["run_id"] == "r3"
    table = cli("history", "list", "--db", history_url, "--model", "tiny-vit").stdout.splitlines()
    assert table[0].split() == ["run_id", "recorded", "model", "dataset", "method", "shots", "seed", "acc_before",
                                "acc_after", "gain"]
    assert [line.split()[0] for line in table[2:]] == ["r1", "r2"]
    assert table[2].split()[-1] == "0.5"  # gain 0.75 - 0.25
    shown = json.loads(cli("history", "show", "r2", "--db", history_url, "--json").stdout)
    assert shown["method"] == "coop" and shown["id_acc_after"] == 0.5 and shown["wall_time_s"] == 3.0
    text = cli("history", "show", "r1", "--db", history_url).stdout
    assert re.search(r"^id_acc_after +0\.75$", text, re.M)


def test_path(cli, tmp_db):
    assert cli("history", "path", "--db", str(tmp_db)).stdout.strip() == str(tmp_db)
    assert cli("history", "path", env={"ADVISOR_DB": str(tmp_db)}).stdout.strip() == str(tmp_db)
    from advisor.history.store import default_path

    assert cli("history", "path").stdout.strip() == str(default_path())
    out = cli("history", "path", "--db", "postgresql://me:secret@db.example/runs").stdout.strip()
    assert out == "postgresql://me:***@db.example/runs"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_add_export_add_export_is_byte_identical(cli, runs_csv, tmp_path, fmt, history_url):
    """Into the backend under test, out, into a SQLite file, out again: the same bytes."""
    db1, db2 = history_url, tmp_path / "two.db"
    assert cli("history", "add", str(runs_csv), "--db", db1).exit_code == 0
    with open_history(db1) as h:  # a run recorded by `advisor run` has every field set
        h.record_run(make_run(run_id="full", model_desc={"image_size": 64, "params": 5, "identity": "w1"},
                              dataset_desc={"fingerprint": "fp-d", "extra_tag": [1, 2]}))
        h.store_signal_set({"name": "tiny-vit", "image_size": 64}, {"name": "digits", "fingerprint": "fp-d"},
                           "x", {"iimm": 0.5}, {}, {"iimm": 0.25})
    first = tmp_path / f"first.{fmt}"
    r = cli("history", "export", "--format", fmt, "-o", str(first), "--db", db1)
    assert r.exit_code == 0 and r.stderr.strip() == f"Exported 4 runs to {first}"
    r = cli("history", "add", str(first), "--db", str(db2))
    assert r.stdout.strip() == f"Added 4 runs to {db2}"
    second = cli("history", "export", "--format", fmt, "--db", str(db2)).stdout
    assert second == first.read_text(encoding="utf-8")
    with open_history(db1) as h1, open_history(str(db2)) as h2:
        assert h1.runs() == h2.runs()
        assert h1.training_rows()[3]["model_desc"]["identity"] == "w1"


def test_export_csv_and_jsonl_carry_the_same_rows(cli, runs_csv, history_url):
    cli("history", "add", str(runs_csv), "--db", history_url)
    csv_text = cli("history", "export", "--db", history_url).stdout
    jsonl = [json.loads(x) for x in cli("history", "export", "--format", "jsonl", "--db", history_url).stdout.splitlines()]
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert list(rows[0]) == list(jsonl[0])
    assert [r["run_id"] for r in rows] == [j["run_id"] for j in jsonl] == ["r1", "r2", "r3"]
    assert float(rows[0]["id_acc_after"]) == jsonl[0]["id_acc_after"] == 0.75
    assert rows[2]["signal.modality_gap"] == "" and jsonl[2]["signal.modality_gap"] is None


def test_add_json_array_and_jsonl(cli, tmp_path, history_url):
    row = {"model": "m", "dataset": "d", "method": "lora", "seed": 0, "id_acc_before": 0, "id_acc_after": 1,
           "hparams": {"lr": 0.1}, "signal.iimm": 0.5}
    (tmp_path / "a.json").write_text(json.dumps([row, {**row, "seed": 1}]))
    (tmp_path / "b.jsonl").write_text(json.dumps({**row, "seed": 2}) + "\n\n" + json.dumps({**row, "seed": 3}) + "\n")
    assert cli("history", "add", str(tmp_path / "a.json"), "--db", history_url).stdout.startswith("Added 2 runs")
    assert cli("history", "add", str(tmp_path / "b.jsonl"), "--db", history_url).stdout.startswith("Added 2 runs")
    seeds = [r["seed"] for r in json.loads(cli("history", "list", "--json", "--db", history_url).stdout)]
    assert seeds == [0, 1, 2, 3]


def test_default_database_is_used_without_db(cli, runs_csv, tmp_path):
    home = tmp_path / "home"
    r = cli("history", "add", str(runs_csv), env={"ADVISOR_HOME": str(home)})
    assert r.exit_code == 0 and r.stdout.strip() == f"Added 3 runs to {home / 'registry.db'}"
    assert count_runs(home / "registry.db") >= 3


# --------------------------------------------------------------------------- bad history files


def _mutate(column: str, value: str, row: int = 1) -> tuple[list[str], list[list[str]]]:
    rows = [list(r) for r in ROWS]
    rows[row][HEADER.index(column)] = value
    return HEADER, rows


BAD_FILES = {
    "missing column": (
        [h for h in HEADER if h != "id_acc_after"], [[c for h, c in zip(HEADER, r) if h != "id_acc_after"] for r in ROWS],
        ["missing required column id_acc_after"]),
    "extra column": (HEADER + ["learning_rate"], [r + ["0.1"] for r in ROWS], ["unknown column 'learning_rate'"]),
    "misspelt column": ([h if h != "method" else "methd" for h in HEADER], ROWS, ["unknown column 'methd'", "did you mean 'method'"]),
    "text seed": (*_mutate("seed", "zero"), ["row 2, column seed: 'zero' is not an integer"]),
    "fractional shots": (*_mutate("shots", "2.5"), ["row 2, column shots: '2.5' is not an integer"]),
    "text accuracy": (*_mutate("id_acc_before", "high"), ["row 2, column id_acc_before: 'high' is not a number"]),
    "nan accuracy": (*_mutate("id_acc_before", "nan"), ["column id_acc_before: nan is not a finite number"]),
    "negative accuracy": (*_mutate("id_acc_after", "-0.1"), ["row 2, column id_acc_after: -0.1 is not an accuracy within [0, 1]"]),
    "accuracy above one": (*_mutate("id_acc_before", "1.5"), ["row 2, column id_acc_before: 1.5 is not an accuracy within [0, 1]"]),
    "ood accuracy above one": (*_mutate("ood_after", '{"mnist-5k": 1.25}'), ["column ood_after: 'mnist-5k': 1.25 is not an accuracy"]),
    "bad json": (*_mutate("hparams", "{lr: 1}"), ["row 2, column hparams: '{lr: 1}' is not valid JSON"]),
    "json list for object": (*_mutate("hparams", "[1]"), ["column hparams: expected a JSON object, got an array"]),
    "empty required": (*_mutate("method", ""), ["row 2, column method: is required but empty"]),
    "bad boolean": (*_mutate("dataset.is_grayscale", "maybe"), ["column dataset.is_grayscale: 'maybe' is not true or false"]),
    "negative wall time": (*_mutate("wall_time_s", "-1"), ["column wall_time_s: -1.0 is below the minimum 0"]),
    "duplicate run id": (*_mutate("run_id", "r1"), ["row 2: duplicate run_id 'r1' (also in row 1)"]),
    "same config and seed": (HEADER, [ROWS[0], ["r1b"] + ROWS[0][1:]], ["row 2: same model, dataset, method, shots, hparams, split and seed as row 1"]),
    "conflicting descriptors": (*_mutate("dataset.is_grayscale", "false"), ["row 2, column dataset.is_grayscale: False disagrees with True in row 1"]),
    "version of absent signal": (*_mutate("signal_versions", '{"mir": "1"}'), ["column signal_versions: names 'mir', which has no signal.mir value"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_history_file_adds_nothing(cli, tmp_path, history_url, case):
    header, rows, fragments = BAD_FILES[case]
    path = write_csv(tmp_path / "bad.csv", header, rows)
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url), str(path), *fragments)
    assert count_rows(history_url, "runs") == 0


@pytest.mark.parametrize("content, fragment", [
    ('[{"model": "m"', "is not valid JSON"),
    ('{"a": 1}', "expected a JSON array of objects"),
    ('[1, 2]', "row 1: expected a JSON object, got an integer"),
    ('[{"model": "m", "dataset": "d", "method": "x", "seed": "0", "id_acc_before": 0.1, "id_acc_after": 0.2}]',
     "column seed: expected an integer, got text '0'"),
    ('[{"model": "m", "dataset": "d", "method": "x", "seed": true, "id_acc_before": 0.1, "id_acc_after": 0.2}]',
     "column seed: expected an integer, got a boolean"),
    ('[{"model": "m", "dataset": "d", "method": "x", "seed": 0, "id_acc_before": 0.1, "id_acc_after": 0.2, "seed": 1}]',
     "key 'seed' appears twice"),
    ('[{"model": "m", "dataset": "d", "method": "x", "seed": 0, "id_acc_before": 0.1, "id_acc_after": NaN}]',
     "NaN is not a number"),
    ('[{"model": "m", "dataset": "d", "method": "x", "seed": 0, "id_acc_before": 0.1}]',
     "missing required column id_acc_after"),
])
def test_bad_json_file_adds_nothing(cli, tmp_path, history_url, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url), fragment)
    assert count_rows(history_url, "runs") == 0


def test_bad_jsonl_line_is_named(cli, tmp_path, history_url):
    good = json.dumps({"model": "m", "dataset": "d", "method": "x", "seed": 0, "id_acc_before": 0.1, "id_acc_after": 0.2})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + good.replace('"seed": 0', '"seed": 1') + "\n[1]\n")
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url), "line 3: expected a JSON object")
    assert count_rows(history_url, "runs") == 0


def test_ragged_csv_row(cli, tmp_path, history_url):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(HEADER) + "\n" + ",".join(ROWS[0][:5]) + "\n")
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url), "row 1 has 5 cells but the header has 20")


def test_duplicate_run_id_against_database_adds_nothing(cli, runs_csv, tmp_path, history_url):
    cli("history", "add", str(runs_csv), "--db", history_url)
    new = [list(r) for r in ROWS]
    for i, r in enumerate(new):
        r[HEADER.index("seed")] = str(10 + i)  # new configurations ...
    new[0][0], new[1][0], new[2][0] = "n1", "r2", "n3"  # ... but one id already recorded
    path = write_csv(tmp_path / "more.csv", HEADER, new)
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url), "row 2: run_id 'r2' is already in the database")
    assert count_rows(history_url, "runs") == 3  # n1, parsed and inserted before row 2 failed, was rolled back


def test_same_run_again_against_database_adds_nothing(cli, runs_csv, tmp_path, history_url):
    cli("history", "add", str(runs_csv), "--db", history_url)
    new = [list(r) for r in ROWS]
    new[0][0], new[1][0], new[2][0] = "n1", "n2", "n3"
    path = write_csv(tmp_path / "again.csv", HEADER, new)
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url),
                          "row 1: a run with the same model, dataset, method, shots, hparams, split and seed is "
                          "already in the database (run 'r1')")
    assert count_rows(history_url, "runs") == 3


# --------------------------------------------------------------------------- bad databases


def _execute(url: str, sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def test_newer_schema(cli, runs_csv, history_url):
    open_history(history_url).close()
    _execute(history_url, "INSERT INTO schema_migrations VALUES (42, 'm042_future', '2030-01-01T00:00:00+00:00')")
    for args in (["add", str(runs_csv)], ["list"], ["export"]):
        assert_one_line_error(cli("history", *args, "--db", history_url),
                              f"database schema version 42 is newer than this advisor supports ({SCHEMA_VERSION}); upgrade advisor")
    assert count_rows(history_url, "runs") == 0


def test_read_only_database_url(cli, runs_csv, tmp_db):
    open_history(str(tmp_db)).close()
    url = f"sqlite:///file:{tmp_db}?mode=ro&uri=true"
    assert cli("history", "list", "--db", url).exit_code == 0  # reading works
    assert_one_line_error(cli("history", "add", str(runs_csv), "--db", url), f"database {tmp_db} is read-only")
    assert count_runs(tmp_db) == 0


def test_read_only_database_file(cli, runs_csv, tmp_db):
    """A file the process may not write: chmod for ordinary users; root ignores permissions,
    so as root the file is made immutable (chattr +i), which binds root too."""
    import os

    open_history(str(tmp_db)).close()
    con = sqlite3.connect(tmp_db)  # hand over a quiet, checkpointed file
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(tmp_db)]).returncode != 0:
            pytest.skip("running as root and the file system cannot make a file immutable")
        undo = ["chattr", "-i", str(tmp_db)]
    else:
        tmp_db.chmod(0o444)
        undo = ["chmod", "644", str(tmp_db)]
    try:
        assert_one_line_error(cli("history", "add", str(runs_csv), "--db", str(tmp_db)), f"database {tmp_db} is read-only")
    finally:
        subprocess.run(undo, check=True)
    assert count_runs(tmp_db) == 0


def test_database_path_is_a_directory(cli, runs_csv, tmp_path):
    assert_one_line_error(cli("history", "add", str(runs_csv), "--db", str(tmp_path)),
                          f"database path {tmp_path} is a directory")
    assert_one_line_error(cli("history", "list", "--db", str(tmp_path)), "is a directory")


def test_corrupt_database_file_is_left_alone(cli, runs_csv, tmp_db):
    tmp_db.write_bytes(b"this is not SQLite, just text that happens to be here\n" * 20)
    before = tmp_db.read_bytes()
    assert_one_line_error(cli("history", "add", str(runs_csv), "--db", str(tmp_db)),
                          f"{tmp_db} is not a valid SQLite database")
    assert_one_line_error(cli("history", "list", "--db", str(tmp_db)), "is not a valid SQLite database")
    assert tmp_db.read_bytes() == before


def test_locked_database_gives_up_after_the_timeout(cli, runs_csv, history_url):
    """Another process holds the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an exclusive
    table lock): the add waits ADVISOR_DB_TIMEOUT seconds, then says so in one line."""
    from sqlalchemy import create_engine

    open_history(history_url).close()
    engine = create_engine(history_url)
    holder = engine.raw_connection()
    cur = holder.cursor()
    if history_url.startswith("sqlite"):
        holder.driver_connection.isolation_level = None
        cur.execute("BEGIN IMMEDIATE")
    else:
        cur.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
    try:
        result = cli("history", "add", str(runs_csv), "--db", history_url, env={"ADVISOR_DB_TIMEOUT": "0.2"})
        assert_one_line_error(result, f"database {location(history_url)} is locked by another process "
                                      "(gave up after 0.2 s")
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert count_rows(history_url, "runs") == 0


def test_missing_directory_and_bad_urls(cli, tmp_path):
    missing = tmp_path / "nowhere" / "h.db"
    assert_one_line_error(cli("history", "list", "--db", str(missing)), f"directory {missing.parent} does not exist")
    assert not missing.parent.exists()
    assert_one_line_error(cli("history", "list", "--db", "sqlite+nosuchdriver:///x.db"), "driver not installed")
    assert_one_line_error(cli("history", "list", "--db", "://"), "bad database URL")


def test_unknown_run_and_bad_export_target(cli, history_url, tmp_path):
    open_history(history_url).close()  # read-only commands refuse a history that does not exist
    assert_one_line_error(cli("history", "show", "zzz", "--db", history_url), "no run with id 'zzz'")
    assert_one_line_error(cli("history", "export", "-o", str(tmp_path / "no" / "x.csv"), "--db", history_url),
                          "cannot write")


def test_real_process_reports_one_line(tmp_path):
    """Outside CliRunner: the installed entry point prints one line on stderr, exit 1."""
    from conftest import run_advisor

    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"garbage" * 100)
    p = run_advisor("history", "list", "--db", str(bad))
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"Error: {bad} is not a valid SQLite database (file is not a database)"]
    assert p.stdout == ""


def test_skip_existing_merges_another_history_export(cli, runs_csv, tmp_path, history_url):
    """--skip-existing adds what is new and leaves out what is already there (the same run by
    id, or another id for the same configuration and seed), in one transaction; without it
    the same file is refused whole."""
    cli("history", "add", str(runs_csv), "--db", history_url)
    rows = [list(r) for r in ROWS]  # r1, r2, r3: the very runs already recorded
    again = list(ROWS[0])
    again[0] = "other-id"  # r1's configuration and seed under another id
    fresh = list(ROWS[1])
    fresh[0], fresh[HEADER.index("seed")] = "n9", "99"  # a new configuration
    path = write_csv(tmp_path / "merge.csv", HEADER, rows + [fresh])
    assert_one_line_error(cli("history", "add", str(path), "--db", history_url), "row 1: run_id 'r1' is already in the database")
    assert count_rows(history_url, "runs") == 3
    out = cli("history", "add", str(path), "--skip-existing", "--db", history_url, "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["added"] == 1 and json.loads(out.stdout)["skipped"] == 3
    assert count_rows(history_url, "runs") == 4
    path = write_csv(tmp_path / "other-id.csv", HEADER, [again])
    out = cli("history", "add", str(path), "--skip-existing", "--db", history_url)
    assert out.exit_code == 0 and "Added 0 runs" in out.stdout and "1 already there, skipped" in out.stdout
    assert count_rows(history_url, "runs") == 4
    clash = list(ROWS[2])
    clash[HEADER.index("seed")] = "77"  # a new configuration under an id already taken: still an error
    path = write_csv(tmp_path / "clash.csv", HEADER, [clash])
    assert_one_line_error(cli("history", "add", str(path), "--skip-existing", "--db", history_url),
                          "row 1: run_id 'r3' is already in the database")
    assert count_rows(history_url, "runs") == 4


def test_history_list_shows_the_hyper_parameters_that_differ(tmp_path, cli):
    """Runs that differ only in their learning rate (or epochs) do not look like identical rows."""
    from conftest import make_run

    from advisor.history import open_history

    db = str(tmp_path / "h.db")
    with open_history(db) as h:
        h.record_run(make_run(hparams={"lr": 0.001, "rank": 4, "epochs": 10}))
        h.record_run(make_run(hparams={"lr": 0.02, "rank": 4, "epochs": 10}))
        h.record_run(make_run(method="coop", hparams={"lr": 0.002, "epochs": 20}))
    out = cli("history", "list", "--db", db)
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert any("lora lr=0.001 " in ln for ln in lines) and any("lora lr=0.02 " in ln for ln in lines)
    assert any("coop" in ln and "lr=" not in ln for ln in lines)  # a single coop run: nothing differs
