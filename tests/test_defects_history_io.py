"""Regression tests for the history input/output defects of issue 27, each of which failed before
its fix: ``history export -o`` into the database truncated it, and a failed export destroyed
the old file; a full standard output, a JSON column holding other text, a bad PostgreSQL URL,
``ADVISOR_HOME``/``ADVISOR_CACHE`` on a file, an endless line and an over-long path gave
tracebacks; names with a bare CR, U+2028 or U+0085 did not survive an export round trip, a lone
surrogate was accepted and broke export (and PostgreSQL), an NFD name made a second model,
control characters reached the terminal raw; a mistyped ``--db`` or ``ADVISOR_REGISTRY`` was
silently replaced by an empty history or the installed registry."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import file_sha, make_run

from advisor.errors import HistoryError
from advisor.history import compact, open_history, open_reader


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def filled(path: Path, *runs) -> Path:
    with open_history(str(path)) as h:
        for run in runs or (make_run(), make_run(seed=1)):
            h.record_run(run)
    return path


# --------------------------------------------------------------------------- export keeps data


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "wal"])
def test_export_into_the_database_itself_is_refused_and_the_history_kept(cli, tmp_path, how):
    db = filled(tmp_path / "x.db")
    target = {"same": db, "symlink": tmp_path / "link.db", "hardlink": tmp_path / "hard.db",
              "wal": Path(f"{db}-wal")}[how]
    if how == "symlink":
        target.symlink_to(db)
    elif how == "hardlink":
        os.link(db, target)
    elif how == "wal":
        con = sqlite3.connect(db)  # keep a -wal file in place while exporting
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM runs").fetchall()
    before = file_sha(db)
    result = cli("history", "export", "--db", str(db), "-o", str(target))
    if how == "wal":
        con.close()
    one_line_error(result, "is the history database itself")
    assert file_sha(db) == before
    assert json.loads(cli("history", "list", "--db", str(db), "--json").stdout)[1]["seed"] == 1


_EXPORT_UNDER_A_FILE_SIZE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # writes past 1 KiB fail: a full disk
from advisor.cli import cli
sys.exit(cli())
"""


