"""Issue 24: `recommend` answers with a plan: the model, the method and its configuration (the
learning rate searched within what the history ran), what more labels would buy, and the
`advisor run` command that trains it.

The histories here are SYNTHETIC (tests/synthetic_history.py; never written to registry.db) with
planted relations: LoRA at lr 2e-2 gains 0.1 less than at 5e-3, and tiny-rn gains 0.05 more
than tiny-vit on every run. The printed command is run for real (the tiny model on digits).
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from advisor.recommendation import recommend
from synthetic_history import MODEL_DESC, record_synthetic, synthetic_rows

REPO = Path(__file__).resolve().parent.parent
RN_DESC = dict(MODEL_DESC, name="tiny-rn", family="synthetic-rn", architecture="rn")
LR = {"full": 1e-5, "coop": 2e-3, "contcoop": 2e-3, "tpc_cma": 1e-3}
LORA_LR = {5e-3: 0.0, 2e-2: -0.1}  # planted: the higher learning rate loses 0.1 of in-domain gain
RN_BONUS = 0.05
PAIR_SIGNALS = {"iimm": 0.8, "gap": 0.5, "unrelated": 0.3, "zero_shot_acc": 0.3}  # SYNTHETIC values


def _rows() -> list[dict]:
    rows = []
    for r in synthetic_rows(n_datasets=5, shots=(4, 16), iimms=[0.2, 0.4, 0.6, 0.9, 0.5], noise=0.005):
        if r["method"] == "lora":
            for lr, delta in LORA_LR.items():
                q = copy.deepcopy(r)
                q["run_id"] += f"-lr{lr}"
                q["hparams"] = {"epochs": 10, "lr": lr}
                q["id_acc_after"] += delta
                rows.append(q)
        else:
            r["hparams"] = {"epochs": 10, "lr": LR[r["method"]]}
            rows.append(r)
    rn = []
    for r in rows:
        q = copy.deepcopy(r)
        q["run_id"] = "rn-" + q["run_id"]
        q["model"], q["model_desc"] = "tiny-rn", dict(RN_DESC)
        q["id_acc_after"] += RN_BONUS
        rn.append(q)
    return rows + rn


@pytest.fixture(scope="module")
def digits_desc():
    from advisor.data import dataset_descriptors, load_dataset

    return dataset_descriptors(load_dataset("digits"))


@pytest.fixture(scope="module")
def plan_db(tmp_path_factory, digits_desc) -> str:
    """A SYNTHETIC two-model history with a learning-rate axis, its predictor trained once."""
    from advisor.history import open_history
    from advisor.predictor import train_predictor

    db = str(tmp_path_factory.mktemp("plans") / "history.db")
    record_synthetic(db, _rows())
    h = open_history(db)
    for desc in (MODEL_DESC, RN_DESC):
        h.store_signal_set(dict(desc), digits_desc, "synthetic", dict(PAIR_SIGNALS), {}, {})
    train_predictor(h, evaluate=False)
    return db


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))


def _rec(db: str, **kw):
    return recommend("tiny-vit", "digits", db=db, allow_random_weights=True, objective="gain", **kw)


def test_each_method_gets_its_best_configuration_within_the_history(plan_db):
    rec = _rec(plan_db)
    lora = next(a for a in rec.methods if a.method == "lora")
    assert lora.hparams["lr"] == 5e-3  # the planted better learning rate
    assert lora.configurations_searched >= 2
    lrs = [alt["hparams"]["lr"] for alt in lora.alternatives]
    assert 2e-2 in lrs and all(5e-3 <= lr <= 2e-2 for lr in lrs)  # searched only where the history ran
    worst = next(alt for alt in lora.alternatives if alt["hparams"]["lr"] == 2e-2)
    assert worst["id_gain"] < lora.id_gain - 0.05
    assert not lora.out_of_support and all(not alt["out_of_support"] for alt in lora.alternatives)
    for a in rec.methods:  # every plan names its configuration, ready to run
        assert a.hparams["epochs"] == 10 and "lr" in a.hparams
    doc = rec.to_dict()
    assert {m["key"] for m in doc["methods"]} == {a.method for a in rec.methods}
    assert all("hparams" in m for m in doc["methods"])


def test_a_configuration_outside_the_history_is_flagged_and_widened(plan_db, cli):
    free = {a.method: a for a in _rec(plan_db).methods}
    pinned = {a.method: a for a in _rec(plan_db, hparams=["lora:lr=0.5"]).methods}
    lora = pinned["lora"]
    assert lora.hparams["lr"] == 0.5 and lora.configurations_searched == 1
    assert len(lora.out_of_support) == 1 and "lr=0.5 lies outside the history's lr for lora" in lora.out_of_support[0]
    assert (lora.id_gain_hi - lora.id_gain_lo) > (free["lora"].id_gain_hi - free["lora"].id_gain_lo)
    assert not pinned["coop"].out_of_support  # the pin names lora only

    r = cli("recommend", "--model", "tiny-vit", "--dataset", "digits", "--db", plan_db, "--allow-random-weights",
            "--hparam", "lr=0.5")
    assert r.exit_code == 0, r.stderr
    assert "! lora: lora lr=0.5 lies outside" in r.stdout and "! coop: coop lr=0.5 lies outside" in r.stdout
    for bad, message in ((["--hparam", "nosuch:lr=1"], "no tuner named 'nosuch'"),
                         (["--hparam", "rank=x"], "rank"),
                         (["--hparam", "bogus=1"], "no tuner declares 'bogus'"),
                         (["--hparam", "lr"], "is not NAME=VALUE")):
        r = cli("recommend", "--model", "tiny-vit", "--dataset", "digits", "--db", plan_db, *bad)
        assert r.exit_code != 0 and message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_two_models_are_ranked_on_one_scale(plan_db, cli):
    vit = {a.method: a for a in _rec(plan_db).methods}
    rn = {a.method: a for a in recommend("tiny-rn", "digits", db=plan_db, allow_random_weights=True,
                                         objective="gain").methods}
    both = _rec(plan_db, other_models=["tiny-rn"])
    assert both.models == ["tiny-vit", "tiny-rn"]
    assert {a.key for a in both.methods} == {f"{m} + {x}" for m in ("tiny-vit", "tiny-rn") for x in vit}
    for a in both.methods:  # the same predictions as each model alone: one scale
        alone = (vit if a.model == "tiny-vit" else rn)[a.method]
        assert a.id_gain == pytest.approx(alone.id_gain) and a.hparams == alone.hparams
    scores = [a.score for a in both.methods if a.eligible]
    assert scores == sorted(scores, reverse=True)
    assert both.methods[0].model == "tiny-rn"  # the planted better model ranks first
    better = sum(rn[m].id_gain > vit[m].id_gain for m in vit)
    assert better >= 4
    run = both.advice(both.run_key)
    assert both.run_command().startswith(f"advisor run --model {run.model} --dataset digits --method {run.method}")

    r = cli("recommend", "--model", "tiny-vit", "--model", "tiny-rn", "--dataset", "digits", "--db", plan_db,
            "--allow-random-weights", "--objective", "gain", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["models"] == ["tiny-vit", "tiny-rn"] and len(doc["methods"]) == 2 * len(vit)
    r = cli("recommend", "--model", "tiny-vit", "--model", "tiny-rn", "--pretrained", "a", "--pretrained", "b",
            "--pretrained", "c", "--dataset", "digits", "--db", plan_db)
    assert r.exit_code != 0 and "3 --pretrained values for 2 --model values" in r.stderr


def test_models_file_adds_candidates(plan_db, cli, tmp_path):
    f = tmp_path / "models.txt"
    f.write_text("# candidates\ntiny-rn\n\n")
    r = cli("recommend", "--model", "tiny-vit", "--models-file", str(f), "--dataset", "digits", "--db", plan_db,
            "--allow-random-weights", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["models"] == ["tiny-vit", "tiny-rn"]
    f.write_text("tiny-rn a b c\n")
    r = cli("recommend", "--models-file", str(f), "--dataset", "digits", "--db", plan_db)
    assert r.exit_code != 0 and "models.txt:1: expected NAME [PRETRAINED [IMAGE_SIZE]]" in r.stderr


def test_what_more_labels_buy(plan_db, cli):
    rec = _rec(plan_db)
    curve = rec.shots_curve
    assert [p["shots"] for p in curve] == [4, 16]  # the shot counts the history covers
    run = rec.advice(rec.run_key)
    at = next(p for p in curve if p["shots"] == 16)
    assert at["id_gain"] == pytest.approx(run.id_gain) and at["cost_s"] == pytest.approx(run.cost_s)
    for p in curve:
        assert p["id_gain_lo"] <= p["id_gain"] <= p["id_gain_hi"]
        assert p["ood_change_lo"] <= p["ood_change"] <= p["ood_change_hi"]
    assert json.loads(json.dumps(rec.to_dict()))["shots_curve"] == curve
    r = cli("recommend", "--model", "tiny-vit", "--dataset", "digits", "--db", plan_db, "--allow-random-weights")
    assert "What more labels buy" in r.stdout


def test_the_printed_run_command_runs_as_printed(plan_db, tmp_path, cli):
    """The command `recommend` prints, run as printed by the `advisor` executable (only the
    history is named by the environment), trains the configuration it names and records it."""
    import os
    import subprocess

    db = tmp_path / "history.db"
    with sqlite3.connect(plan_db) as src, sqlite3.connect(db) as dst:  # a consistent copy of a WAL database
        src.backup(dst)
    r = cli("recommend", "--model", "tiny-vit", "--dataset", "digits", "--shots", "4", "--db", str(db),
            "--allow-random-weights")
    assert r.exit_code == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    command = line[line.index("advisor run "):]
    argv = shlex.split(command)
    with sqlite3.connect(db) as con:
        before = con.execute("select count(*) from runs").fetchone()[0]
    exe = shutil.which("advisor") or str(Path(sys.executable).parent / "advisor")
    env = dict(os.environ, ADVISOR_DB=str(db), HF_HUB_OFFLINE="1", ADVISOR_HOME=str(tmp_path / "home"))
    done = subprocess.run([exe, *argv[1:]], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from runs").fetchone()[0] == before + 1
    method, shots, hparams = con.execute("select method, shots, hparams from runs order by rowid desc limit 1").fetchone()
    assert method == argv[argv.index("--method") + 1] and shots == 4
    hp = json.loads(hparams)
    pins = [argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--hparam"]
    assert pins and all(hp[k] == json.loads(v) for k, v in pins)
