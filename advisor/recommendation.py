"""``advisor recommend``: rank the fine-tuning methods for one (model, dataset) pair, explained.

1. The pair's signals come from the history when it has them (``latest_signals``); otherwise
   they are computed once (``compute_signals``, same protocol as ``advisor run``) and stored.
2. The predictor stored in the history (``default``) predicts, per registered method, the
   in-domain gain, the OOD change (negative = forgetting) and the cost, each with an 80 %
   interval, plus the features that pushed the gain prediction most (SHAP contributions).
3. The objective picks the winner: ``gain`` (largest ID gain), ``balanced`` (ID gain + OOD
   change, i.e. forgetting costs as much as gain is worth) or ``retain`` (least forgetting among
   methods predicted to gain). ``max_forgetting`` and ``budget`` drop methods first.

Cold start: with no stored predictor, one is trained if the history has at least
``MIN_RUNS`` runs over ``MIN_DATASETS`` datasets; otherwise the ranking falls back to the
IIMM heuristic (see ``heuristic_ranking``) and the recommendation says so.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import AdvisorError, PredictorError
from .specs import DatasetSpec, ModelSpec

OBJECTIVES = ("gain", "balanced", "retain")
PREDICTOR_NAME = "default"
#: The IIMM heuristic needs this many pairs with an IIMM value to call a value "high" or "low".
MIN_REFERENCE_PAIRS = 3
#: How many contributing features to show per method.
TOP_CONTRIBUTIONS = 3


class RecommendError(AdvisorError):
    """Bad recommend arguments (objective, constraints, shots)."""


@dataclass
class MethodAdvice:
    """One method's prediction. Gains and OOD changes are accuracy differences (0.05 = 5 points);
    ``cost_s`` is predicted training wall time in seconds."""

    method: str
    id_gain: float | None = None
    id_gain_lo: float | None = None
    id_gain_hi: float | None = None
    ood_change: float | None = None
    ood_change_lo: float | None = None
    ood_change_hi: float | None = None
    cost_s: float | None = None
    cost_s_lo: float | None = None
    cost_s_hi: float | None = None
    score: float | None = None
    rank: int | None = None
    eligible: bool = True
    excluded: str | None = None
    contributions: list[tuple[str, float]] = field(default_factory=list)
    support_runs: int = 0  # runs of this method on similar pairs (same model family or shared domain)


@dataclass
class Recommendation:
    """What ``recommend`` returns; ``to_dict`` is the ``--json`` output."""

    model: str
    dataset: str
    objective: str
    shots: int | None
    winner: str | None
    sentence: str
    source: str  # "predictor" | "iimm-heuristic"
    methods: list[MethodAdvice]
    signals: dict[str, float]
    signals_source: str  # "history" | "computed"
    support: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predictor: dict[str, Any] = field(default_factory=dict)
    max_forgetting: float | None = None
    budget: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for m in d["methods"]:
            m["contributions"] = [{"feature": f, "value": v} for f, v in m["contributions"]]
        return d


# ------------------------------------------------------------------------------------------
# The pair: descriptors and signals
# ------------------------------------------------------------------------------------------


def _as_model_spec(spec: ModelSpec | str) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else ModelSpec(str(spec))


def _as_dataset_spec(spec: DatasetSpec | str) -> DatasetSpec:
    return spec if isinstance(spec, DatasetSpec) else DatasetSpec(str(spec))


def _model_key(desc: Mapping[str, Any]) -> str:
    from .history import model_key

    return model_key(dict(desc))


def _dataset_key(desc: Mapping[str, Any]) -> str:
    from .history import dataset_key

    return dataset_key(dict(desc))


def _known_model_desc(spec: ModelSpec, rows: Sequence[Mapping[str, Any]], history: Any = None) -> dict[str, Any] | None:
    """The model's descriptors from the history, when exactly one recorded model matches the
    spec (name, pretrained and, if given, image size): this avoids loading the weights. Models
    come from the runs, and from ``history.models()`` when the history offers it (models whose
    signals were measured without any run). Without ``--image-size``, a model recorded at
    exactly one resolution is taken at that resolution."""
    descs = [dict(r.get("model_desc") or {}, name=(r.get("model_desc") or {}).get("name") or r.get("model"))
             for r in rows]
    lister = getattr(history, "models", None)
    if callable(lister):
        descs += [dict(d) for d in lister()]
    found: dict[Any, dict[str, Any]] = {}
    for d in descs:
        if d.get("name") != spec.name:
            continue
        if (d.get("pretrained") or None) != (spec.pretrained or None):
            continue
        if spec.image_size is not None and d.get("image_size") != spec.image_size:
            continue
        found[d.get("image_size")] = d
    return next(iter(found.values())) if len(found) == 1 else None


def pair_signals(
    history: Any,
    model_spec: ModelSpec,
    dataset_spec: DatasetSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    device: str | None = None,
    max_images: int | None = None,
    quiet: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], str]:
    """(model_desc, dataset_desc, signals, "history"|"computed") for the pair.

    The dataset is always loaded (its fingerprint decides whether stored signals still apply).
    When the history already describes the model and holds signals for the pair, nothing else
    runs; otherwise the signals are computed with ``advisor run``'s protocol (training split,
    seed 0, embeddings cached on disk) and stored, unless the history turns out to have them
    under the model's real key, which then win.
    """
    from .data import dataset_descriptors, load_dataset
    from .plugins import get_model_source

    get_model_source(model_spec.name)  # unknown model: one line, before any work
    bundle = load_dataset(dataset_spec)
    dataset_desc = dataset_descriptors(bundle)
    model_desc = _known_model_desc(model_spec, rows, history)
    if model_desc is not None:
        stored = history.latest_signals(_model_key(model_desc), _dataset_key(dataset_desc))
        if stored:
            return model_desc, dataset_desc, dict(stored), "history"

    from .config import resolve_device
    from .signals import compute_signals, describe_pair

    device = resolve_device(device)
    kwargs: dict[str, Any] = {"seed": 0, "device": device, "quiet": quiet}
    if max_images is not None:
        kwargs["max_images"] = max_images
    sig = compute_signals(model_spec, dataset_spec, **kwargs)
    model_desc, _ = describe_pair(model_spec, dataset_spec, sig.meta, device)
    stored = history.latest_signals(_model_key(model_desc), _dataset_key(dataset_desc))
    if stored:
        return model_desc, dataset_desc, dict(stored), "history"
    values = {k: float(v) for k, v in sig.values.items()}
    if not values:
        errors = "; ".join(f"{k}: {v}" for k, v in (sig.errors or {}).items())
        raise PredictorError(f"no signal could be computed for the pair ({errors or 'no metric applies'})")
    history.store_signal_set(model_desc, dataset_desc, str(sig.meta.get("split_hash") or ""), values,
                             dict(sig.versions), dict(sig.seconds))
    return model_desc, dataset_desc, values, "computed"


# ------------------------------------------------------------------------------------------
# Support: how much of the history looks like this pair
# ------------------------------------------------------------------------------------------


def _family(desc: Mapping[str, Any]) -> str | None:
    return desc.get("family") or desc.get("architecture") or desc.get("name")


def support_for(
    model_desc: Mapping[str, Any], dataset_desc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """(summary counts, similar runs per method, warnings). A run is *similar* when it used the
    same model family, or a dataset sharing a domain tag (or the same dataset)."""
    from .predictor import row_dataset, row_method

    fam = _family(model_desc)
    tags = set(dataset_desc.get("domain") or [])
    name = dataset_desc.get("name")
    same_family = same_dataset = shared_domain = 0
    per_method: dict[str, int] = {}
    seen_tags: set[str] = set()
    for r in rows:
        rf = _family(dict(r.get("model_desc") or {}) or {"name": r.get("model")})
        rtags = set((r.get("dataset_desc") or {}).get("domain") or [])
        seen_tags |= rtags
        f_ok = rf == fam
        d_same = row_dataset(r) == name
        d_ok = d_same or bool(tags & rtags)
        same_family += f_ok
        same_dataset += d_same
        shared_domain += d_ok
        if f_ok or d_ok:
            per_method[row_method(r)] = per_method.get(row_method(r), 0) + 1
    warnings = []
    if rows and same_family == 0:
        warnings.append(f"model family {fam!r} has no runs in the history: predictions extrapolate from other families")
    if rows and same_dataset == 0 and tags and not (tags & seen_tags):
        warnings.append(
            f"no dataset in the history shares a domain with {name!r} ({', '.join(sorted(tags))}): predictions extrapolate"
        )
    summary = {
        "runs": len(rows),
        "same_model_family": same_family,
        "same_dataset": same_dataset,
        "shared_domain": shared_domain,
        "datasets": len({row_dataset(r) for r in rows}),
    }
    return summary, per_method, warnings


# ------------------------------------------------------------------------------------------
# Choosing
# ------------------------------------------------------------------------------------------


def _score(a: MethodAdvice, objective: str) -> float | None:
    g, o = a.id_gain, a.ood_change
    if objective == "gain":
        return g
    if objective == "balanced":
        return None if g is None or o is None else g + o
    return o  # retain: least forgetting (the positive-gain condition is applied as a filter)


def _pct(v: float | None) -> str:
    """Accuracy differences as signed fractions (0.05 = 5 points), as stored in the history."""
    return "?" if v is None else f"{v:+.3f}"


def choose(
    advice: list[MethodAdvice],
    objective: str,
    *,
    max_forgetting: float | None = None,
    budget: float | None = None,
) -> tuple[list[MethodAdvice], str | None]:
    """Apply constraints, score, rank (eligible first, best first). Returns (ranked, winner)."""
    for a in advice:
        if not a.eligible:
            continue
        if max_forgetting is not None and a.ood_change is not None and -a.ood_change > max_forgetting:
            a.eligible, a.excluded = False, f"predicted OOD drop {-a.ood_change:.3f} > --max-forgetting {max_forgetting:g}"
        elif budget is not None and a.cost_s is not None and a.cost_s > budget:
            a.eligible, a.excluded = False, f"predicted cost {a.cost_s:.0f} s > --budget {budget:g} s"
        elif objective == "retain" and (a.id_gain is None or a.id_gain <= 0):
            a.eligible, a.excluded = False, "not predicted to gain in-domain (--objective retain)"
        a.score = _score(a, objective)
        if a.eligible and a.score is None:
            a.eligible, a.excluded = False, f"no prediction for the {objective!r} objective"
    ranked = sorted(advice, key=lambda a: (not a.eligible, -(a.score if a.score is not None else -math.inf)))
    for i, a in enumerate(ranked, 1):
        a.rank = i
    winner = ranked[0].method if ranked and ranked[0].eligible else None
    return ranked, winner


def winner_sentence(ranked: list[MethodAdvice], winner: str | None, objective: str, source: str) -> str:
    """The decision in one sentence, with its reason."""
    if winner is None:
        reasons = "; ".join(f"{a.method}: {a.excluded}" for a in ranked if a.excluded)
        return f"No method qualifies ({reasons or 'no predictions'}); keep the zero-shot model or relax the constraints."
    w = ranked[0]
    others = [a for a in ranked[1:] if a.eligible and a.score is not None]
    nxt = f", ahead of {others[0].method} ({_pct(others[0].score)})" if others else ""
    how = "predicted" if source == "predictor" else "IIMM-heuristic"
    if w.id_gain is None:  # rule-based heuristic: no numbers
        return f"Use {winner}: the IIMM heuristic ranks it first for the {objective!r} objective (no trained predictor yet)."
    interval = (
        f" (80% interval {_pct(w.id_gain_lo)} to {_pct(w.id_gain_hi)})" if w.id_gain_lo is not None else ""
    )
    if objective == "gain":
        why = f"largest {how} in-domain gain, {_pct(w.id_gain)}{interval}"
    elif objective == "balanced":
        why = (
            f"best {how} in-domain gain plus OOD change, {_pct(w.score)} "
            f"({_pct(w.id_gain)} in-domain, {_pct(w.ood_change)} out-of-domain)"
        )
    else:
        why = (
            f"least {how} forgetting among methods predicted to gain, {_pct(w.ood_change)} out-of-domain "
            f"for {_pct(w.id_gain)} in-domain"
        )
    if w.id_gain <= 0.0:
        # Nothing is predicted to beat zero-shot: saying "use X" without this caveat would mislead.
        return (f"No method is predicted to improve on zero-shot here ({winner} ranks first with {why}{nxt}); "
                f"keep the zero-shot model unless the interval's upper end ({_pct(w.id_gain_hi)}) is worth a run.")
    return f"Use {winner}: {why}{nxt}."


# ------------------------------------------------------------------------------------------
# Cold start: the IIMM heuristic
# ------------------------------------------------------------------------------------------

#: Rule-based orders (ours, from the IIMM paper's finding that higher IIMM means larger
#: in-domain gain *and* larger forgetting after fine-tuning the towers): high IIMM favours
#: tower-updating methods for gain; low IIMM, or an objective that values retention, favours
#: prompt learning, which leaves both towers frozen.
_HEURISTIC_ORDERS = {
    ("high", "gain"): ("full", "lora", "tpc_cma", "contcoop", "coop"),
    ("high", "balanced"): ("lora", "contcoop", "coop", "tpc_cma", "full"),
    ("high", "retain"): ("contcoop", "coop", "lora", "tpc_cma", "full"),
    ("low", "gain"): ("contcoop", "coop", "lora", "tpc_cma", "full"),
    ("low", "balanced"): ("contcoop", "coop", "lora", "tpc_cma", "full"),
    ("low", "retain"): ("contcoop", "coop", "lora", "tpc_cma", "full"),
    ("unknown", "gain"): ("full", "lora", "tpc_cma", "contcoop", "coop"),
    ("unknown", "balanced"): ("lora", "contcoop", "coop", "tpc_cma", "full"),
    ("unknown", "retain"): ("contcoop", "coop", "lora", "tpc_cma", "full"),
}


def heuristic_ranking(
    signals: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    objective: str,
) -> tuple[list[MethodAdvice], str]:
    """Cold-start ranking, in rule-table order (above): IIMM is "high" or "low" against the
    median IIMM of the pairs in the history. A method with at least two runs (two IIMM values)
    in the history also gets the IIMM paper's linear heuristic (gain ~= a_m + b_m * IIMM, the
    same for OOD change) fitted on them; when every method has one, ``_choose_heuristic`` ranks
    by those numbers instead. Returns (advice in rule order, a note saying what was done)."""
    from .predictor import IIMM_SIGNAL, IIMMLinear, row_signals, row_method

    iimm = signals.get(IIMM_SIGNAL)
    fitted: dict[str, dict[str, float]] = {}
    if iimm is not None and rows:
        lin = IIMMLinear().fit(rows)
        for m in methods:
            runs = [r for r in rows if row_method(r) == m and IIMM_SIGNAL in row_signals(r)]
            if len({row_signals(r)[IIMM_SIGNAL] for r in runs}) >= 2:
                fitted[m] = lin.predict_row({"signals": dict(signals)}, m)
    ref_values = {}
    for r in rows:
        s = row_signals(r)
        if IIMM_SIGNAL in s:
            ref_values[(str(r.get("model")), str(r.get("dataset")))] = s[IIMM_SIGNAL]
    if iimm is None:
        level, why = "unknown", "the pair has no IIMM signal"
    elif len(ref_values) < MIN_REFERENCE_PAIRS:
        level = "unknown"
        why = (f"IIMM {iimm:.3f} cannot be called high or low: fewer than {MIN_REFERENCE_PAIRS} pairs "
               "in the history to compare with")
    else:
        med = statistics.median(ref_values.values())
        level = "high" if iimm >= med else "low"
        why = f"IIMM {iimm:.3f} is {'at or above' if level == 'high' else 'below'} the history's median {med:.3f}"
    table = _HEURISTIC_ORDERS[(level, objective)]
    order = [m for m in table if m in methods] + sorted(m for m in methods if m not in table)
    advice = []
    for m in methods:
        a = MethodAdvice(method=m)
        if m in fitted:
            a.id_gain, a.ood_change = _finite(fitted[m]["id_gain"]), _finite(fitted[m]["ood_change"])
        advice.append(a)
    note = f"IIMM heuristic: {why}; rule order for {objective!r}: {', '.join(order)}"
    if fitted:
        note += f"; linear IIMM fits from the history for {', '.join(sorted(fitted))}"
    rule_rank = {m: i for i, m in enumerate(order)}
    return sorted(advice, key=lambda a: rule_rank.get(a.method, len(order))), note


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _choose_heuristic(
    advice: list[MethodAdvice], objective: str, max_forgetting: float | None
) -> tuple[list[MethodAdvice], str | None]:
    """When every method has a linear IIMM fit, rank by its numbers (constraints applied);
    otherwise keep the rule order, dropping only methods whose fitted forgetting breaks
    ``max_forgetting``."""
    if advice and all(a.id_gain is not None and a.ood_change is not None for a in advice):
        return choose(advice, objective, max_forgetting=max_forgetting)
    for a in advice:
        if max_forgetting is not None and a.ood_change is not None and -a.ood_change > max_forgetting:
            a.eligible, a.excluded = False, f"fitted OOD drop {-a.ood_change:.3f} > --max-forgetting {max_forgetting:g}"
    ranked = [a for a in advice if a.eligible] + [a for a in advice if not a.eligible]
    for i, a in enumerate(ranked, 1):
        a.rank = i
    return ranked, next((a.method for a in ranked if a.eligible), None)


# ------------------------------------------------------------------------------------------
# recommend()
# ------------------------------------------------------------------------------------------


def _method_names(predictor_methods: Sequence[str] = ()) -> list[str]:
    from .plugins import get_tuners
    from .predictor import method_order

    names = list(get_tuners()) or list(predictor_methods)
    return method_order(names)


def _default_device_kind(rows: Sequence[Mapping[str, Any]]) -> str:
    """Cost is predicted for the device most history runs used, unless one is asked for."""
    env = os.environ.get("ADVISOR_DEVICE")
    if env:
        return env.split(":", 1)[0]
    kinds = [str(r.get("device")).split(":", 1)[0] for r in rows if r.get("device")]
    return max(set(kinds), key=kinds.count) if kinds else "cpu"


def recommend(
    model_spec: ModelSpec | str,
    dataset_spec: DatasetSpec | str,
    *,
    db: str | None = None,
    objective: str = "balanced",
    max_forgetting: float | None = None,
    budget: float | None = None,
    shots: int | None = 16,
    seed: int = 0,
    device: str | None = None,
    max_images: int | None = None,
    quiet: bool = False,
) -> Recommendation:
    """Rank the registered fine-tuning methods for the pair (see the module docstring).

    ``max_forgetting`` is in accuracy units (0.02 = 2 points of mean OOD accuracy) and
    ``budget`` in seconds of training wall time. ``seed`` is accepted for symmetry with
    ``advisor run``: signals always use seed 0, as the history's runs do, so they are comparable.
    """
    from .data import shots_shortfall
    from .history import open_history
    from .predictor import FittedPredictor, history_ready, pretty_feature, train_predictor, training_hash

    if objective not in OBJECTIVES:
        raise RecommendError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    if max_forgetting is not None and max_forgetting < 0:
        raise RecommendError(f"--max-forgetting must be >= 0 (got {max_forgetting})")
    if budget is not None and budget <= 0:
        raise RecommendError(f"--budget must be a positive number of seconds (got {budget})")
    if shots is not None and shots < 1:
        raise RecommendError(f"--shots must be at least 1 (got {shots})")
    mspec, dspec = _as_model_spec(model_spec), _as_dataset_spec(dataset_spec)

    history = open_history(db)
    rows = history.training_rows()
    model_desc, dataset_desc, signals, signals_source = pair_signals(
        history, mspec, dspec, rows, device=device, max_images=max_images, quiet=quiet
    )
    summary, per_method, warnings = support_for(model_desc, dataset_desc, rows)
    shortfall = shots_shortfall(dataset_desc, shots)  # more shots than the smallest class has
    if shortfall:
        warnings.append(shortfall)
    notes: list[str] = []

    est: FittedPredictor | None = None
    pinfo: dict[str, Any] = {}
    stored = history.load_predictor(PREDICTOR_NAME)
    if stored is not None:
        est = FittedPredictor.from_stored(stored)
        pinfo = {"name": PREDICTOR_NAME, "created_at": stored.get("created_at"), "n_runs": est.n_runs,
                 "training_hash": est.training_hash, "trained_now": False}
        if rows and est.training_hash != training_hash(rows):
            notes.append(
                f"the history changed since the predictor was trained on {est.n_runs} runs "
                f"(now {len(rows)}): run `advisor predictor train` to refresh it"
            )
    else:
        ok, why = history_ready(rows)
        if ok:
            info = train_predictor(history, name=PREDICTOR_NAME, evaluate=False)
            est = FittedPredictor.from_stored(history.load_predictor(PREDICTOR_NAME))
            pinfo = {"name": PREDICTOR_NAME, "n_runs": info["n_runs"], "training_hash": info["training_hash"],
                     "trained_now": True}
            notes.append(
                f"no trained predictor was stored: trained one now on {info['n_runs']} runs over "
                f"{len(info['datasets'])} datasets (`advisor predictor evaluate` scores it)"
            )
        else:
            notes.append(f"cold start: {why}")

    methods = _method_names(est.schema.categories.get("method", []) if est is not None else ())
    device_kind = (device.split(":", 1)[0] if device else None) or _default_device_kind(rows)

    if est is not None:
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
        for name, (lo, hi) in est.feature_ranges.items():
            v = signals.get(pretty_feature(name))
            if v is not None and not (lo <= v <= hi):
                warnings.append(f"{pretty_feature(name)}={v:.4g} lies outside the history's range [{lo:.4g}, {hi:.4g}]")
        advice = _predict_methods(est, methods, signals, model_desc, dataset_desc, shots, device_kind)
        for a in advice:
            a.support_runs = per_method.get(a.method, 0)
        ranked, winner = choose(advice, objective, max_forgetting=max_forgetting, budget=budget)
        source = "predictor"
    else:
        advice, note = heuristic_ranking(signals, rows, methods, objective)
        for a in advice:
            a.support_runs = per_method.get(a.method, 0)
        notes.append(note)
        if budget is not None:
            notes.append("--budget ignored: the IIMM heuristic has no cost model")
        ranked, winner = _choose_heuristic(advice, objective, max_forgetting)
        source = "iimm-heuristic"
        notes.append("fell back to the IIMM heuristic; record runs with `advisor run` and `advisor predictor train`")

    return Recommendation(
        model=mspec.name,
        dataset=dspec.name,
        objective=objective,
        shots=shots,
        winner=winner,
        sentence=winner_sentence(ranked, winner, objective, source),
        source=source,
        methods=ranked,
        signals=dict(sorted(signals.items())),
        signals_source=signals_source,
        support=summary,
        warnings=warnings,
        notes=notes,
        predictor=pinfo,
        max_forgetting=max_forgetting,
        budget=budget,
    )


def _feature_label(name: str, case: Mapping[str, Any]) -> str:
    """``sig:iimm`` -> ``iimm``; categorical features with their value (``method=lora``)."""
    from .predictor import CATEGORICAL, core_values, pretty_feature

    if name in CATEGORICAL:
        return f"{name}={core_values(case).get(name)}"
    return pretty_feature(name)


def _predict_methods(
    est: Any,
    methods: Sequence[str],
    signals: Mapping[str, float],
    model_desc: Mapping[str, Any],
    dataset_desc: Mapping[str, Any],
    shots: int | None,
    device_kind: str,
) -> list[MethodAdvice]:
    """Predictions with intervals and top contributions for every method."""
    from .predictor import TARGETS, pretty_feature

    cases = [
        {"method": m, "shots": shots, "device": device_kind, "signals": dict(signals),
         "model_desc": dict(model_desc), "dataset_desc": dict(dataset_desc)}
        for m in methods
    ]
    X = est.rows_matrix(cases)
    mean, lo, hi = est.predict_interval(X)
    contrib = est.predict_contrib(X, targets=[TARGETS.index("id_gain")])
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
        g, o, c = ti["id_gain"], ti["ood_change"], ti["cost"]
        a.id_gain, a.id_gain_lo, a.id_gain_hi = (_finite(mean[k, g]), _finite(lo[k, g]), _finite(hi[k, g]))
        a.ood_change, a.ood_change_lo, a.ood_change_hi = (_finite(mean[k, o]), _finite(lo[k, o]), _finite(hi[k, o]))
        if math.isfinite(mean[k, c]):
            a.cost_s, a.cost_s_lo, a.cost_s_hi = (float(np.exp(mean[k, c])), float(np.exp(lo[k, c])), float(np.exp(hi[k, c])))
        row = contrib[k, g, :-1]
        if np.isfinite(row).any():
            order = np.argsort(-np.abs(np.nan_to_num(row)), kind="stable")[:TOP_CONTRIBUTIONS]
            a.contributions = [(_feature_label(names[j], cases[k]), float(row[j])) for j in order if row[j] != 0]
        out.append(a)
    return out