@pytest.mark.parametrize("existing", [True, False])
def test_failed_export_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, existing):
    db = filled(tmp_path / "x.db")
    compact(db)  # a rollback-journal file is read without writing a -shm file (past the limit too)
    out = tmp_path / "out" / "runs.csv"
    out.parent.mkdir()
    if existing:
        out.write_text("the export of yesterday\n")
    proc = subprocess.run([sys.executable, "-c", _EXPORT_UNDER_A_FILE_SIZE_LIMIT, "history", "export", "--db", str(db),
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"Error: cannot write {out}"), proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == (["runs.csv"] if existing else [])
    if existing:
        assert out.read_text() == "the export of yesterday\n"


def test_export_keeps_the_mode_of_the_file_it_replaces(cli, tmp_path):
    db = filled(tmp_path / "x.db")
    out = tmp_path / "runs.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    assert cli("history", "export", "--db", str(db), "-o", str(out)).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o640 and out.read_text().startswith("run_id,")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_export_to_a_full_standard_output_is_one_line(tmp_path):
    db = filled(tmp_path / "x.db")
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", code, "history", "export", "--db", str(db)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == "Error: cannot write the export to standard output: No space left on device\n"


def test_export_to_an_overlong_path_is_one_line(cli, tmp_path):
    db = filled(tmp_path / "x.db")
    one_line_error(cli("history", "export", "--db", str(db), "-o", str(tmp_path / ("n" * 300 + ".csv"))),
                   "cannot write", "File name too long")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("name", ["bare\rcr", "line\u2028separator", "next\x85line", "para\u2029graph",
                                  "group\x1dsep", "crlf\r\nname"])
def test_export_round_trips_names_with_line_breaks(cli, tmp_path, fmt, name):
    a = filled(tmp_path / "a.db", make_run(model=name, hparams={name: 1}), make_run(seed=1))
    one, two = tmp_path / f"one.{fmt}", tmp_path / f"two.{fmt}"
    assert cli("history", "export", "--db", str(a), "-o", str(one)).exit_code == 0
    added = cli("history", "add", str(one), "--db", str(tmp_path / "b.db"))
    assert added.exit_code == 0, added.stderr
    assert cli("history", "export", "--db", str(tmp_path / "b.db"), "-o", str(two)).exit_code == 0
    assert one.read_bytes() == two.read_bytes()
    models = {r["model"] for r in json.loads(cli("history", "list", "--db", str(tmp_path / "b.db"), "--json").stdout)}
    assert models == {name, "tiny-vit"}


def test_lone_surrogate_is_refused_naming_the_column(cli, tmp_path, history_url):
    filled(tmp_path / "src.db")
    src = tmp_path / "runs.jsonl"
    assert cli("history", "export", "--db", str(tmp_path / "src.db"), "-o", str(src)).exit_code == 0
    text = src.read_text().replace('"model": "tiny-vit"', '"model": "tiny\\ud800vit"', 1)
    src.write_text(text)
    one_line_error(cli("history", "add", str(src), "--db", history_url), "row 1, column model", "lone surrogate")
    hparams = src.read_text().replace("tiny\\ud800vit", "tiny-vit").replace('"rank": 4', '"\\udcff": 4', 1)
    src.write_text(hparams)
    one_line_error(cli("history", "add", str(src), "--db", history_url), "row 1, column hparams", "lone surrogate")
    with open_history(history_url) as h:
        with pytest.raises(HistoryError, match="column model: contains a lone surrogate"):
            h.record_run(make_run(model="tiny\udcffvit"))
        assert h.count() == 0
    one_line_error(cli("history", "list", "--db", history_url, "--model", "x\udcff"), "--model", "lone surrogate")
    one_line_error(cli("history", "show", "x\udcff", "--db", history_url), "no run with id 'x\\udcff'")


def test_nfd_name_is_the_same_model_as_its_nfc_twin(cli, tmp_path, history_url):
    nfc = unicodedata.normalize("NFC", "café-vit")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    with open_history(history_url) as h:
        h.record_run(make_run(model=nfc, method="lorá"))
        h.record_run(make_run(model=nfd, method=unicodedata.normalize("NFD", "lorá"), seed=1))
        assert len(h.models()) == 1
    for spelling in (nfc, nfd):
        listed = json.loads(cli("history", "list", "--db", history_url, "--model", spelling, "--json").stdout)
        assert [r["seed"] for r in listed] == [0, 1] and {r["model"] for r in listed} == {nfc}


def test_control_characters_in_names_are_escaped_in_list_and_show(cli, tmp_path):
    evil = "m\x1b[2J\x1b]0;owned\x07\x9bx"
    db = filled(tmp_path / "x.db", make_run(model=evil, pretrained="p\x1b[31m", signals={}))
    listed = cli("history", "list", "--db", str(db))
    assert listed.exit_code == 0
    run_id = json.loads(cli("history", "list", "--db", str(db), "--json").stdout)[0]["run_id"]
    shown = cli("history", "show", run_id, "--db", str(db))
    for out in (listed.stdout + listed.stderr, shown.stdout):
        assert not any(ch in out for ch in "\x1b\x07\x9b"), out
    assert "m\\x1b[2J" in listed.stdout and "\\x07\\x9bx" in listed.stdout
    assert "\\x1b[31m" in shown.stdout
    as_json = cli("history", "show", run_id, "--db", str(db), "--json").stdout
    assert json.loads(as_json)["model"] == evil


# --------------------------------------------------------------------------- tracebacks


def test_json_column_holding_other_text_is_one_line(cli, tmp_path):
    db = filled(tmp_path / "x.db")
    con = sqlite3.connect(db)
    run_id = con.execute("SELECT run_id FROM runs WHERE seed = 1").fetchone()[0]
    con.execute("UPDATE runs SET hparams = '{not json' WHERE seed = 1")
    con.commit()
    con.close()
    for args in (["history", "list"], ["history", "export"], ["history", "show", run_id],
                 ["predictor", "evaluate"]):
        one_line_error(cli(*args, "--db", str(db)), f"run {run_id!r}, column hparams", "not JSON")
    with open_reader(str(db)) as reader, pytest.raises(HistoryError, match=f"run {run_id!r}, column hparams"):
        reader.training_rows()  # the plain-sqlite3 read path of recommend


@pytest.mark.parametrize("url", ["postgresql://[::1", "postgresql://host:port/db"])
def test_bad_database_url_is_one_line(cli, url):
    one_line_error(cli("history", "list", "--db", url), "bad database URL")


@pytest.mark.parametrize("variable, command", [("ADVISOR_HOME", ["history", "path"]),
                                               ("ADVISOR_HOME", ["history", "list"]),
                                               ("ADVISOR_CACHE", ["cache", "path"])])
def test_data_directory_on_a_file_is_one_line(cli, tmp_path, variable, command):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for value in (str(a_file), str(a_file / "below")):
        one_line_error(cli(*command, env={variable: value}), f"{variable}={value!r}", "cannot be used as a directory")


def test_history_add_refuses_an_endless_line(cli, tmp_path, monkeypatch):
    from advisor.history import io as hio

    monkeypatch.setattr(hio, "MAX_LINE_BYTES", 2 * 2**20)  # as /dev/zero under a memory limit, but quick
    one_line_error(cli("history", "add", "/dev/zero", "--format", "jsonl", "--db", str(tmp_path / "x.db")),
                   "/dev/zero line 1 is longer than 2 MiB")
    assert not (tmp_path / "x.db").exists()


def test_history_add_of_dev_zero_under_a_memory_limit_is_one_line(tmp_path):
    limit = 1024 * 2**20  # 1 GiB of address space: enough for the CLI, not for an endless line
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
            "from advisor.cli import cli; sys.exit(cli())" % (limit, limit))
    proc = subprocess.run([sys.executable, "-c", code, "history", "add", "/dev/zero", "--db", str(tmp_path / "x.db")],
                          capture_output=True, text=True, timeout=120)
    if "MemoryError" in proc.stderr and "import" in proc.stderr:
        pytest.skip("the CLI itself does not start under this address-space limit here")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("Error: /dev/zero"), proc.stderr


