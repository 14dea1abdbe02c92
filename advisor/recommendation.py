"""``advisor recommend``: rank the fine-tuning methods for one (model, dataset) pair, explained.

1. The pair is prepared by ``advisor.pair``: its signals come from the history when it has
   them; otherwise they are computed once (same protocol as ``advisor run``) and stored, or
   read from a user's own embeddings file (``embeddings=FILE.npz``). A model that would run with
   random weights is refused unless allowed (``advisor.weights``).
2. The predictor stored in the history (``default``) predicts, per registered method, the
   in-domain gain (always feasible: between -zero-shot and 1 - zero-shot), the OOD change
   (negative = forgetting) and the cost, each with a conformal interval that widens for every
   kind of input outside the history's support (named in ``out_of_support``), plus the features
   that pushed the gain prediction most, with the base value they add up from.
3. ``advisor.decision`` applies the constraints and the objective, and says so when the best
   methods cannot be told apart (then the cheapest of them is recommended).

Cold start: with no stored predictor, one is trained if the history has at least ``MIN_RUNS``
runs over ``MIN_DATASETS`` datasets; otherwise the ranking falls back to the IIMM heuristic
(``advisor.heuristic``) and the recommendation says so.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .decision import (
    OBJECTIVES,
    MethodAdvice,
    cheapest,
    choose,
    keeps_zero_shot,
    objective_noise,
    ties,
    winner_sentence,
)
from .errors import AdvisorError, PredictorError, RecommendError
from .heuristic import anchor_prior_ranking, choose_heuristic, heuristic_ranking
from .pair import pair_from_embeddings, prepare_pair
from .recommend_support import HistoryEvidence, history_configs, similar_runs, support_for
from .specs import DatasetSpec, ModelSpec, RecommendRequest
from .specs.recommend import check_device_name

__all__ = ["OBJECTIVES", "MethodAdvice", "Recommendation", "RecommendError", "choose", "heuristic_ranking",
           "history_configs", "recommend", "recommend_request", "registered_methods", "similar_runs", "support_for", "winner_sentence"]

from .predictor import DEFAULT_PREDICTOR as PREDICTOR_NAME  # noqa: E402
#: How many contributing features to show per method.
TOP_CONTRIBUTIONS = 3


@dataclass
class Recommendation:
    """What ``recommend`` returns; ``to_dict`` is the ``--json`` output, ``to_dataframe`` one
    row per method for notebooks."""

    model: str
    dataset: str
    objective: str
    shots: int | None
    winner: str | None
    sentence: str
    source: str  # "predictor" | "anchor-prior" | "iimm-heuristic"
    methods: list[MethodAdvice]
    signals: dict[str, float]
    signals_source: str  # "history" | "computed" | "embeddings"
    support: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predictor: dict[str, Any] = field(default_factory=dict)
    max_forgetting: float | None = None
    budget: float | None = None
    out_of_support: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    interval: float = 0.8
    random_weights: bool = False
    device: str | None = None
    #: The decision is to keep the zero-shot model (then ``winner`` is None although methods rank).
    keep_zero_shot: bool = False
    #: The recommended method with the configuration its prediction is for (the best-ranked
    #: one when the decision is to keep zero-shot), as ``run_command`` arguments.
    run_method: str | None = None
    run_hparams: dict[str, Any] = field(default_factory=dict)
    #: What the frozen features reach on the pair at ``shots`` (``advisor.predictor.anchors``):
    #: probe, prototype and kNN accuracy, the probe's spread over draws, zero-shot accuracy on
    #: the same images; empty when the pair has no anchor signals.
    anchors: dict[str, float] = field(default_factory=dict)

    def anchor_sentence(self) -> str | None:
        """"A linear probe on your 16 shots reaches 0.97 ...": the anchors as evidence."""
        a = self.anchors
        if not a or a.get("probe") is None:
            return None
        shots = "every training image" if self.shots is None else f"{self.shots} shots per class"
        parts = [f"a linear probe on the frozen features with {shots} reaches {a['probe']:.2f}"
                 + (f" (+/- {a['probe_sd']:.2f} over draws)" if a.get("probe_sd") else "")]
        if a.get("prototype") is not None:
            parts.append(f"class prototypes {a['prototype']:.2f}")
        if a.get("knn") is not None:
            parts.append(f"kNN {a['knn']:.2f}")
        if a.get("zero_shot") is not None:
            parts.append(f"zero-shot on the same images {a['zero_shot']:.2f}")
        return "Anchors: " + "; ".join(parts) + "."

    def run_command(self, model_args: Sequence[str] | None = None, dataset: str | None = None) -> str | None:
        """``advisor run ... --method M --hparam epochs=E --hparam lr=X`` for ``run_method``: the
        configuration its prediction is for (``run_hparams``: epochs, lr and whatever else differs
        from the tuner's defaults)."""
        import shlex

        if self.run_method is None:
            return None
        model_args = ["--model", self.model] if model_args is None else list(model_args)
        args = ["advisor", "run", *model_args, "--dataset", dataset or self.dataset, "--method", self.run_method]
        if self.shots is not None:
            args += ["--shots", str(self.shots)]
        for k, v in self.run_hparams.items():
            args += ["--hparam", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
        return " ".join(shlex.quote(a) for a in args)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_command"] = self.run_command()
        d["anchor_sentence"] = self.anchor_sentence()
        for m in d["methods"]:
            m["contributions"] = [{"feature": f, "value": v} for f, v in m["contributions"]]
        return d

    def to_dataframe(self) -> Any:
        """One row per method (ranked), the columns of ``MethodAdvice``; needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise AdvisorError("to_dataframe() needs pandas: pip install pandas") from None
        rows = []
        for a in self.methods:
            row = asdict(a)
            row["contributions"] = ", ".join(f"{f} {v:+.3f}" for f, v in a.contributions)
            row["similar_runs"] = "; ".join(a.similar_runs)
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")


# ------------------------------------------------------------------------------------------
# Methods, from the tuner registry
# ------------------------------------------------------------------------------------------


def registered_methods(predictor_methods: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """(method names in registered order, method -> tuner family). Order and family come from
    each tuner's registration; methods only the predictor knows come last, family unknown."""
    from .plugins import get_tuners

    tuners = get_tuners()
    names = sorted(tuners, key=lambda n: (getattr(tuners[n], "order", 100), n))
    names += sorted(m for m in predictor_methods if m not in tuners) if not names else []
    return names, {n: str(getattr(tuners[n], "family", "other")) for n in tuners}


def run_overrides(method: str, hparams: Mapping[str, Any], shots: int | None) -> dict[str, Any]:
    """The ``--hparam`` values that make ``advisor run --method METHOD`` train ``hparams``: epochs
    and lr always (the schedule a prediction is for), then every other key whose value differs
    from the tuner's defaults at these shots."""
    from .plugins import get_tuners

    tuner = get_tuners().get(method)
    try:
        defaults = dict(tuner.defaults(shots)) if tuner is not None else {}
    except Exception:  # noqa: BLE001 - a third-party tuner's defaults: show every key then
        defaults = {}
    keep = [k for k in ("epochs", "lr") if k in hparams]
    keep += [k for k in sorted(hparams) if k not in keep and (k not in defaults or defaults[k] != hparams[k])
             and (k in defaults or tuner is None)]
    return {k: hparams[k] for k in keep}


# ------------------------------------------------------------------------------------------
# recommend()
# ------------------------------------------------------------------------------------------


def _default_device_kind(rows: Sequence[Mapping[str, Any]]) -> str:
    """Cost is predicted for the device most history runs used, unless one is asked for."""
    env = os.environ.get("ADVISOR_DEVICE")
    if env and env.strip() != "auto":
        return check_device_name(env, "ADVISOR_DEVICE").split(":", 1)[0]
    kinds = [str(r.get("device")).split(":", 1)[0] for r in rows if r.get("device")]
    return max(set(kinds), key=kinds.count) if kinds else "cpu"


def recommend(
    model_spec: ModelSpec | str,
    dataset_spec: DatasetSpec | str | None = None,
    *,
    db: str | None = None,
    objective: str = "balanced",
    max_forgetting: float | None = None,
    budget: float | None = None,
    shots: int | None = 16,
    device: str | None = None,
    max_images: int | None = None,
    quiet: bool = False,
    embeddings: str | None = None,
    allow_random_weights: bool = False,
) -> Recommendation:
    """Rank the registered fine-tuning methods for the pair (see the module docstring).

    ``max_forgetting`` is in accuracy units (0.02 = 2 points of mean OOD accuracy) and
    ``budget`` in seconds of training wall time. ``embeddings`` (a ``.npz`` with ``image``,
    ``text``, ``labels``) replaces loading the model and dataset: signals come from the file.
    Signals always use seed 0, as the history's runs do, so they are comparable.
    """
    return recommend_request(RecommendRequest.build(
        model_spec, dataset_spec, db=db, objective=objective, max_forgetting=max_forgetting, budget=budget,
        shots=shots, device=device, max_images=max_images, quiet=quiet, embeddings=embeddings,
        allow_random_weights=allow_random_weights))


@dataclass
class _Predictor:
    """The predictor a recommendation ranks with (None: cold start) and what it says about it."""

    est: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Ranking:
    """The ranked methods and how the winner was chosen among them."""

    ranked: list[MethodAdvice]
    winner: str | None
    source: str
    flags: list[tuple[str, str]]
    interval: float = 0.8
    tied: list[MethodAdvice] = field(default_factory=list)
    tie_reason: str = ""


def recommend_request(req: RecommendRequest) -> Recommendation:
    """``recommend`` for a checked request: prepare the pair, load or train the predictor,
    rank the methods, decide."""
    from .history import open_reader
    from .predictor.support import bounded_view

    history = open_reader(req.db, must_exist=True)  # plain sqlite3 for the reads of a cached pair; writes go to the full History
    view = bounded_view(history, PREDICTOR_NAME)  # a stored predictor with its history summary: no run read in full
    evidence = HistoryEvidence(history, view, [] if view is not None else history.training_rows())
    pair = _prepare(req, evidence)
    warnings, notes = _pair_warnings(req, pair)
    summary, domain_warnings = evidence.support_for(pair.model_desc, pair.dataset_desc)
    warnings[:0] = domain_warnings
    predictor = _load_or_train(evidence, notes)
    methods, families = registered_methods(predictor.est.schema.categories.get("method", [])
                                           if predictor.est is not None else ())
    device_kind = req.device_kind or _default_device_kind(evidence.device_rows())
    case = {"shots": req.shots, "device": device_kind, "signals": dict(pair.signals), "model_desc": dict(pair.model_desc),
            "dataset_desc": dict(pair.dataset_desc), "model": pair.model_desc.get("name")}
    configs = evidence.history_configs(methods, req.shots)
    if predictor.est is not None:
        ranking = _rank_predicted(req, predictor.est, case, methods, configs, evidence, warnings, notes)
    else:
        ranking = _rank_cold_start(req, case, methods, families, evidence, notes)
    similar = evidence.similar_runs(case, methods)
    for a in ranking.ranked:
        a.similar_runs = similar.get(a.method, [])
        a.support_runs = len(a.similar_runs)
        a.hparams = configs.get(a.method, {})
    return _decide(req, pair, ranking, summary, warnings, notes, predictor.info, device_kind, configs)


def _prepare(req: RecommendRequest, evidence: HistoryEvidence) -> Any:
    """The pair's descriptors and signals: from the embeddings file, else from the history or
    measured now and stored (seed 0 and the default sample, as the history's runs, so they compare)."""
    if req.embeddings is not None:
        dname = req.dataset.name if req.dataset is not None else None
        pair = pair_from_embeddings(req.embeddings, req.model.name or None, dname, evidence.rows, evidence.history)
        what = f"from {req.embeddings}"
    else:
        if req.dataset is None:
            raise RecommendError("give a dataset (or embeddings=FILE.npz)")
        pair = prepare_pair(req.model, req.dataset, history=evidence.history, rows=evidence.rows, lookup=True,
                            store=True, device=req.device, max_images=req.max_images, quiet=req.quiet,
                            allow_random_weights=req.allow_random_weights)
        what = "for the pair"
    if not pair.signals:
        errors = "; ".join(f"{k}: {v}" for k, v in (getattr(pair.signal_set, "errors", None) or {}).items())
        raise PredictorError(f"no signal could be computed {what} ({errors or 'no metric applies'})")
    return pair


def _pair_warnings(req: RecommendRequest, pair: Any) -> tuple[list[str], list[str]]:
    """(warnings, notes) about the pair itself: more shots than a class has, random weights."""
    from .data import shots_shortfall

    warnings: list[str] = []
    shortfall = shots_shortfall(pair.dataset_desc, req.shots)  # more shots than the smallest class has
    if shortfall:
        warnings.append(shortfall)
    if pair.model_desc.get("random_weights"):
        warnings.append(f"model {req.model.name!r} has randomly initialised weights (--allow-random-weights): "
                        "its signals describe the initialisation, and no run in the history resembles it")
    return warnings, []


def _load_or_train(evidence: HistoryEvidence, notes: list[str]) -> _Predictor:
    """The stored predictor; else one trained now when the history is ready; else none (cold start)."""
    from .predictor import FittedPredictor, history_ready, train_predictor

    stored = evidence.stored_predictor(PREDICTOR_NAME)
    if stored is not None:
        est = FittedPredictor.from_stored(stored)
        if evidence.changed_since(est.training_hash):
            notes.append(
                f"the history changed since the predictor was trained on {est.n_runs} runs "
                f"(now {evidence.count()}): run `advisor predictor train` to refresh it"
            )
        return _Predictor(est, {"name": PREDICTOR_NAME, "created_at": stored.get("created_at"), "n_runs": est.n_runs,
                                "training_hash": est.training_hash, "trained_now": False})
    ok, why = history_ready(evidence.rows)
    if not ok:
        notes.append(f"cold start: {why}")
        return _Predictor()
    info = train_predictor(evidence.history, name=PREDICTOR_NAME, evaluate=False)
    est = FittedPredictor.from_stored(evidence.history.load_predictor(PREDICTOR_NAME))
    notes.append(
        f"no trained predictor was stored: trained one now on {info['n_runs']} runs over "
        f"{len(info['datasets'])} datasets (`advisor predictor evaluate` scores it)"
    )
    return _Predictor(est, {"name": PREDICTOR_NAME, "n_runs": info["n_runs"], "training_hash": info["training_hash"],
                            "trained_now": True})


def _rank_predicted(req: RecommendRequest, est: Any, case: Mapping[str, Any], methods: Sequence[str],
                    configs: Mapping[str, Mapping[str, Any]], evidence: HistoryEvidence,
                    warnings: list[str], notes: list[str]) -> _Ranking:
    """Rank by the predictor, saying which of its signals the pair lacks or it does not use."""
    signals = case["signals"]
    missing, unused = est.signal_drift(signals)
    if missing and len(missing) == len(est.schema.signals):
        raise PredictorError(
            f"predictor {PREDICTOR_NAME!r} was trained on signals {', '.join(missing)}, none of which the pair has; "
            "run `advisor predictor train`"
        )
    if missing:
        warnings.append(f"signals the predictor uses are missing for this pair (treated as missing): {', '.join(missing)}")
    if unused:
        notes.append(f"signals not used by the predictor (retrain to use them): {', '.join(unused)}")
    if est.spaces.get("id_gain") in ("headroom", "anchor", "anchor-offset") and "zero_shot_acc" not in signals:
        warnings.append("the pair has no zero_shot_acc signal: the ID gain (learned as a share of the headroom "
                        "above zero-shot) cannot be predicted")
    flags = est.flags([case])[0]
    if case["model_desc"].get("random_weights"):
        flags.append(("weights", "randomly initialised weights"))
    advice = _predict_methods(est, methods, case, [kind for kind, _ in flags], configs)
    ranked, best = choose(advice, req.objective, max_forgetting=req.max_forgetting, budget=req.budget)
    tied, tie_reason = ties(ranked, objective_noise(evidence.seed_noise(), req.objective))
    winner = cheapest(tied).method if len(tied) > 1 else best
    return _Ranking(ranked, winner, "predictor", flags, est.interval, tied, tie_reason)


def _rank_cold_start(req: RecommendRequest, case: Mapping[str, Any], methods: Sequence[str],
                     families: Mapping[str, str], evidence: HistoryEvidence, notes: list[str]) -> _Ranking:
    """Rank without a predictor: the anchor and per-method priors, else the IIMM heuristic."""
    from .predictor import HistorySupport

    signals, rows = case["signals"], evidence.rows
    prior = anchor_prior_ranking(signals, rows, methods, req.shots, signals.get("zero_shot_acc"))
    if prior is not None:
        (advice, note), source = prior, "anchor-prior"
    else:
        (advice, note), source = heuristic_ranking(signals, rows, methods, req.objective, families), "iimm-heuristic"
    notes.append(note)
    if req.budget is not None:
        notes.append("--budget ignored: the cold-start answer has no cost model")
    ranked, winner = choose_heuristic(advice, req.objective, req.max_forgetting)
    notes.append(f"fell back to the {'anchor and per-method priors' if prior is not None else 'IIMM heuristic'}; "
                 "record runs with `advisor run` and `advisor predictor train`")
    flags = HistorySupport.from_rows(rows).flags(case) if rows else []
    return _Ranking(ranked, winner, source, flags)


def _decide(req: RecommendRequest, pair: Any, ranking: _Ranking, summary: dict[str, Any], warnings: list[str],
            notes: list[str], pinfo: dict[str, Any], device_kind: str,
            configs: Mapping[str, Mapping[str, Any]]) -> Recommendation:
    """The decision (keep zero-shot or not, the sentence, the run to measure it) as a Recommendation."""
    ranked, winner, tied, objective = ranking.ranked, ranking.winner, ranking.tied, req.objective
    keep = keeps_zero_shot(ranked, winner, objective, tied)
    sentence = winner_sentence(ranked, winner, objective, ranking.source, tied, ranking.tie_reason, ranking.interval)
    run_method = (None if keep else winner) or next((a.method for a in ranked if a.eligible), None)
    model_desc, signals = pair.model_desc, pair.signals
    return Recommendation(
        model=req.model.name if req.embeddings is None else str(model_desc.get("name")),
        dataset=str(pair.dataset_desc.get("name")),
        objective=objective,
        shots=req.shots,
        winner=None if keep else winner,
        sentence=sentence,
        source=ranking.source,
        methods=ranked,
        signals=dict(sorted(signals.items())),
        signals_source=pair.source,
        support=summary,
        warnings=warnings,
        notes=notes,
        predictor=pinfo,
        max_forgetting=req.max_forgetting,
        budget=req.budget,
        out_of_support=[text for _, text in ranking.flags],
        tied=[a.method for a in tied] if len(tied) > 1 else [],
        interval=ranking.interval,
        random_weights=bool(model_desc.get("random_weights")),
        device=device_kind,
        keep_zero_shot=keep,
        run_method=run_method,
        run_hparams=run_overrides(run_method, configs.get(run_method, {}), req.shots) if run_method else {},
        anchors=pair_anchors(signals, req.shots),
    )


def pair_anchors(signals: Mapping[str, float], shots: int | None) -> dict[str, float]:
    """The pair's anchors at ``shots`` (interpolated between the measured shot counts)."""
    from .predictor.anchors import anchor_at

    names = {"probe": "anchor_probe", "probe_sd": "anchor_probe_sd", "prototype": "anchor_proto",
             "knn": "anchor_knn", "zero_shot": "anchor_zs"}
    out = {k: anchor_at(signals, v, shots) for k, v in names.items()}
    return {k: round(float(v), 4) for k, v in out.items() if math.isfinite(v)}


def _feature_label(name: str, case: Mapping[str, Any]) -> str:
    """``sig:iimm`` -> ``iimm``; categorical features with their value (``method=lora``)."""
    from .predictor import CATEGORICAL, core_values, pretty_feature

    if name in CATEGORICAL:
        return f"{name}={core_values(case).get(name)}"
    return pretty_feature(name)


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _predict_methods(est: Any, methods: Sequence[str], case: Mapping[str, Any],
                     flag_kinds: Sequence[str], configs: Mapping[str, Mapping[str, Any]] | None = None) -> list[MethodAdvice]:
    """Predictions with intervals (widened once per kind of out-of-support input) and the top
    contributions with their base value, for every method; each for the configuration of
    ``configs`` (the history's, ``history_configs``) where it names the epochs."""
    from .predictor import TARGETS

    support = est.support
    family = str((case.get("model_desc") or {}).get("family") or "")
    cases = []
    for m in methods:
        c = dict(case, method=m)
        if support is not None:
            epochs = (configs or {}).get(m, {}).get("epochs")
            c["hparams"] = {"epochs": epochs if isinstance(epochs, (int, float)) and not isinstance(epochs, bool)
                            else support.epochs_for(m, case.get("shots"))}
            c["trainable_params"] = support.trainable_for(m, family, (case.get("model_desc") or {}).get("params"))
        cases.append(c)
    X = est.rows_matrix(cases)
    extra = [k for k in flag_kinds if k == "weights"]
    widen = np.array([support.widening(c, extra) if support is not None else 1.0 for c in cases])
    mean, lo, hi = est.predict_interval(X, widen=widen)
    from .predictor.spaces import contributions_to_targets, to_targets

    mean_t, lo_t, hi_t = (to_targets(v, cases, est.spaces) for v in (mean, lo, hi))
    g = TARGETS.index("id_gain")
    contrib = est.predict_contrib(X, targets=[g])[:, g, :]
    contrib = contributions_to_targets(contrib, contrib.sum(axis=1), cases, est.spaces, "id_gain")
    known = set(est.schema.categories.get("method", []))
    ti = {t: i for i, t in enumerate(TARGETS)}
    names = est.feature_names
    out = []
    for k, m in enumerate(methods):
        a = MethodAdvice(method=m)
        if m not in known:
            a.eligible, a.excluded = False, "no runs of this method in the history the predictor was trained on"
            out.append(a)
            continue
        o, c = ti["ood_change"], ti["cost"]
        a.id_gain, a.id_gain_lo, a.id_gain_hi = _finite(mean_t[k, g]), _finite(lo_t[k, g]), _finite(hi_t[k, g])
        a.ood_change, a.ood_change_lo, a.ood_change_hi = _finite(mean_t[k, o]), _finite(lo_t[k, o]), _finite(hi_t[k, o])
        if math.isfinite(mean_t[k, c]):
            a.cost_s, a.cost_s_lo, a.cost_s_hi = (float(np.exp(mean_t[k, c])), float(np.exp(lo_t[k, c])),
                                                  float(np.exp(hi_t[k, c])))
        a.cost_extrapolated = "device" in flag_kinds
        row = contrib[k, :-1]
        if np.isfinite(row).any() and a.id_gain is not None:
            order = np.argsort(-np.abs(np.nan_to_num(row)), kind="stable")[:TOP_CONTRIBUTIONS]
            shown = [j for j in order if row[j] != 0]
            a.contributions = [(_feature_label(names[j], cases[k]), float(row[j])) for j in shown]
            a.contribution_base = float(contrib[k, -1])
            a.contribution_other = float(np.nansum(row) - sum(row[j] for j in shown))
        out.append(a)
    return out
