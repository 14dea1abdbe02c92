"""Choosing a configuration and a model, judged as Quick-Tune is (advisor.predictor.evaluation:
``config_choice``, ``model_choice``, the constant rules, ``--probe``), against values computed by
hand from small tables of SYNTHETIC runs."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADVISOR_BLOCK_PLUGINS", "1")

import numpy as np
import pytest
from sklearn.base import BaseEstimator

from advisor.predictor import evaluate
from advisor.predictor.evaluation import ConfigRules, config_label, probe_comparison, probe_rows, varying_hparams

#: The tuners' default learning rates as the rules see them (injected: no plugin needed).
DEFAULT_LR = {"full": 1e-5, "lora": 5e-3, "coop": 2e-3}


def tuner_defaults(method, shots):
    return {"lr": DEFAULT_LR[method]}


class PlantedPredictor(BaseEstimator):
    """A fixed recommender: predicts each run's ``row[key]`` as its ID gain (OOD change and cost
    0); with ``probe_epochs`` set, ``row[key + "_probe"]``. Fitting learns nothing, so its
    choices are known by hand."""

    def __init__(self, key="planted", interval=0.8, probe_epochs=None):
        self.key = key
        self.interval = interval
        self.probe_epochs = probe_epochs

    def fit_rows(self, rows, group_by="dataset"):
        self.model_ = self
        return self

    def predict_rows(self, rows, level=0.8):
        key = self.key + ("_probe" if self.probe_epochs else "")
        mean = np.array([[r[key], 0.0, 0.0] for r in rows], dtype=float)
        return {"mean": mean, "lo": mean, "hi": mean, "flags": [[] for _ in rows]}


class PlantedWithoutProbe(BaseEstimator):
    """The same without a ``probe_epochs`` parameter (a predictor with no probe features)."""

    def __init__(self, interval=0.8):
        self.interval = interval


def run(dataset, method, lr, gain, seed=0, model="m", before=0.4, **extra):
    """One SYNTHETIC run: accuracy ``before`` before, ``before + gain`` after; OOD unchanged (so
    the balanced objective equals the gain)."""
    hp = {"epochs": 10} | ({"lr": lr} if lr is not None else {})
    return {"run_id": f"{model}-{dataset}-{method}-{lr}-{seed}", "dataset": dataset, "model": model,
            "method": method, "shots": 16, "seed": seed, "device": "cpu", "hparams": hp,
            "id_acc_before": before, "id_acc_after": before + gain, "ood_before": {"x": 0.5}, "ood_after": {"x": 0.5},
            "wall_time_s": 10.0, "signals": {"iimm": 0.3 if dataset == "A" else 0.6},
            "model_desc": {"name": model}, "dataset_desc": {"name": dataset}, **extra}


# Measured ID gain per (method, lr), seeds averaged; full@1e-5 and lora@5e-3 ran with two seeds
# (+-0.01), so they are the methods' most common configurations.
GAINS = {
    "A": {("full", 1e-5): 0.10, ("full", 1e-4): 0.30, ("lora", 5e-3): 0.20, ("lora", 2e-2): 0.05, ("coop", None): 0.15},
    "B": {("full", 1e-5): 0.25, ("full", 1e-4): 0.05, ("lora", 5e-3): 0.10, ("lora", 2e-2): 0.38, ("coop", None): 0.15},
}
# The planted predictor's favourite per dataset: right on A, wrong on B (lora@5e-3 measures 0.10).
FAVOURITE = {"A": ("full", 1e-4), "B": ("lora", 5e-3)}
# A predictor blind to the learning rate: on A it favours full at both learning rates (a tie).
BLIND_FAVOURITE = {"A": "full", "B": "lora"}


def config_rows(gains=GAINS):
    rows = []
    for d, table in gains.items():
        for (m, lr), g in table.items():
            planted = {"planted": 0.5 if (m, lr) == FAVOURITE.get(d) else 0.1,
                       "blind": 0.5 if m == BLIND_FAVOURITE.get(d) else 0.1}
            if (m, lr) in (("full", 1e-5), ("lora", 5e-3)):
                rows += [run(d, m, lr, g - 0.01, seed=0, **planted), run(d, m, lr, g + 0.01, seed=1, **planted)]
            else:
                rows.append(run(d, m, lr, g, **planted))
    return rows


def entry(section, name):
    return next(b for b in section["recommenders"] if b["name"] == name)


def test_configurations_are_the_hyper_parameters_that_vary_within_a_method():
    rows = config_rows()
    assert varying_hparams(rows) == {"full": ("lr",), "lora": ("lr",), "coop": ()}  # epochs never varies
    ev = evaluate(rows, estimator=PlantedPredictor(), defaults=tuner_defaults)
    cc = ev["config_choice"]
    assert cc["varying_hparams"] == {"coop": [], "full": ["lr"], "lora": ["lr"]}
    assert cc["n_groups"] == {"gain": 2, "balanced": 2} and cc["n_groups_hp"] == {"gain": 2, "balanced": 2}
    assert {p["configuration"] for p in ev["predictions"]} == {"full lr=1e-05", "full lr=0.0001", "lora lr=0.005",
                                                               "lora lr=0.02", "coop"}
    assert config_label(("coop", "{}")) == "coop"
    json.dumps(ev)


def test_config_regret_of_a_fixed_predictor_and_of_the_constant_rules():
    ev = evaluate(config_rows(), estimator=PlantedPredictor(), defaults=tuner_defaults)
    cc = ev["config_choice"]
    # Group A: best full@1e-4 0.30, worst lora@2e-2 0.05 (range 0.25); group B: best lora@2e-2 0.38,
    # worst full@1e-4 0.05 (range 0.33). OOD is unchanged, so balanced == gain.
    expected = {
        # A: full@1e-4 (the best): regret 0; B: lora@5e-3, 0.10: regret 0.28
        "predictor": (0.5, (0 + 0.28) / 2, (0 + 0.28 / 0.33) / 2),
        # held out A, trained on B: B's best configuration lora@2e-2 measures 0.05 on A;
        # held out B, trained on A: full@1e-4 measures 0.05 on B
        "best-single-config": (0.0, (0.25 + 0.33) / 2, (0.25 / 0.25 + 0.33 / 0.33) / 2),
        # best method on B: lora (mean of its runs 0.193 against full's 0.183), at its default lr
        # 5e-3: 0.20 on A; best method on A: full (0.167 against lora's 0.15), at 1e-5: 0.25 on B
        "default-lr-of-best-method": (0.0, (0.10 + 0.13) / 2, (0.10 / 0.25 + 0.13 / 0.33) / 2),
        # each method at its most common configuration (two seeds against one)
        "always-full": (0.0, (0.20 + 0.13) / 2, (0.20 / 0.25 + 0.13 / 0.33) / 2),
        "always-lora": (0.0, (0.10 + 0.28) / 2, (0.10 / 0.25 + 0.28 / 0.33) / 2),
        "always-coop": (0.0, (0.15 + 0.23) / 2, (0.15 / 0.25 + 0.23 / 0.33) / 2),
        # uniform over the five candidates: best minus their mean
        "random": (0.2, (0.30 - 0.16 + 0.38 - 0.186) / 2, ((0.30 - 0.16) / 0.25 + (0.38 - 0.186) / 0.33) / 2),
    }
    for name, (top1, regret, nregret) in expected.items():
        b = entry(cc, name)
        for o in ("gain", "balanced"):
            assert b[f"top1_{o}"] == pytest.approx(top1), (name, o)
            assert b[f"regret_{o}"] == pytest.approx(regret), (name, o)
            assert b[f"nregret_{o}"] == pytest.approx(nregret), (name, o)
            assert b[f"groups_{o}"] == 2 and b[f"groups_nregret_{o}"] == 2
            assert b[f"regret_{o}_hp"] == pytest.approx(regret)  # both groups have a learning-rate choice
    # what the rules chose on each training fold
    assert [(c["held_out"], c["gain"]["best-single-config"], c["gain"]["best-method"]) for c in cc["rule_choices"]] \
        == [("A", "lora lr=0.02", "lora"), ("B", "full lr=0.0001", "full")]


def test_default_learning_rate_rule_follows_the_tuner_defaults():
    # With a default of 1e-4 for full fine-tuning, held out B (best method on A: full) picks
    # full@1e-4, 0.05 on B: regret 0.33 instead of 0.13.
    ev = evaluate(config_rows(), estimator=PlantedPredictor(),
                  defaults=lambda m, shots: {"lr": 1e-4 if m == "full" else DEFAULT_LR[m]})
    assert entry(ev["config_choice"], "default-lr-of-best-method")["regret_gain"] == pytest.approx((0.10 + 0.33) / 2)


def test_default_learning_rate_falls_back_to_the_most_common_one_in_training():
    rows = [r for r in config_rows() if r["dataset"] == "A"]
    varying = varying_hparams(rows)
    from advisor.predictor.evaluation import config_of
    from advisor.predictor.rows import targets_matrix

    rules = ConfigRules([(r["method"], config_of(r, varying)) for r in rows], targets_matrix(rows),
                        defaults=lambda m, shots: {})
    assert rules.default_lr("full", 16) == 1e-5  # two runs against one
    assert rules.default_lr("lora", 16) == 5e-3
    assert np.isnan(rules.default_lr("coop", 16))  # its learning rate never varies: every config matches
    assert rules.ranking("default-lr-of-best-method", "gain", 16)[0] == ("full", '{"lr": 1e-05}')


def test_a_tie_is_scored_as_a_uniform_draw_among_the_tied_configurations():
    ev = evaluate(config_rows(), estimator=PlantedPredictor(key="blind"), defaults=tuner_defaults)
    b = entry(ev["config_choice"], "predictor")
    # A: full@1e-5 (0.10) and full@1e-4 (0.30) tie: top-1 1/2, regret (0.20 + 0) / 2, normalised
    # (0.8 + 0) / 2; B: lora@5e-3 (0.10) and lora@2e-2 (0.38) tie: top-1 1/2, regret (0.28 + 0) / 2
    assert b["top1_gain"] == pytest.approx(0.5)
    assert b["regret_gain"] == pytest.approx((0.10 + 0.14) / 2)
    assert b["nregret_gain"] == pytest.approx((0.4 + 0.14 / 0.33) / 2)


def test_groups_where_every_configuration_measures_the_same_are_left_out_of_normalised_regret():
    gains = {"A": GAINS["A"], "C": {k: 0.2 for k in GAINS["A"]}}
    ev = evaluate(config_rows(gains), estimator=PlantedPredictor(), defaults=tuner_defaults)
    b = entry(ev["config_choice"], "predictor")
    assert b["groups_gain"] == 2 and b["groups_nregret_gain"] == 1
    assert b["regret_gain"] == pytest.approx(0.0) and b["nregret_gain"] == pytest.approx(0.0)
    r = entry(ev["config_choice"], "best-single-config")
    # held out A, trained on C (all 0.2): ties broken by candidate order: coop, 0.15 on A
    assert r["regret_gain"] == pytest.approx((0.15 + 0.0) / 2) and r["nregret_gain"] == pytest.approx(0.15 / 0.25)


def test_only_held_out_runs_are_judged():
    # headroom hold-out: B (zero-shot 0.3) has more headroom than A (0.4), so B alone is tested,
    # after training on A; A's group is no held-out group
    rows = config_rows()
    for r in rows:
        if r["dataset"] == "B":
            r["id_acc_after"] += 0.3 - r["id_acc_before"]
            r["id_acc_before"] = 0.3
    ev = evaluate(rows, holdout="headroom", estimator=PlantedPredictor(), defaults=tuner_defaults)
    cc = ev["config_choice"]
    assert cc["n_groups"]["gain"] == 1
    assert entry(cc, "best-single-config")["regret_gain"] == pytest.approx(0.33)  # A's full@1e-4 on B
    assert entry(cc, "predictor")["regret_gain"] == pytest.approx(0.28)
    assert ev["model_choice"]["n_groups"]["gain"] == 0  # one model


def model_rows():
    """Two models on datasets A and B; lora (one learning rate) ran with seeds 0 and 1 at +-0.01."""
    gains = {("A", "m1"): {"lora": 0.30, "coop": 0.10}, ("A", "m2"): {"lora": 0.15, "coop": 0.20},
             ("B", "m1"): {"lora": 0.27, "coop": 0.05}, ("B", "m2"): {"lora": 0.12, "coop": 0.28}}
    rows = []
    for (d, model), by in gains.items():
        for m, g in by.items():
            planted = {"planted": 0.5 if (model, m) == ("m1", "lora") else 0.1}
            if m == "lora":
                rows += [run(d, m, 5e-3, g - 0.01, seed=0, model=model, **planted),
                         run(d, m, 5e-3, g + 0.01, seed=1, model=model, **planted)]
            else:
                rows.append(run(d, m, None, g, model=model, **planted))
    return rows


def test_model_choice_top1_and_regret_overall_and_where_the_models_differ_beyond_seed_noise():
    ev = evaluate(model_rows(), estimator=PlantedPredictor(), defaults=tuner_defaults)
    mc = ev["model_choice"]
    # the seed spread: pooled standard deviation over the four lora configurations, each +-0.01
    dev = np.array([0.01, -0.01] * 4)
    assert mc["spread"] == pytest.approx(np.sqrt((dev ** 2).sum() / 4))
    # A: m1 best 0.30, m2 best 0.20 (resolved: 0.10 > 0.014); B: m1 0.27, m2 0.28 (not resolved)
    assert mc["n_groups"] == {"gain": 2, "balanced": 2} and mc["n_resolved"] == 1
    p = entry(mc, "predictor")  # always m1 (its lora is the favourite): right on A, 0.01 short on B
    assert p["top1_gain"] == pytest.approx(0.5) and p["regret_gain"] == pytest.approx(0.005)
    assert p["top1_gain_resolved"] == pytest.approx(1.0) and p["regret_gain_resolved"] == pytest.approx(0.0)
    assert p["groups_gain_resolved"] == 1
    r = entry(mc, "random")
    assert r["top1_gain"] == pytest.approx(0.5) and r["regret_gain"] == pytest.approx((0.05 + 0.005) / 2)
    # per (model, dataset, shots) the configuration choice sees the same runs: 4 groups of 2
    assert ev["config_choice"]["n_groups"]["gain"] == 4 and ev["config_choice"]["n_groups_hp"]["gain"] == 0


def test_probe_rows_are_the_runs_with_a_curve_point_at_that_epoch():
    rows = [{"curve": [{"epoch": 1, "acc": 0.3}, {"epoch": 2, "acc": 0.4}]}, {"curve": [{"epoch": 1}]},
            {"curve": json.dumps([{"epoch": 2}])}, {"curve": None}, {}]
    assert probe_rows(rows, 2) == [rows[0], rows[2]]
    assert probe_rows(rows, 1) == rows[:2]
    assert probe_rows(rows, 5) == []


def test_probe_comparison_evaluates_with_and_without_the_probe_on_the_same_rows():
    rows = config_rows()
    for r in rows:
        r["curve"] = [{"epoch": 1}, {"epoch": 2}] if r["method"] != "coop" else [{"epoch": 1}]
        # with the probe, the predictor's favourite on B becomes the best measured (lora@2e-2)
        r["planted_probe"] = r["planted"] if r["dataset"] == "A" else (0.5 if r["hparams"].get("lr") == 2e-2 else 0.1)
    pc = probe_comparison(rows, [2], estimator=PlantedPredictor(), defaults=tuner_defaults)
    (p,) = pc["probe"]
    assert p["probe_epochs"] == 2 and p["n_runs"] == len(rows) - 2  # coop has no point at epoch 2
    assert p["without"]["n_runs"] == p["with"]["n_runs"] == p["n_runs"]
    # without coop: A ranges 0.30..0.05, B 0.38..0.05 as before
    assert entry(p["without"]["config_choice"], "predictor")["regret_gain"] == pytest.approx(0.28 / 2)
    assert entry(p["with"]["config_choice"], "predictor")["regret_gain"] == pytest.approx(0.0)
    with pytest.raises(Exception, match="no probe features yet"):
        probe_comparison(rows, [2], estimator=PlantedWithoutProbe())
    with pytest.raises(Exception, match="learning-curve point at epoch 5"):
        probe_comparison(rows, [5], estimator=PlantedPredictor())


def test_cli_probe_needs_a_predictor_with_probe_features(cli, monkeypatch, tmp_path):
    import advisor.predictor.estimator as estimator

    monkeypatch.setattr(estimator, "AdvisorPredictor", PlantedWithoutProbe)
    r = cli("predictor", "evaluate", "--probe", "1,2", "--db", str(tmp_path / "none.db"))
    assert r.exit_code == 1 and r.output.strip() == "Error: this predictor has no probe features yet"
    r = cli("predictor", "evaluate", "--probe", "0", "--db", str(tmp_path / "none.db"))
    assert r.exit_code == 2 and "positive number of epochs" in r.output


def test_parse_probe_accepts_repeats_and_lists():
    from advisor.cli.predictor import parse_probe

    assert parse_probe(("1", "2,5", "2")) == [1, 2, 5]


def test_evaluate_prints_the_configuration_and_model_tables(cli, monkeypatch):
    from advisor.cli.predictor import config_choice_text, model_choice_text
    from advisor.predictor.evaluation import clean_json

    ev = clean_json(evaluate(config_rows(), estimator=PlantedPredictor(), defaults=tuner_defaults))
    lines = config_choice_text(ev).splitlines()
    assert "2 groups" in lines[0] and "full: lr, lora: lr" in lines[0]
    row = next(ln.split() for ln in lines if ln.startswith("predictor "))
    assert [float(v) for v in row[1:4]] == pytest.approx([0.5, 0.14, 0.4242], abs=1e-4)  # top-1, regret, norm.
    assert any(ln.startswith("default-lr-of-best-method ") for ln in lines)
    assert model_choice_text(ev) == "Choosing the model: no held-out (dataset, shots) group has runs of two models."
    mc = model_choice_text(clean_json(evaluate(model_rows(), estimator=PlantedPredictor(), defaults=tuner_defaults)))
    assert "(2 groups)" in mc and "the 1 group whose two best models' ID gains differ" in mc
