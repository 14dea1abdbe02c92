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
    #: The candidate models (``--model`` given several times), in the order asked.
    models: list[str] = field(default_factory=list)
    #: ``--model/--pretrained/--image-size`` of the model ``run_command`` trains.
    run_model_args: list[str] = field(default_factory=list)
    #: The same arguments for every candidate model, by its label in ``models``.
    model_args: dict[str, list[str]] = field(default_factory=dict)
    #: The ranking's names (``MethodAdvice.key``: ``method``, or ``model + method`` when models
    #: are compared) of the winner and of what ``run_command`` trains.
    winner_key: str | None = None
    run_key: str | None = None
    #: What more labels buy: the recommended configuration predicted at each shot count the
    #: history covers (ID gain, OOD change, cost with intervals, and the anchor there).
    shots_curve: list[dict[str, Any]] = field(default_factory=list)
    #: Probe runs (``--probe``): each candidate's first epochs on the pair, what they cost and
    #: measured (``advisor.probe.ProbeResult.to_dict``).
    probes: list[dict[str, Any]] = field(default_factory=list)

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
        if model_args is None:
            model_args = self.run_model_args or ["--model", self.model]
        model_args = list(model_args)
        args = ["advisor", "run", *model_args, "--dataset", dataset or self.dataset, "--method", self.run_method]
        if self.shots is not None:
            args += ["--shots", str(self.shots)]
        for k, v in self.run_hparams.items():
            args += ["--hparam", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
        return " ".join(shlex.quote(a) for a in args)

    def advice(self, key: str | None) -> MethodAdvice | None:
        """The ranked advice named ``key`` (``MethodAdvice.key``)."""
        return next((a for a in self.methods if a.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_command"] = self.run_command()
        d["anchor_sentence"] = self.anchor_sentence()
        for m, a in zip(d["methods"], self.methods):
            m["contributions"] = [{"feature": f, "value": v} for f, v in m["contributions"]]
            m["key"] = a.key
        return d

    def to_dataframe(self) -> Any:
        """One row per ranked (model,) method, the columns of ``MethodAdvice`` and its ``key``
        (the index: ``method``, or ``model + method`` when models are compared); needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise AdvisorError("to_dataframe() needs pandas: pip install pandas") from None
        rows = []
        for a in self.methods:
            row = asdict(a)
            row["contributions"] = ", ".join(f"{f} {v:+.3f}" for f, v in a.contributions)
            row["similar_runs"] = "; ".join(a.similar_runs)
            row["key"] = a.key
            rows.append(row)
        return pd.DataFrame(rows).set_index("key")


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
    other_models: Sequence[ModelSpec | str] = (),
    hparams: Mapping[str, Any] | Sequence[str] = (),
    probe: int | None = None,
    probe_budget: float | None = None,
) -> Recommendation:
    """Rank the registered fine-tuning methods for the pair (see the module docstring).

    ``max_forgetting`` is in accuracy units (0.02 = 2 points of mean OOD accuracy) and
    ``budget`` in seconds of training wall time. ``embeddings`` (a ``.npz`` with ``image``,
    ``text``, ``labels``) replaces loading the model and dataset: signals come from the file.
    Signals always use seed 0, as the history's runs do, so they are comparable.
    ``other_models`` are more candidate models ranked on the same scale; ``hparams`` pins
    hyper-parameters (``{"lr": 1e-3}`` or ``["lora:lr=1e-3"]``); ``probe`` runs each
    candidate's first epochs on the pair first (``probe_budget`` seconds in all).
    """
    return recommend_request(RecommendRequest.build(
        model_spec, dataset_spec, db=db, objective=objective, max_forgetting=max_forgetting, budget=budget,
        shots=shots, device=device, max_images=max_images, quiet=quiet, embeddings=embeddings,
        allow_random_weights=allow_random_weights, other_models=other_models, hparams=hparams, probe=probe,
        probe_budget=probe_budget))


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
    probes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Candidate:
    """One candidate model's prepared pair and the case the predictor is asked about."""

    spec: ModelSpec
    pair: Any
    case: dict[str, Any]
    summary: dict[str, Any]
    label: str | None  # the model's name in the ranking; None when one model is ranked
    session: Any = None  # the recommend's Session: what measuring the pair loaded, the probes reuse


def recommend_request(req: RecommendRequest) -> Recommendation:
    """``recommend`` for a checked request: prepare each candidate model's pair, load or train
    the predictor, search each method's configurations, rank (model, method, configuration)
    together, decide, and say what more labels would buy."""
    from .history import open_reader
    from .predictor.support import bounded_view
    from .session import Session

    pins = check_pins(req.hparams)  # before any model, dataset or history is opened
    history = open_reader(req.db, must_exist=True)  # plain sqlite3 for the reads of a cached pair; writes go to the full History
    view = bounded_view(history, PREDICTOR_NAME)  # a stored predictor with its history summary: no run read in full
    evidence = HistoryEvidence(history, view, [] if view is not None else history.training_rows())
    several = len(req.models) > 1
    warnings: list[str] = []
    candidates = []
    session = Session()  # one for the whole answer: a model loaded to measure its pair is not loaded again to probe
    for spec in req.models:
        pair = _prepare(req, evidence, spec, session)
        pair_warnings = _pair_warnings(req, pair, spec)
        summary, domain_warnings = evidence.support_for(pair.model_desc, pair.dataset_desc)
        prefix = f"{spec.label()}: " if several else ""
        warnings += [prefix + w for w in domain_warnings + pair_warnings]
        case = {"shots": req.shots, "signals": dict(pair.signals), "model_desc": dict(pair.model_desc),
                "dataset_desc": dict(pair.dataset_desc), "model": pair.model_desc.get("name")}
        candidates.append(_Candidate(spec, pair, case, summary, spec.label() if several else None, session))
    notes: list[str] = []
    predictor = _load_or_train(evidence, notes)
    methods, families = registered_methods(predictor.est.schema.categories.get("method", [])
                                           if predictor.est is not None else ())
    device_kind = req.device_kind or _default_device_kind(evidence.device_rows())
    for c in candidates:
        c.case["device"] = device_kind
    if predictor.est is not None:
        space = config_space(methods, evidence.config_candidates(methods, req.shots), predictor.est.support, pins)
        ranking = _rank_predicted(req, predictor.est, candidates, methods, space, evidence, warnings, notes)
    else:
        if several:
            notes.append(f"cold start: only the first model ({candidates[0].spec.label()}) is ranked; comparing "
                         "models needs a trained predictor")
        ranking = _rank_cold_start(req, candidates[0].case, methods, families, evidence, notes)
        configs = evidence.history_configs(methods, req.shots)
        for a in ranking.ranked:
            a.hparams = apply_pins(a.method, configs.get(a.method, {}), pins)
    if req.probe is not None:
        if predictor.est is None:
            notes.append("--probe needs a trained predictor (cold start): no probe was run")
        else:
            ranking = _apply_probes(req, evidence, candidates, ranking, warnings, notes)
    by_label = {c.label: c for c in candidates}
    similar = {c.label: evidence.similar_runs(c.case, methods) for c in candidates}
    for a in ranking.ranked:
        a.similar_runs = similar.get(a.model, {}).get(a.method, [])
        a.support_runs = len(a.similar_runs)
    rec, run = _decide(req, ranking, warnings, notes, predictor.info, device_kind, by_label)
    rec.probes = ranking.probes
    if predictor.est is not None and run is not None and run.id_gain is not None:
        rec.shots_curve = shots_curve(predictor.est, by_label[run.model].case, run, evidence.shot_counts(run.method))
    return rec


def _prepare(req: RecommendRequest, evidence: HistoryEvidence, spec: ModelSpec, session: Any = None) -> Any:
    """The pair's descriptors and signals: from the embeddings file, else from the history or
    measured now and stored (seed 0 and the default sample, as the history's runs, so they compare)."""
    if req.embeddings is not None:
        dname = req.dataset.name if req.dataset is not None else None
        pair = pair_from_embeddings(req.embeddings, spec.name or None, dname, evidence.rows, evidence.history)
        what = f"from {req.embeddings}"
    else:
        if req.dataset is None:
            raise RecommendError("give a dataset (or embeddings=FILE.npz)")
        pair = prepare_pair(spec, req.dataset, history=evidence.history, rows=evidence.rows, lookup=True,
                            store=True, device=req.device, max_images=req.max_images, quiet=req.quiet,
                            allow_random_weights=req.allow_random_weights, session=session)
        what = "for the pair" if len(req.models) == 1 else f"for {spec.label()}"
    if not pair.signals:
        errors = "; ".join(f"{k}: {v}" for k, v in (getattr(pair.signal_set, "errors", None) or {}).items())
        raise PredictorError(f"no signal could be computed {what} ({errors or 'no metric applies'})")
    return pair


def _pair_warnings(req: RecommendRequest, pair: Any, spec: ModelSpec) -> list[str]:
    """Warnings about the pair itself: more shots than a class has, random weights."""
    from .data import shots_shortfall

    warnings: list[str] = []
    shortfall = shots_shortfall(pair.dataset_desc, req.shots)  # more shots than the smallest class has
    if shortfall:
        warnings.append(shortfall)
    if pair.model_desc.get("random_weights"):
        warnings.append(f"model {spec.name!r} has randomly initialised weights (--allow-random-weights): "
                        "its signals describe the initialisation, and no run in the history resembles it")
    return warnings


# ------------------------------------------------------------------------------------------
# Configurations: what each method is searched over
# ------------------------------------------------------------------------------------------

#: Points of a declared search range (log-spaced for positive ranges), ends included.
SEARCH_POINTS = 5


def _grid(lo: float, hi: float, n: int = SEARCH_POINTS) -> list[float]:
    """``n`` values from ``lo`` to ``hi`` (log-spaced when both are positive), 3 significant
    digits; one value when the range is a point."""
    if lo == hi:
        return [lo]
    if lo > 0:
        values = np.exp(np.linspace(math.log(lo), math.log(hi), n))
    else:
        values = np.linspace(lo, hi, n)
    return [float(f"{v:.3g}") for v in values]


def check_pins(pins: Sequence[tuple[str | None, str, Any]]) -> list[tuple[str | None, str, Any]]:
    """``--hparam`` pins checked against the tuners' declared hyper-parameters: an unknown
    method, or a name no tuner (or not that method's) declares, or a bad value, is one line.
    Returns them with their values parsed to the declared types."""
    from .plugins import get_tuners

    out = []
    tuners = get_tuners()
    for method, name, value in pins:
        if method is not None and method not in tuners:
            raise RecommendError(f"--hparam {method}:{name}: no tuner named {method!r} (known: {', '.join(sorted(tuners))})")
        owners = [tuners[method]] if method is not None else list(tuners.values())
        specs = [t.hparam_specs()[name] for t in owners if name in t.hparam_specs()]
        if not specs:
            raise RecommendError(f"--hparam {name}: no {'tuner' if method is None else method} declares {name!r}")
        try:
            out.append((method, name, specs[0].parse(value)))
        except ValueError as exc:
            raise RecommendError(f"--hparam {name}: {exc}") from None
    return out


def apply_pins(method: str, config: Mapping[str, Any], pins: Sequence[tuple[str | None, str, Any]]) -> dict[str, Any]:
    """``config`` with the ``--hparam`` pins that apply to ``method`` (its own, and the
    method-less ones its tuner declares)."""
    from .plugins import get_tuners

    tuner = get_tuners().get(method)
    declared = tuner.hparam_specs() if tuner is not None else {}
    out = dict(config)
    for pin_method, name, value in pins:
        if pin_method == method or (pin_method is None and name in declared):
            out[name] = value
    return out


def config_space(methods: Sequence[str], seen: Mapping[str, Sequence[Mapping[str, Any]]], support: Any,
                 pins: Sequence[tuple[str | None, str, Any]] = ()) -> dict[str, list[dict[str, Any]]]:
    """Per method, the configurations ``recommend`` compares: every configuration the history
    ran it with at these shots, and the tuner's declared ``search`` ranges (``Tuner.search``)
    sampled on the most used one, limited to the values the method's runs span (a range the
    history never tried is not searched: it would be guessed, not predicted). ``--hparam``
    pins then replace their hyper-parameter in every configuration; a pinned value outside the
    history's support is kept and flagged by the predictor's support (``config_flags``)."""
    import json

    from .plugins import get_tuners

    tuners = get_tuners()
    out: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        configs = [dict(c) for c in seen.get(m) or []]
        if not configs:
            configs = [{}]
        ranges = (getattr(support, "method_hparam_ranges", None) or {}).get(m, {})
        declared = getattr(tuners.get(m), "search", None) or {}
        for name, (lo, hi) in declared.items():
            span = ranges.get(name)
            if span is None or name not in configs[0]:
                continue
            a, b = max(float(lo), span[0]), min(float(hi), span[1])
            if a <= b:
                configs += [dict(configs[0], **{name: v}) for v in _grid(a, b)]
        unique: dict[str, dict[str, Any]] = {}
        for c in configs:
            c = apply_pins(m, c, pins)
            unique.setdefault(json.dumps(c, sort_keys=True, default=str), c)
        out[m] = list(unique.values())
    return out


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


def _rank_predicted(req: RecommendRequest, est: Any, candidates: Sequence[_Candidate], methods: Sequence[str],
                    space: Mapping[str, Sequence[Mapping[str, Any]]], evidence: HistoryEvidence,
                    warnings: list[str], notes: list[str]) -> _Ranking:
    """Rank every (model, method, configuration) by the predictor on one scale, keep each
    (model, method)'s best configuration, and say which of its signals a pair lacks or it
    does not use."""
    advice: list[MethodAdvice] = []
    flags: list[tuple[str, str]] = []
    for cand in candidates:
        prefix = f"{cand.label}: " if cand.label else ""
        _check_signals(est, cand.case["signals"], prefix, warnings, notes)
        case_flags = est.flags([cand.case])[0]
        if cand.case["model_desc"].get("random_weights"):
            case_flags.append(("weights", "randomly initialised weights"))
        flags += [(kind, prefix + text) for kind, text in case_flags]
        pairs = [(m, dict(c)) for m in methods for c in space.get(m) or [{}]]
        for a in _predict_configs(est, pairs, cand.case, [kind for kind, _ in case_flags]):
            a.model = cand.label
            advice.append(a)
    every, _ = choose(advice, req.objective, max_forgetting=req.max_forgetting, budget=req.budget)
    ranked = best_configurations(every)
    return _settled(req, evidence, ranked, flags, est.interval)


def _settled(req: RecommendRequest, evidence: HistoryEvidence, ranked: list[MethodAdvice],
             flags: list[tuple[str, str]], interval: float, probes: list[dict[str, Any]] | None = None) -> _Ranking:
    """The predictor's ranking with its winner: the best eligible one, or the cheapest of those
    that cannot be told apart from it (intervals, or the history's seed-to-seed spread)."""
    best = ranked[0].key if ranked and ranked[0].eligible else None
    tied, tie_reason = ties(ranked, objective_noise(evidence.seed_noise(), req.objective))
    winner = cheapest(tied).key if len(tied) > 1 else best
    return _Ranking(ranked, winner, "predictor", flags, interval, tied, tie_reason, probes or [])


def _check_signals(est: Any, signals: Mapping[str, float], prefix: str, warnings: list[str], notes: list[str]) -> None:
    """Warn about the predictor's signals a pair lacks (refuse when it has none of them)."""
    missing, unused = est.signal_drift(signals)
    if missing and len(missing) == len(est.schema.signals):
        raise PredictorError(
            f"{prefix}predictor {PREDICTOR_NAME!r} was trained on signals {', '.join(missing)}, none of which the pair "
            "has; run `advisor predictor train`"
        )
    if missing:
        warnings.append(f"{prefix}signals the predictor uses are missing for this pair (treated as missing): "
                        f"{', '.join(missing)}")
    if unused:
        notes.append(f"{prefix}signals not used by the predictor (retrain to use them): {', '.join(unused)}")
    if est.spaces.get("id_gain") in ("headroom", "anchor", "anchor-offset") and "zero_shot_acc" not in signals:
        warnings.append(f"{prefix}the pair has no zero_shot_acc signal: the ID gain (learned as a share of the "
                        "headroom above zero-shot) cannot be predicted")


def _apply_probes(req: RecommendRequest, evidence: HistoryEvidence, candidates: Sequence[_Candidate],
                  ranking: _Ranking, warnings: list[str], notes: list[str]) -> _Ranking:
    """Run each eligible (model, method)'s best configuration for its first ``req.probe``
    epochs on the pair (``advisor.probe``), predict it again from the probe's partial curve with
    the probe predictor (``probe-K``), take the measured outcome of a method whose whole run fit
    the budget, and rank again; the notes say what the probes cost and what they changed."""
    from .predictor.training import load_or_train_probe_predictor

    probed = [a for a in ranking.ranked if a.eligible and a.id_gain is not None]
    if not probed:
        notes.append("--probe: no eligible method to probe")
        return ranking
    try:
        est, note = load_or_train_probe_predictor(evidence.history, int(req.probe))
    except PredictorError as exc:  # no run of the history has a curve to learn from
        est, note = None, None
        warnings.append(f"the probes' curves cannot feed a prediction ({exc}); only whole runs that fit the "
                        "budget are used (measured)")
    if note:
        notes.append(note)
    before = [a.key for a in ranking.ranked if a.eligible]
    results = _run_probes(req, evidence, candidates, probed, notes)
    for a, r, cand in results:
        _take_probe(est, a, r, cand, int(req.probe), warnings)
    ranked, _ = choose(ranking.ranked, req.objective, max_forgetting=req.max_forgetting, budget=req.budget)
    settled = _settled(req, evidence, ranked, ranking.flags, ranking.interval,
                       [dict(r.to_dict(), key=a.key) for a, r, _ in results])
    notes += _probe_notes(req, results, before, ranked, next((a for a in ranked if a.key == settled.winner), probed[0]))
    return settled


def _run_probes(req: RecommendRequest, evidence: HistoryEvidence, candidates: Sequence[_Candidate],
                probed: Sequence[MethodAdvice], notes: list[str]) -> list[tuple[MethodAdvice, Any, _Candidate]]:
    """(advice, its ``ProbeResult``, its candidate) per probed method: each model's methods in
    one ``run_probes`` (the pair prepared once), the budget shared in proportion to the methods
    still to probe."""
    from .probe import run_probes

    results: list[tuple[MethodAdvice, Any, _Candidate]] = []
    spent = 0.0
    for i, cand in enumerate(candidates):
        mine = [a for a in probed if a.model == cand.label]
        if not mine:
            continue
        later = {c.label for c in candidates[i:]}
        share = None if req.probe_budget is None else max(req.probe_budget - spent, 0.0) * len(mine) / sum(
            1 for a in probed if a.model in later)
        if share is not None and share <= 0:
            notes.append(f"--probe: the budget was spent before {cand.spec.label()}'s methods were probed")
            continue
        configs = {a.method: run_overrides(a.method, a.hparams, req.shots) for a in mine}  # as `run_command` runs it
        out = run_probes(cand.spec, req.dataset, configs, epochs=int(req.probe), budget_s=share,
                         shots=req.shots, device=req.device, quiet=req.quiet, history=evidence.history,
                         session=cand.session)
        spent += sum(r.cost_s + r.setup_s for r in out)
        results += [(a, r, cand) for a, r in zip(mine, out)]
    return results


def _take_probe(est: Any, a: MethodAdvice, r: Any, cand: _Candidate, epochs: int, warnings: list[str]) -> None:
    """Update ``a`` from its probe: the measured outcome of a whole run, else the probe
    predictor's prediction from the partial curve (``est`` None: left as it was). A probe the
    budget stopped before its ``epochs`` has no point where the probe predictor reads one, so
    the prediction stays the static one (and a warning says so)."""
    if r.error:
        warnings.append(f"probe of {a.key} failed: {r.error}")
        return
    if r.measured and r.id_gain is not None:
        a.basis = "measured"
        a.id_gain = a.id_gain_lo = a.id_gain_hi = float(r.id_gain)
        if r.ood_change is not None:
            a.ood_change = a.ood_change_lo = a.ood_change_hi = float(r.ood_change)
        if r.train_s is not None:
            a.cost_s = a.cost_s_lo = a.cost_s_hi = float(r.train_s)
        a.contributions, a.contribution_base, a.contribution_other = [], None, None
        return
    if not r.curve or est is None:
        return
    if r.epochs_run < epochs:
        warnings.append(f"probe of {a.key} stopped by its budget after {r.epochs_run} of {epochs} epoch(s): "
                        "its prediction stays the one without a probe")
        return
    kinds = [kind for kind, _ in est.flags([cand.case])[0]]
    (new,) = _predict_configs(est, [(a.method, a.hparams)], dict(cand.case, curve=r.curve), kinds)
    for name in ("id_gain", "id_gain_lo", "id_gain_hi", "ood_change", "ood_change_lo", "ood_change_hi",
                 "contributions", "contribution_base", "contribution_other"):
        setattr(a, name, getattr(new, name))
    a.basis = "probed"


def _probe_notes(req: RecommendRequest, results: Sequence[tuple[MethodAdvice, Any, _Candidate]],
                 before: Sequence[str], ranked: Sequence[MethodAdvice], top: MethodAdvice) -> list[str]:
    """What the probes cost (against the predicted training time of the recommended one) and
    whether they changed the ranking."""
    after = [a.key for a in ranked if a.eligible]
    cost = sum(r.cost_s + r.setup_s for _, r, _ in results)
    share = f" ({cost / top.cost_s:.0%} of the predicted training time of {top.key})" if top.cost_s else ""
    measured = [a.key for a, _, _ in results if a.basis == "measured"]
    budget = f", within a budget of {req.probe_budget:.0f} s" if req.probe_budget is not None else ""
    return [f"probes: {len(results)} of {req.probe} epoch(s) each took {cost:.0f} s in all{share}{budget}"
            + (f"; measured whole: {', '.join(measured)}" if measured else ""),
            "the probes changed nothing in the ranking" if list(before) == after else
            f"the probes changed the ranking: before {' > '.join(before[:4])}; after {' > '.join(after[:4])}"]


def best_configurations(ranked: Sequence[MethodAdvice]) -> list[MethodAdvice]:
    """From advice ranked over every configuration, the best one per (model, method), ranked
    again from 1; the others become its ``alternatives`` (best first)."""
    best: dict[str, MethodAdvice] = {}
    for a in ranked:
        first = best.setdefault(a.key, a)
        first.configurations_searched += 1
        if first is not a:
            first.alternatives.append({"hparams": a.hparams, "id_gain": a.id_gain, "ood_change": a.ood_change,
                                       "cost_s": a.cost_s, "score": a.score, "eligible": a.eligible,
                                       "out_of_support": a.out_of_support})
    out = list(best.values())
    for i, a in enumerate(out, 1):
        a.rank = i
    return out


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


def _decide(req: RecommendRequest, ranking: _Ranking, warnings: list[str], notes: list[str], pinfo: dict[str, Any],
            device_kind: str, candidates: Mapping[str | None, _Candidate]) -> tuple[Recommendation, MethodAdvice | None]:
    """The decision (keep zero-shot or not, the sentence, the run to measure it) as a
    Recommendation, and the advice whose configuration ``run_command`` trains."""
    ranked, winner, tied, objective = ranking.ranked, ranking.winner, ranking.tied, req.objective
    keep = keeps_zero_shot(ranked, winner, objective, tied)
    sentence = winner_sentence(ranked, winner, objective, ranking.source, tied, ranking.tie_reason, ranking.interval)
    run_key = (None if keep else winner) or next((a.key for a in ranked if a.eligible), None)
    run = next((a for a in ranked if a.key == run_key), None)
    cand = candidates.get(run.model if run is not None else None) or next(iter(candidates.values()))
    pair, spec = cand.pair, cand.spec
    model_desc, signals = pair.model_desc, pair.signals
    win = next((a for a in ranked if a.key == winner), None) if winner is not None and not keep else None
    return Recommendation(
        model=spec.name if req.embeddings is None else str(model_desc.get("name")),
        dataset=str(pair.dataset_desc.get("name")),
        objective=objective,
        shots=req.shots,
        winner=win.method if win is not None else None,
        sentence=sentence,
        source=ranking.source,
        methods=ranked,
        signals=dict(sorted(signals.items())),
        signals_source=pair.source,
        support=cand.summary,
        warnings=warnings,
        notes=notes,
        predictor=pinfo,
        max_forgetting=req.max_forgetting,
        budget=req.budget,
        out_of_support=[text for _, text in ranking.flags],
        tied=[a.key for a in tied] if len(tied) > 1 else [],
        interval=ranking.interval,
        random_weights=bool(model_desc.get("random_weights")),
        device=device_kind,
        keep_zero_shot=keep,
        run_method=run.method if run is not None else None,
        run_hparams=run_overrides(run.method, run.hparams, req.shots) if run is not None else {},
        anchors=pair_anchors(signals, req.shots),
        models=[c.spec.label() for c in candidates.values()],
        model_args={c.spec.label(): c.spec.cli_args() for c in candidates.values()} if req.embeddings is None else {},
        winner_key=win.key if win is not None else None,
        run_key=run.key if run is not None else None,
        run_model_args=spec.cli_args() if req.embeddings is None else [],
    ), run


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


def _predict_configs(est: Any, configs: Sequence[tuple[str, Mapping[str, Any]]], case: Mapping[str, Any],
                     flag_kinds: Sequence[str]) -> list[MethodAdvice]:
    """Predictions with intervals (widened once per kind of out-of-support input, a
    configuration the history never ran included) and the top contributions with their base
    value, for every (method, configuration); epochs not in a configuration are the ones the
    method's runs used at these shots."""
    from .predictor import TARGETS

    support = est.support
    family = str((case.get("model_desc") or {}).get("family") or "")
    cases = []
    for m, hp in configs:
        c = dict(case, method=m)
        hp = dict(hp)
        epochs = hp.get("epochs")
        if support is not None and not (isinstance(epochs, (int, float)) and not isinstance(epochs, bool)):
            hp["epochs"] = support.epochs_for(m, case.get("shots"))
        c["hparams"] = hp
        if support is not None:
            c["trainable_params"] = support.trainable_for(m, family, (case.get("model_desc") or {}).get("params"))
        cases.append(c)
    if not cases:
        return []
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
    for k, (m, hp) in enumerate(configs):
        a = MethodAdvice(method=m, hparams=dict(cases[k]["hparams"]))
        if m not in known:
            a.eligible, a.excluded = False, "no runs of this method in the history the predictor was trained on"
            out.append(a)
            continue
        if support is not None:
            a.out_of_support = [text for _, text in support.config_flags(cases[k])]
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


def shots_curve(est: Any, case: Mapping[str, Any], advice: MethodAdvice, shots: Sequence[int]) -> list[dict[str, Any]]:
    """What more labels buy: ``advice``'s configuration predicted at each shot count the
    history ran its method at (the case's own shots too), with intervals and the anchor (the
    frozen features' linear-probe accuracy) interpolated there."""
    from .predictor.anchors import anchor_at

    counts = sorted({int(s) for s in shots} | ({int(case["shots"])} if case.get("shots") is not None else set()))
    out = []
    for s in counts:
        c = dict(case, shots=s)
        (a,) = _predict_configs(est, [(advice.method, advice.hparams)], c, [])
        probe = anchor_at(case.get("signals") or {}, "anchor_probe", s)
        out.append({"shots": s, "id_gain": a.id_gain, "id_gain_lo": a.id_gain_lo, "id_gain_hi": a.id_gain_hi,
                    "ood_change": a.ood_change, "ood_change_lo": a.ood_change_lo, "ood_change_hi": a.ood_change_hi,
                    "cost_s": a.cost_s, "cost_s_lo": a.cost_s_lo, "cost_s_hi": a.cost_s_hi,
                    "anchor_probe": round(float(probe), 4) if math.isfinite(probe) else None,
                    "out_of_support": a.out_of_support})
    return out
