"""Issue 27, the `run` and `recommend` items: an answer that names the configuration it predicts
and agrees with itself (sentence, winner, table order), bad inputs of `run` refused before
training, a measured run never lost (spool or adapter write failing), hooks that cannot end a
command, progress on long commands, and tables a person can read."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from advisor.errors import AdvisorError, HistoryError
from advisor.runner import run_finetune
from advisor.specs import DatasetSpec, ModelSpec

REPO = Path(__file__).resolve().parent.parent
FAST = dict(shots=1, epochs=1, ood=["faces"], max_test=10, max_ood=10, device="cpu", quiet=True, signals=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """One copy of the shipped history (with its stored predictor) for the module's read-only
    recommend calls."""
    path = tmp_path_factory.mktemp("registry") / "registry.db"
    shutil.copy(REPO / "registry.db", path)
    return str(path)


def _recommend_json(cli, registry: str, *args: str) -> dict:
    r = cli("recommend", "--model", "lit-offline", "--db", registry, "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# ------------------------------------------------------------------ the answer and its schedule


def test_recommend_names_the_history_configuration_and_the_run_command_that_trains_it(cli, registry):
    # a pair where fine-tuning pays (measured gains +0.2 to +0.4), so there is a winner to name
    doc = _recommend_json(cli, registry, "--dataset", "digits-lowcontrast")
    by = {m["method"]: m for m in doc["methods"]}
    # The history's CPU schedules (sweeps/registry.toml), not the tuners' defaults (coop: 200 epochs).
    assert by["coop"]["hparams"]["epochs"] == 20 and by["contcoop"]["hparams"]["epochs"] == 20
    assert by["lora"]["hparams"]["epochs"] == 20 and by["full"]["hparams"]["epochs"] == 10
    assert by["coop"]["hparams"]["lr"] == 0.002
    winner = doc["winner"]
    assert winner is not None
    assert doc["run_command"].startswith("advisor run --model lit-offline --dataset digits-lowcontrast --method " + winner)
    assert f"--hparam epochs={by[winner]['hparams']['epochs']}" in doc["run_command"]
    assert "--hparam lr=" in doc["run_command"]

    text = cli("recommend", "--model", "lit-offline", "--dataset", "digits-lowcontrast", "--db", registry,
               env={"COLUMNS": "100"}).stdout
    assert "epochs, lr" in text and "20, 0.002" in text
    assert f"--method {winner} --shots 16 --hparam epochs=" in text


def test_recommend_keeps_zero_shot_when_every_balanced_score_is_negative(cli, registry):
    """lit-offline on mnist-5k: every balanced score is negative, so the answer is to keep the
    zero-shot model, `winner` says the same (null), and the table's first row is the method the
    sentence and the run command name."""
    doc = _recommend_json(cli, registry, "--dataset", "mnist-5k")
    assert all(m["score"] < 0 for m in doc["methods"])
    assert doc["winner"] is None and doc["keep_zero_shot"] is True
    assert "keep the zero-shot model" in doc["sentence"] and not doc["sentence"].startswith("Use")
    first = doc["methods"][0]["method"]
    assert f"--method {first} " in doc["run_command"]

    out = cli("recommend", "--model", "lit-offline", "--dataset", "mnist-5k", "--db", registry).stdout
    assert "Use tpc_cma" not in out and "keep the zero-shot model" in out
    assert f"To measure {first} anyway" in out


def test_keep_zero_shot_follows_the_objectives_score_not_the_id_gain():
    from advisor.decision import choose, keeps_zero_shot, winner_sentence
    from advisor.recommendation import MethodAdvice

    # A gain in-domain that costs more out-of-domain: negative under `balanced`, positive under `gain`.
    def advice():
        return [MethodAdvice("lora", id_gain=0.01, id_gain_lo=0.0, id_gain_hi=0.02,
                             ood_change=-0.03, ood_change_lo=-0.04, ood_change_hi=-0.02)]

    ranked, winner = choose(advice(), "balanced")
    assert keeps_zero_shot(ranked, winner, "balanced")
    assert winner_sentence(ranked, winner, "balanced", "predictor").startswith("No method is predicted to improve")
    ranked, winner = choose(advice(), "gain")
    assert not keeps_zero_shot(ranked, winner, "gain")
    assert winner_sentence(ranked, winner, "gain", "predictor").startswith("Use lora")


def test_a_tied_choice_that_is_not_the_first_row_is_marked_in_the_table(cli, registry):
    # lit1-offline-mix on mnist-5k: full is ranked first, but tied with TPC-CMA, which the tie rule picks
    args = ("recommend", "--model", "lit1-offline-mix", "--dataset", "mnist-5k", "--objective", "gain", "--db", registry)
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    winner, first = doc["winner"], doc["methods"][0]["method"]
    assert winner and winner != first and winner in doc["tied"]
    out = cli(*args).stdout
    assert f"  {winner}*  " in out and f"* recommended: {winner}" in out
    assert f"Use {winner}" in out


def test_similar_runs_say_what_differs_between_them(cli, registry):
    doc = _recommend_json(cli, registry, "--dataset", "mnist-5k")
    lora = next(m for m in doc["methods"] if m["method"] == "lora")
    labels = lora["similar_runs"]
    assert any("lr=0.02" in s for s in labels) and any("lr=0.005" in s for s in labels)
    assert len(set(labels)) == len(labels)  # no two runs read the same


@pytest.mark.parametrize("device", ["bogus", "cuda:x"])
def test_recommend_refuses_a_device_run_would_refuse(cli, registry, device):
    r = cli("recommend", "--model", "lit-offline", "--dataset", "mnist-5k", "--db", registry, "--device", device)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1] == f"Error: --device {device!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"


def test_recommend_table_fits_100_columns_one_line_per_method(cli, registry):
    r = cli("recommend", "--model", "lit-offline", "--dataset", "mnist-5k", "--db", registry, env={"COLUMNS": "100"})
    lines = r.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("-  ---"))
    body = lines[rule + 1: rule + 6]
    assert [line.split()[0] for line in body] == ["1", "2", "3", "4", "5"]
    assert max(len(line) for line in lines[rule - 1: rule + 6]) <= 100
    assert lines[rule + 6].startswith(("Each method", "ID gain", "*", "Excluded"))


def test_out_of_support_values_print_three_significant_digits():
    from advisor.predictor.support import HistorySupport

    support = HistorySupport(signal_ranges={"h_score": [0.9999999999999994, 5.25], "iimm": [1.0000001, 8.03]})
    texts = [t for _, t in support.flags({"signals": {"h_score": 8.59319134036829, "iimm": 1.0}})]
    assert "h_score=8.59 lies outside the history's range [1, 5.25]" in texts
    assert "iimm=1.0 lies outside the history's range [1.0000001, 8.03]" in texts  # more digits where needed


# ------------------------------------------------------------------ run: refused before training

# A dataset that does not exist: an option error reported instead of "folder ... does not exist"
# shows that the option was checked before the dataset (and so before the model) was loaded.
MISSING = ["run", "--model", "tiny-vit", "--dataset", "folder:/nonexistent/advisor-test", "--method", "coop",
           "--device", "cpu"]


@pytest.mark.parametrize("extra, message", [
    (["--seed", "9223372036854775808"], "--seed must be an integer from 0 to 2147483647"),
    (["--seed", "2147483648"], "--seed must be an integer from 0 to 2147483647"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 2147483647"),
    (["--lr", "1e308"], "lr must be at most 10"),
    (["--hparam", "lr=50"], "lr must be at most 10"),
    (["--epochs", "1000000000"], "epochs must be at most 100000"),
    (["--epochs", str(2**63)], "epochs must be at most 100000"),
    (["--hparam", "epochs=1000000000"], "epochs must be at most 100000"),
    (["--epochs", "1", "--hparam", "epochs=3"], "--epochs 1 and --hparam epochs=3 contradict each other"),
    (["--lr", "0.1", "--hparam", "lr=0.2"], "--lr 0.1 and --hparam lr=0.2 contradict each other"),
    (["--ood", "folder:/nonexistent/advisor-test"], "the OOD reference set cannot be the dataset itself"),
    (["--adapters-dir", "/etc/passwd/adapters"], "adapters directory /etc/passwd/adapters cannot be created"),
])
def test_run_refuses_what_the_history_would_refuse_before_loading_anything(cli, tmp_path, extra, message):
    r = cli(*MISSING, "--db", str(tmp_path / "h.db"), *extra)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, last


def test_run_refuses_an_ood_set_from_the_datasets_own_source(cli, tmp_path):
    r = cli("run", "--model", "tiny-vit", "--dataset", "digits-lowcontrast", "--method", "coop", "--device", "cpu",
            "--ood", "digits", "--db", str(tmp_path / "h.db"))
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1].startswith("Error: --ood digits: it comes from the same source")
    assert not (tmp_path / "h.adapters").exists()


def test_a_diverged_training_is_an_error_not_a_result():
    from advisor.runner import check_converged

    check_converged("full", [2.3, 1.1], 0.1)
    with pytest.raises(AdvisorError, match=r"full diverged: the training loss became nan at step 2 \(lr 5.0\)"):
        check_converged("full", [2.3, float("nan")], 5.0)


# ------------------------------------------------------------------ run: a measured run is kept


def test_run_with_neither_history_nor_spool_writable_prints_the_run_on_stderr(tmp_path, capsys):
    """The history becomes unwritable during training (its file replaced by a directory) and
    the spool directory cannot be created (under a regular file): the measurement is printed
    whole on stderr, as a spool document that `import-spool` takes, with a one-line error."""
    db = tmp_path / "h.db"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    def break_history(step: int, total: int, loss: float) -> None:
        if db.is_file():
            db.unlink()
            db.mkdir()

    with pytest.raises(HistoryError, match="the spool cannot be written either.*JSON line above on stderr"):
        run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", db=str(db), save_adapter=False,
                     spool_dir=str(blocker / "spool"), on_step=break_history, **FAST)
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")][-1]
    doc = json.loads(line)
    assert doc["format"] == "advisor-spooled-run" and doc["run"]["method"] == "coop"

    from advisor.history import open_history
    from advisor.history.spool import import_spool

    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "saved.run.json").write_text(line)
    with open_history(str(tmp_path / "other.db")) as h:
        assert [e["status"] for e in import_spool(h, spool)] == ["imported"]


def test_an_adapter_that_cannot_be_written_after_training_leaves_the_run_recorded(tmp_path, capsys):
    db = tmp_path / "h.db"
    folder = tmp_path / "adapters"

    def break_folder(step: int, total: int, loss: float) -> None:
        if not folder.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.write_text("the adapters directory became a file")

    run = run_finetune(ModelSpec("tiny-vit"), DatasetSpec("digits"), "coop", db=str(db), adapters_dir=str(folder),
                       on_step=break_folder, **FAST)
    assert run.adapter_path is None
    err = capsys.readouterr().err
    assert f"Warning: the adapter could not be written to {folder}/" in err and "recorded without it" in err
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*), max(adapter_path) from runs").fetchone() == (1, None)


@pytest.mark.parametrize("how", ["sys.exit(5)", "os._exit(5)"])
def test_a_hook_that_calls_sys_exit_becomes_a_warning_and_the_run_stays(tmp_path, capsys, run_factory, how):
    import os

    from advisor import hookimpl
    from advisor.history import open_history
    from advisor.plugins import load_plugins

    real_exit = os._exit

    class ExitingHook:
        @hookimpl
        def on_run_recorded(self, run, run_id, db_url):
            (sys.exit if how.startswith("sys") else os._exit)(5)

    pm = load_plugins()
    pm.register(ExitingHook(), name="exiting-hook")
    try:
        with open_history(str(tmp_path / "h.db")) as h:
            h.record_run(run_factory())
            assert h.count() == 1
    finally:
        pm.unregister(name="exiting-hook")
    assert os._exit is real_exit  # the guard put the real function back
    err = capsys.readouterr().err
    assert f"Warning: plugin 'exiting-hook' on_run_recorded failed (called {how}); the run was recorded" in err


# ------------------------------------------------------------------ progress and --quiet


@pytest.mark.parametrize("command", [["recommend"], ["predictor", "train"], ["predictor", "evaluate"],
                                     ["predictor", "show"], ["report"], ["history", "refresh-signals"],
                                     ["history", "update"], ["run"]])
def test_long_commands_take_quiet_and_q(cli, command):
    assert "-q, --quiet" in cli(*command, "--help", env={"COLUMNS": "200"}).stdout


@pytest.fixture
def small_history(tmp_path) -> str:
    from synthetic_history import record_synthetic, synthetic_rows

    db = str(tmp_path / "syn.db")
    record_synthetic(db, synthetic_rows(n_datasets=3, shots=(4,)))
    return db


def test_predictor_train_and_evaluate_report_progress_on_stderr_unless_quiet(cli, small_history):
    loud = {"ADVISOR_PROGRESS": "1"}
    r = cli("predictor", "evaluate", "--db", small_history, env=loud)
    assert r.exit_code == 0, r.stderr
    assert "advisor: reading the history" in r.stderr and "held-out datasets" in r.stderr  # one step per fold
    assert "advisor:" not in r.stdout
    r = cli("predictor", "train", "--db", small_history, env=loud)
    assert r.exit_code == 0, r.stderr
    assert "advisor: fitting the predictor on" in r.stderr and "advisor: scoring it leave-one-dataset-out" in r.stderr
    r = cli("predictor", "train", "--db", small_history, "-q", env=loud)
    assert r.exit_code == 0 and "advisor:" not in r.stderr and "held-out" not in r.stderr


def test_a_status_line_never_shares_a_line_with_a_progress_bar(monkeypatch, capsys):
    from advisor.terminal import phase, progress_bar

    monkeypatch.setenv("ADVISOR_PROGRESS", "1")
    bar = progress_bar(10, "training", "step")
    bar.update(3)
    bar.refresh()
    with phase("measuring the curve"):
        pass
    bar.close()
    err = capsys.readouterr().err
    for line in err.split("\n"):
        if "advisor: measuring the curve" in line:
            before = line.split("advisor:")[0].split("\r")[-1]
            assert before.strip() == "", repr(line)  # nothing of the bar before it on its line


# ------------------------------------------------------------------ tables


def test_piped_tables_are_not_wrapped_and_names_break_at_their_separators(monkeypatch):
    from advisor.terminal import format_table

    monkeypatch.delenv("COLUMNS", raising=False)
    cells = [["lit-offline", "fashion-mnist", "a long note " * 12, "0.5"]]
    columns = ["model", "dataset", "note", "gain"]
    assert len(format_table(cells, columns)) == 3  # stdout is not a terminal here: one line per row
    cells = [["lit-offline-mnist", "fashion-mnist-lowres", "0.5"]]
    lines = format_table(cells, ["model", "dataset", "gain"], width=30)
    assert max(len(line) for line in lines) <= 30 and len(lines) > 3
    for start, name in ((0, "lit-offline-mnist"), (lines[0].index("dataset"), "fashion-mnist-lowres")):
        parts = [line[start:].split()[0] for line in lines[2:] if len(line) > start and line[start] != " "]
        assert "".join(parts) == name and all(p.endswith("-") for p in parts[:-1]), parts  # "lit-" / "offline-"
