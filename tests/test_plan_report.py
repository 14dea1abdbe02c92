"""``advisor report --model M --dataset D`` / ``--from-json``: the page of the user's own plan.

``FIXTURE`` below is a HAND-WRITTEN FIXTURE (not a real recommendation, numbers invented) in the
shape of ``advisor recommend --json``, with the keys being added for issue 24 (``models``,
``methods[*].model``, ``methods[*].out_of_support``, ``shots_curve``, ``probes``). The page must
render with them and without them. The real recommendation is made on the SYNTHETIC history of
tests/synthetic_history.py, as tests/test_recommend.py makes it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import pytest
from click.testing import CliRunner

from advisor.plan_report import build_plan_report, candidates, load_recommendation
from advisor.report import ReportError
from synthetic_history import MODEL_DESC, record_synthetic, synthetic_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _method(model, method, rank, gain, ood, cost, epochs, lr, **extra):
    """One candidate of the HAND-WRITTEN FIXTURE (invented numbers)."""
    return {"model": model, "method": method, "key": f"{model} + {method}", "rank": rank, "eligible": True,
            "excluded": None, "configurations_searched": 4, "alternatives": [],
            "id_gain": gain, "id_gain_lo": gain - 0.04, "id_gain_hi": gain + 0.03,
            "ood_change": ood, "ood_change_lo": ood - 0.02, "ood_change_hi": ood + 0.01,
            "cost_s": cost, "cost_s_lo": cost / 2, "cost_s_hi": cost * 2, "score": gain + ood,
            "hparams": {"epochs": epochs, "lr": lr, "batch_size": 32},
            "contributions": [{"feature": "zero_shot", "value": 0.01}], "contribution_base": gain - 0.01,
            "contribution_other": 0.0, "support_runs": 3, "similar_runs": [], **extra}


#: HAND-WRITTEN FIXTURE: a two-model recommendation with every optional key (numbers invented).
FIXTURE = {
    "model": "ViT-B-32", "dataset": "fixture-flowers", "shots": 16, "objective": "balanced", "winner": "lora",
    "sentence": "FIXTURE: LoRA on ViT-B-32 is predicted to gain most.", "source": "predictor",
    "models": ["ViT-B-32/openai", "lit-offline"],
    "methods": [
        _method("ViT-B-32/openai", "lora", 1, 0.12, -0.01, 300.0, 10, 0.001,
                out_of_support=["lr 0.001 above the history"]),
        _method("ViT-B-32/openai", "coop", 2, 0.08, 0.0, 120.0, 20, 0.002),
        _method("lit-offline", "lora", 3, 0.05, -0.02, 30.0, 10, 0.001),
        _method("lit-offline", "full", 4, 0.06, -0.08, 80.0, 5, 1e-05),
        {"model": "lit-offline", "method": "tip_adapter", "key": "lit-offline + tip_adapter", "rank": None,
         "eligible": False, "excluded": "no runs of this method in the history", "hparams": {}},
    ],
    "winner_key": "ViT-B-32/openai + lora", "run_key": "ViT-B-32/openai + lora",
    "run_model_args": ["--model", "ViT-B-32", "--pretrained", "openai"],
    "anchors": {"probe": 0.81, "probe_sd": 0.02, "prototype": 0.74, "knn": 0.7, "zero_shot": 0.55},
    "run_command": "advisor run --model ViT-B-32 --pretrained openai --dataset fixture-flowers --method lora "
                   "--shots 16 --hparam epochs=10 --hparam lr=0.001",
    "signals": {"iimm": 0.4, "zero_shot_acc": 0.55}, "signals_source": "history",
    "warnings": ["FIXTURE warning"], "notes": ["FIXTURE note"], "interval": 0.8, "device": "cuda",
    "out_of_support": [], "keep_zero_shot": False, "run_method": "lora", "budget": None,
    "shots_curve": [
        {"shots": s, "id_gain": g, "id_gain_lo": g - 0.05, "id_gain_hi": g + 0.04, "ood_change": -0.01 * k,
         "ood_change_lo": -0.01 * k - 0.02, "ood_change_hi": -0.01 * k + 0.01, "cost_s": 20.0 * s,
         "cost_s_lo": 10.0 * s, "cost_s_hi": 40.0 * s, "anchor_probe": 0.5 + 0.08 * k}
        for k, (s, g) in enumerate([(1, 0.01), (4, 0.05), (16, 0.12), (64, 0.2)])],
    "probes": [
        {"model": "ViT-B-32/openai", "method": "lora", "epochs_run": 2, "epochs": 10, "cost_s": 61.0, "measured": False,
         "stopped": "epochs",
         "curve": [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.6 + 0.05 * e, "ood_proxy_acc": 0.5 - 0.01 * e,
                    "train_s": 30.0 * e} for e in (1, 2)]},
        {"model": "lit-offline", "method": "lora", "epochs_run": 10, "epochs": 10, "cost_s": 29.0, "measured": True,
         "id_gain": 0.043, "ood_change": -0.004,
         "curve": [{"epoch": e, "val_acc": 0.5 + 0.01 * e} for e in range(1, 11)]},
    ],
}
#: The keys added for issue 24 (top level, then per candidate): a recommendation may lack them.
OPTIONAL = ("models", "shots_curve", "probes", "winner_key", "run_key", "run_model_args")
OPTIONAL_PER_METHOD = ("model", "out_of_support", "key", "configurations_searched", "alternatives")


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def _without_new_keys(rec: dict) -> dict:
    """The fixture as a recommendation from before issue 24: none of the keys being added."""
    old = {k: v for k, v in copy.deepcopy(rec).items() if k not in OPTIONAL}
    for m in old["methods"]:
        for k in OPTIONAL_PER_METHOD:
            m.pop(k, None)
    return old


def test_plan_page_from_the_fixture_has_every_candidate_the_shots_table_the_anchors_and_probes():
    text = build_plan_report(FIXTURE)
    imgs = _images(text)
    # candidates, shots curve, probe curves
    assert len(imgs) == 3 and all(i.startswith(PNG_MAGIC) and len(i) > 5000 for i in imgs)
    assert "Your plan: ViT-B-32/openai, lit-offline on fixture-flowers, 16 shots" in text
    for m in FIXTURE["methods"]:
        assert f"<td class='l n'>{m['method']}</td>" in text
    # every candidate has its command; the recommended one is the plan's own, with --pretrained
    assert text.count("<code>advisor run ") == len(FIXTURE["methods"])
    assert text.count("--pretrained openai") >= 3  # the page's lead, the best row, ViT-B-32 / coop's row
    assert "--method coop --shots 16 --hparam epochs=20 --hparam lr=0.002" in text
    # the recommended candidate's two rows (figures, command) stand out, and only they
    assert text.count("<tr class='best'>") == 2
    assert "<tr class='best'><td class='n'>1</td><td class='l n'>ViT-B-32/openai</td><td class='l n'>lora</td>" in text
    assert "--model lit-offline --dataset fixture-flowers --method full --shots 16 --hparam epochs=5" in text
    assert "best of 4 configurations" in text
    # the shots table: one row per shot count with its intervals and the probe anchor
    assert "+0.120 [+0.070, +0.160]" in text and "320 [160, 640]" in text and "<td>0.740</td>" in text
    # anchors, probes, warnings, out-of-support
    assert "0.810 ± 0.020" in text and "class prototypes" in text
    assert "partial run: its probe epochs ran" in text and "measured: the whole run fitted the budget" in text
    assert "<td>+0.043</td><td>-0.004</td>" in text
    assert "FIXTURE warning" in text and "outside the history: lr 0.001 above the history" in text
    assert "excluded: no runs of this method in the history" in text


def test_plan_page_without_the_keys_being_added_says_what_is_not_available():
    text = build_plan_report(_without_new_keys(FIXTURE))
    assert len(_images(text)) == 1  # the candidates only
    assert "Not available: this recommendation has no <code>shots_curve</code>" in text
    assert "Not available: this recommendation ran no probes" in text
    assert "Your plan: ViT-B-32 on fixture-flowers" in text  # one model: the top-level one
    no_anchors = dict(_without_new_keys(FIXTURE), anchors={})
    assert "Not available: the pair's signals have no anchors" in build_plan_report(no_anchors)


def test_recommended_candidate_is_the_winner_key_else_the_winner_of_the_model_its_command_names():
    rec = copy.deepcopy(FIXTURE)
    rec["winner_key"] = None  # the advice is to keep zero-shot: the one it would measure is marked
    rec["run_key"] = "lit-offline + full"
    assert [(r["model"], r["method"]) for r in candidates(rec) if r["best"]] == [("lit-offline", "full")]
    old = copy.deepcopy(FIXTURE)  # a saved plan without keys but with two models named
    for k in ("winner_key", "run_key", "run_model_args"):
        old.pop(k)
    for m in old["methods"]:
        m.pop("key")
    old["run_command"] = old["run_command"].replace("--model ViT-B-32 --pretrained openai", "--model lit-offline")
    assert [(r["model"], r["method"]) for r in candidates(old) if r["best"]] == [("lit-offline", "lora")]


def test_values_that_are_not_numbers_are_shown_as_missing():
    rec = copy.deepcopy(FIXTURE)
    rec["methods"][1].update(id_gain="big", cost_s=float("nan"))
    rec["shots_curve"][0]["id_gain"] = None
    text = build_plan_report(rec)
    assert "Not drawn (no predicted gain or cost): ViT-B-32/openai / coop" in text
    assert len(_images(text)) == 3


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON (line 1, column 2"),
    ("[1, 2]", "is not a recommendation: a JSON list"),
    ('{"model": "m", "dataset": "d"}', "no list of 'methods'"),
    ('{"model": "m", "dataset": "d", "methods": [{"rank": 1}]}', "methods[0] has no 'method' name"),
])
def test_from_json_with_a_bad_file_is_a_one_line_error(tmp_path, content, message):
    from advisor.cli import cli

    bad = tmp_path / "rec.json"
    bad.write_text(content)
    r = CliRunner().invoke(cli, ["report", "--from-json", str(bad), "-o", str(tmp_path / "plan.html")])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and message in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "plan.html").exists()
    with pytest.raises(ReportError, match=re.escape(message)):
        load_recommendation(bad)


def test_from_json_of_a_missing_file_or_a_folder_is_a_one_line_error(tmp_path):
    from advisor.cli import cli

    for path, message in ((tmp_path / "none.json", "cannot read --from-json"), (tmp_path, "is a directory")):
        r = CliRunner().invoke(cli, ["report", "--from-json", str(path), "-o", str(tmp_path / "plan.html")])
        assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1


def test_model_together_with_from_json_is_refused(tmp_path):
    from advisor.cli import cli

    good = tmp_path / "rec.json"
    good.write_text(json.dumps(FIXTURE))
    r = CliRunner().invoke(cli, ["report", "--model", "lit-offline", "--dataset", "digits", "--from-json", str(good),
                                 "-o", str(tmp_path / "plan.html")])
    assert r.exit_code == 2 and "not both" in r.output and not (tmp_path / "plan.html").exists()
    r = CliRunner().invoke(cli, ["report", "--dataset", "digits", "-o", str(tmp_path / "plan.html")])
    assert r.exit_code == 2 and "--dataset describe a plan to ask for: give --model too" in r.output


def test_cli_from_json_writes_the_plan_page(tmp_path):
    from advisor.cli import cli

    good = tmp_path / "rec.json"
    good.write_text(json.dumps(_without_new_keys(FIXTURE)))
    out = tmp_path / "plan.html"
    r = CliRunner().invoke(cli, ["report", "--from-json", str(good), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"path": str(out)}
    assert "Your plan: ViT-B-32 on fixture-flowers" in out.read_text()
    out.unlink()  # `advisor recommend --json | advisor report --from-json -`
    r = CliRunner().invoke(cli, ["report", "--from-json", "-", "-o", str(out)], input=json.dumps(FIXTURE))
    assert r.exit_code == 0 and "Your plan: ViT-B-32/openai, lit-offline" in out.read_text()


@pytest.fixture
def synthetic_history_db(tmp_path, monkeypatch):
    """SYNTHETIC runs (tests/synthetic_history.py) and the pair's stored signals (SYNTHETIC
    values), as tests/test_recommend.py builds them: no embedding is computed."""
    from advisor.data import dataset_descriptors, load_dataset
    from advisor.history import open_history

    monkeypatch.setenv("ADVISOR_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "history.db")
    record_synthetic(db, synthetic_rows(n_datasets=4, shots=(16,), iimms=[0.2, 0.4, 0.6, 0.9]))
    values = {"iimm": 0.8, "gap": 0.5, "unrelated": 0.3, "zero_shot_acc": 0.3}  # SYNTHETIC values
    open_history(db).store_signal_set(dict(MODEL_DESC), dataset_descriptors(load_dataset("digits")), "synthetic",
                                      values, {}, {})
    return db


def test_plan_page_of_a_real_recommendation_names_every_method_and_the_run_command(synthetic_history_db, tmp_path):
    """With --with-history the history report follows, its per-pair panels led by the plan's own
    pair (here absent from the history, which the caption says)."""
    from advisor.cli import cli

    out = tmp_path / "plan.html"
    r = CliRunner().invoke(cli, ["report", "--db", synthetic_history_db, "--model", "tiny-vit", "--dataset", "digits",
                                 "--allow-random-weights", "--objective", "gain", "--with-history", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    rec = json.loads(CliRunner().invoke(cli, ["recommend", "--db", synthetic_history_db, "--model", "tiny-vit",
                                              "--dataset", "digits", "--allow-random-weights", "--objective", "gain",
                                              "--json"]).stdout)
    assert "Your plan: tiny-vit on digits, 16 shots" in text and len(_images(text)) >= 1
    for m in rec["methods"]:
        assert f"<td class='l n'>{m['method']}</td>" in text
    assert rec["run_command"] and rec["run_command"] in text.replace("&#x27;", "'")
    assert "The candidates" in text and "shots curve" in text and "Anchors" in text
    assert "The history behind the predictor" in text and "leave-one-dataset-out" in text
    assert "Your pair (tiny-vit on digits) has no runs in the history" in text