@pytest.mark.parametrize("command", [["history", "list"], ["history", "add", "RUNS"]])
def test_overlong_database_path_is_one_line(cli, tmp_path, command):
    runs = tmp_path / "runs.jsonl"
    runs.write_text("")
    long_name = str(tmp_path / ("d" * 300 + ".db"))
    long_path = str(tmp_path / ("d/" * 2200)) + "x.db"
    for db in (long_name, long_path):
        args = [str(runs) if a == "RUNS" else a for a in command]
        one_line_error(cli(*args, "--db", db), "too long")


# --------------------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("command", [["history", "list"], ["history", "show", "lora"], ["history", "export"],
                                     ["predictor", "evaluate"], ["predictor", "show"], ["predictor", "train"],
                                     ["report", "-o", "OUT"], ["recommend", "--dataset", "digits"]])
def test_read_only_commands_refuse_a_missing_database(cli, tmp_path, command):
    missing = tmp_path / "mistyped.db"
    args = [str(tmp_path / "r.html") if a == "OUT" else a for a in command]
    one_line_error(cli(*args, "--db", str(missing)), f"no history at {missing}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "empty.db").touch()
    one_line_error(cli(*args, "--db", str(tmp_path / "empty.db")), "is an empty file, not a history")
    assert (tmp_path / "empty.db").stat().st_size == 0


def test_history_add_still_creates_a_new_database(cli, tmp_path):
    src = filled(tmp_path / "src.db")
    out = tmp_path / "runs.csv"
    assert cli("history", "export", "--db", str(src), "-o", str(out)).exit_code == 0
    assert cli("history", "add", str(out), "--db", str(tmp_path / "new.db")).exit_code == 0
    assert len(json.loads(cli("history", "list", "--db", str(tmp_path / "new.db"), "--json").stdout)) == 2


def test_missing_advisor_registry_is_one_line(cli, tmp_path):
    missing = tmp_path / "missing.db"
    env = {"ADVISOR_REGISTRY": str(missing), "ADVISOR_HOME": str(tmp_path / "home")}
    one_line_error(cli("history", "list", env=env), f"ADVISOR_REGISTRY={str(missing)!r} does not exist")
    one_line_error(cli("history", "update", "--dry-run", env=env), "ADVISOR_REGISTRY")
    assert not (tmp_path / "home" / "registry.db").exists()
