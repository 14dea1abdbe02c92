"""Cold start: answers for a history too small to train a predictor on.

With anchors (the pair's measured few-shot probe, ``advisor.predictor.anchors``) the answer is
numeric: each method is predicted to reach the anchor at the asked shots plus its prior offset,
the median (accuracy after - anchor) of its runs in whatever history there is (0 with no run:
"it reaches what the frozen features already separate"), and its median OOD change
(``anchor_prior_ranking``). Without anchors, the IIMM heuristic below orders the tuner
families.

The IIMM paper finds that higher IIMM goes with a larger in-domain gain *and* more forgetting
after fine-tuning the towers. Our rules (ours, not the paper's) order the tuner *families*
(each tuner declares its family in its registration): high IIMM favours families that update
the towers for gain; low IIMM, or an objective that values retention, favours prompt learning,
which leaves both towers frozen. Within a family, the tuners' registered order decides; a
family the rules do not know ranks after the known ones.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from .decision import MethodAdvice, choose
from .predictor import IIMM_SIGNAL, IIMMLinear, row_method, row_signals

#: The heuristic needs this many pairs with an IIMM value to call a value "high" or "low".
MIN_REFERENCE_PAIRS = 3

_TOWERS_FIRST = ("full", "low-rank", "output-map", "prompt")
_BALANCED = ("low-rank", "prompt", "output-map", "full")
_FROZEN_FIRST = ("prompt", "low-rank", "output-map", "full")
#: (IIMM level, objective) -> family order.
FAMILY_ORDERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("high", "gain"): _TOWERS_FIRST,
    ("high", "balanced"): _BALANCED,
    ("high", "retain"): _FROZEN_FIRST,
    ("low", "gain"): _FROZEN_FIRST,
    ("low", "balanced"): _FROZEN_FIRST,
    ("low", "retain"): _FROZEN_FIRST,
    ("unknown", "gain"): _TOWERS_FIRST,
    ("unknown", "balanced"): _BALANCED,
    ("unknown", "retain"): _FROZEN_FIRST,
}


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def heuristic_ranking(
    signals: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    objective: str,
    families: Mapping[str, str] | None = None,
) -> tuple[list[MethodAdvice], str]:
    """Cold-start ranking in rule order: IIMM is "high" or "low" against the median IIMM of
    the pairs in the history; ``methods`` come in registered order and ``families`` maps each
    to its tuner family. A method with at least two runs (two IIMM values) in the history also
    gets the IIMM paper's linear heuristic (gain ~= a_m + b_m * IIMM, the same for OOD change)
    fitted on them; when every method has one, ``choose_heuristic`` ranks by those numbers.
    Returns (advice in rule order, a note saying what was done)."""
    families = dict(families or {})
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
    table = FAMILY_ORDERS[(level, objective)]
    position = {m: i for i, m in enumerate(methods)}
    rule = sorted(methods, key=lambda m: (table.index(families[m]) if families.get(m) in table else len(table),
                                          position[m]))
    advice = []
    for m in rule:
        a = MethodAdvice(method=m)
        if m in fitted:
            a.id_gain, a.ood_change = _finite(fitted[m]["id_gain"]), _finite(fitted[m]["ood_change"])
        advice.append(a)
    note = f"IIMM heuristic: {why}; family order for {objective!r}: {', '.join(table)} -> {', '.join(rule)}"
    if fitted:
        note += f"; linear IIMM fits from the history for {', '.join(sorted(fitted))}"
    return advice, note


def anchor_prior_ranking(
    signals: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    shots: int | None,
    zero_shot: float | None,
) -> tuple[list[MethodAdvice], str] | None:
    """Numbers from the anchor and per-method priors (see the module doc), or None when the pair
    has no anchor or no zero-shot accuracy. Every ID gain lies in [-zero-shot, 1 - zero-shot]."""
    from .predictor import AnchorOffset
    from .predictor.anchors import anchor_at

    anchor = anchor_at(signals, "anchor_probe", shots)
    if zero_shot is None or not (math.isfinite(anchor) and 0.0 <= zero_shot <= 1.0):
        return None
    prior = AnchorOffset().fit(rows) if rows else None
    case = {"shots": shots, "signals": dict(signals), "id_acc_before": zero_shot}
    advice, from_runs = [], []
    for m in methods:
        a = MethodAdvice(method=m)
        if prior is not None and m in prior.median_:
            p = prior.predict_row(case, m)
            a.id_gain, a.ood_change = _finite(p["id_gain"]), _finite(p["ood_change"])
            from_runs.append(m)
        else:
            a.id_gain = float(anchor - zero_shot)
        advice.append(a)
    note = (f"cold start from the anchor: a linear probe on the frozen features reaches {anchor:.2f} at "
            f"{'every training image' if shots is None else f'{shots} shots'} (zero-shot {zero_shot:.2f}); "
            + (f"per-method offsets from the history's runs of {', '.join(from_runs)}" if from_runs
               else "no run in the history: every method is assumed to reach the anchor"))
    return advice, note


def choose_heuristic(
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
