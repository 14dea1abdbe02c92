"""From per-method predictions to a decision: constraints, objective, ties, and the sentence.

Objectives: ``gain`` (largest ID gain), ``balanced`` (ID gain + OOD change: a point of
forgetting costs as much as a point of gain is worth) and ``retain`` (least forgetting among
methods predicted to gain). ``max_forgetting`` and ``budget`` drop methods first.

Ties: the best methods cannot be told apart when their objective intervals overlap, or when
their predicted scores differ by less than the history's seed-to-seed spread. Then the
sentence says so and recommends the cheapest of them (predicted cost).

Zero-shot: when the objective's own score of the best method is not above zero (for
``retain``, its ID gain), no method is predicted to beat the untouched model: the sentence says
to keep it and there is no winner (``keeps_zero_shot``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("gain", "balanced", "retain")


@dataclass
class MethodAdvice:
    """One method's prediction. Gains and OOD changes are accuracy differences (0.05 = 5 points);
    ``cost_s`` is predicted training wall time in seconds. ``contributions`` are the features
    that moved the ID-gain prediction most; with ``contribution_base`` (the base value) and
    ``contribution_other`` (all other features together) they add up to ``id_gain``."""

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
    cost_extrapolated: bool = False
    score: float | None = None
    score_lo: float | None = None
    score_hi: float | None = None
    rank: int | None = None
    eligible: bool = True
    excluded: str | None = None
    contributions: list[tuple[str, float]] = field(default_factory=list)
    contribution_base: float | None = None
    contribution_other: float | None = None
    support_runs: int = 0
    similar_runs: list[str] = field(default_factory=list)  # "<model> on <dataset> (<shots> shots)"
    hparams: dict[str, Any] = field(default_factory=dict)  # the configuration the prediction is for
    #: The candidate model (``recommend --model A --model B``); None when one model is ranked.
    model: str | None = None
    #: Configurations of this method the predictor compared (the best one is shown).
    configurations_searched: int = 0
    #: This configuration's inputs outside the history's support (its hyper-parameters).
    out_of_support: list[str] = field(default_factory=list)
    #: The other configurations compared, best first: hparams, id_gain, ood_change, cost_s,
    #: score and eligible of each.
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    #: Where the numbers come from: ``predicted`` (the pair's static signals), ``probed``
    #: (predicted from a probe's partial curve too) or ``measured`` (its whole run fitted in the
    #: probe budget: the intervals are the measurement itself).
    basis: str = "predicted"

    @property
    def key(self) -> str:
        """What the decision names: ``method``, or ``model + method`` when models are compared."""
        return self.method if self.model is None else f"{self.model} + {self.method}"


def _score(a: MethodAdvice, objective: str) -> tuple[float | None, float | None, float | None]:
    """(score, lo, hi) for the objective. For ``balanced`` the two intervals' distances from
    their predictions are combined in quadrature (errors taken as independent)."""
    g, o = a.id_gain, a.ood_change
    if objective == "gain":
        return g, a.id_gain_lo, a.id_gain_hi
    if objective == "retain":
        return o, a.ood_change_lo, a.ood_change_hi
    if g is None or o is None:
        return None, None, None
    lo = hi = None
    if None not in (a.id_gain_lo, a.id_gain_hi, a.ood_change_lo, a.ood_change_hi):
        lo = g + o - math.hypot(g - a.id_gain_lo, o - a.ood_change_lo)  # type: ignore[operator]
        hi = g + o + math.hypot(a.id_gain_hi - g, a.ood_change_hi - o)  # type: ignore[operator]
    return g + o, lo, hi


def pct(v: float | None) -> str:
    """Accuracy differences as signed fractions (0.05 = 5 points), as stored in the history."""
    return "?" if v is None else f"{v:+.3f}"


def choose(
    advice: list[MethodAdvice],
    objective: str,
    *,
    max_forgetting: float | None = None,
    budget: float | None = None,
) -> tuple[list[MethodAdvice], str | None]:
    """Apply constraints, score, rank (eligible first, best first). Returns (ranked, best)."""
    for a in advice:
        if not a.eligible:
            continue
        if max_forgetting is not None and a.ood_change is not None and -a.ood_change > max_forgetting:
            a.eligible, a.excluded = False, f"predicted OOD drop {-a.ood_change:.3f} > --max-forgetting {max_forgetting:g}"
        elif budget is not None and a.cost_s is not None and a.cost_s > budget:
            a.eligible, a.excluded = False, f"predicted cost {a.cost_s:.0f} s > --budget {budget:g} s"
        elif objective == "retain" and (a.id_gain is None or a.id_gain <= 0):
            a.eligible, a.excluded = False, "not predicted to gain in-domain (--objective retain)"
        a.score, a.score_lo, a.score_hi = _score(a, objective)
        if a.eligible and a.score is None:
            a.eligible, a.excluded = False, f"no prediction for the {objective!r} objective"
    ranked = sorted(advice, key=lambda a: (not a.eligible, -(a.score if a.score is not None else -math.inf)))
    for i, a in enumerate(ranked, 1):
        a.rank = i
    winner = ranked[0].key if ranked and ranked[0].eligible else None
    return ranked, winner


def ties(ranked: list[MethodAdvice], noise: float | None = None) -> tuple[list[MethodAdvice], str]:
    """The eligible methods that cannot be told apart from the best one, best first, and why:
    their objective interval overlaps the best one's, or their score is within ``noise`` (the
    history's seed-to-seed spread of the objective). Just the best one when none ties."""
    eligible = [a for a in ranked if a.eligible and a.score is not None]
    if not eligible:
        return [], ""
    best = eligible[0]
    tied, reasons = [best], set()
    for a in eligible[1:]:
        overlap = None not in (best.score_lo, a.score_hi) and a.score_hi >= best.score_lo  # type: ignore[operator]
        within = noise is not None and best.score - a.score < noise  # type: ignore[operator]
        if overlap or within:
            tied.append(a)
            reasons.add("their intervals overlap" if overlap else "they differ by less than the seed-to-seed spread")
    return tied, " and ".join(sorted(reasons))


def cheapest(tied: list[MethodAdvice]) -> MethodAdvice:
    """The tied method with the lowest predicted cost (the best-scored one when costs are unknown)."""
    return min(tied, key=lambda a: (a.cost_s if a.cost_s is not None else math.inf, tied.index(a)))


def improvement(a: MethodAdvice, objective: str) -> float | None:
    """What must be above zero for fine-tuning with ``a`` to beat the zero-shot model: the
    objective's score (``gain``: the ID gain; ``balanced``: ID gain + OOD change); for
    ``retain``, whose score is the OOD change, the ID gain."""
    return a.id_gain if objective == "retain" else a.score


def keeps_zero_shot(ranked: list[MethodAdvice], winner: str | None, objective: str,
                    tied: list[MethodAdvice] | None = None) -> bool:
    """Whether the decision is to keep the zero-shot model although a method ranks first: no
    method in the winner's group (the tied ones, or the winner alone) improves on zero-shot by
    the objective's own score. False for the rule-based heuristic (no numbers)."""
    if winner is None:
        return False
    w = next(a for a in ranked if a.key == winner)
    if w.id_gain is None:
        return False
    group = tied if tied and len(tied) > 1 else [w]
    values = [v for v in (improvement(a, objective) for a in group) if v is not None]
    return bool(values) and max(values) <= 0.0


def winner_sentence(ranked: list[MethodAdvice], winner: str | None, objective: str, source: str,
                    tied: list[MethodAdvice] | None = None, tie_reason: str = "", interval: float = 0.8) -> str:
    """The decision in one sentence, with its reason."""
    if winner is None:
        reasons = "; ".join(f"{a.key}: {a.excluded}" for a in ranked if a.excluded)
        return f"No method qualifies ({reasons or 'no predictions'}); keep the zero-shot model or relax the constraints."
    w = next(a for a in ranked if a.key == winner)
    if w.id_gain is None:  # rule-based heuristic: no numbers
        return f"Use {winner}: the IIMM heuristic ranks it first for the {objective!r} objective (no trained predictor yet)."
    how = {"predictor": "predicted", "anchor-prior": "anchor-prior"}.get(source, "IIMM-heuristic")
    level = f"{interval:.0%}"
    best = ranked[0]
    if tied and len(tied) > 1:
        names = ", ".join(a.key for a in tied[:-1]) + f" and {tied[-1].key}"
        cost = f", predicted {w.cost_s:.0f} s" if w.cost_s is not None else ""
        head = (f"{names} cannot be told apart here ({tie_reason}; best {how} score {best.key} "
                f"{pct(best.score)})")
        if keeps_zero_shot(ranked, winner, objective, tied):
            return f"No method is predicted to improve on zero-shot: {head}; keep the zero-shot model."
        return f"Use {winner}, the cheapest of them{cost}: {head}."
    others = [a for a in ranked if a is not w and a.eligible and a.score is not None]
    nxt = f", ahead of {others[0].key} ({pct(others[0].score)})" if others else ""
    interval_text = (f" ({level} interval {pct(w.id_gain_lo)} to {pct(w.id_gain_hi)})"
                     if w.id_gain_lo is not None else "")
    if objective == "gain":
        why = f"largest {how} in-domain gain, {pct(w.id_gain)}{interval_text}"
    elif objective == "balanced":
        why = (f"best {how} in-domain gain plus OOD change, {pct(w.score)} "
               f"({pct(w.id_gain)} in-domain, {pct(w.ood_change)} out-of-domain)")
    else:
        why = (f"least {how} forgetting among methods predicted to gain, {pct(w.ood_change)} out-of-domain "
               f"for {pct(w.id_gain)} in-domain")
    if keeps_zero_shot(ranked, winner, objective):
        # Nothing is predicted to beat zero-shot by the objective's own score: saying "use X"
        # would advise what the history says hurts.
        hi = w.id_gain_hi if objective == "retain" else w.score_hi
        upper = f" unless the interval's upper end ({pct(hi)}) is worth a run" if hi is not None and hi > 0 else ""
        return (f"No method is predicted to improve on zero-shot here ({winner} ranks first with {why}{nxt}); "
                f"keep the zero-shot model{upper}.")
    return f"Use {winner}: {why}{nxt}."


def objective_noise(seed_noise: dict[str, Any], objective: str) -> float | None:
    """The seed-to-seed standard deviation of the objective's score (None when the history has
    no repeated seeds)."""
    g = (seed_noise.get("id_gain") or {}).get("sd")
    o = (seed_noise.get("ood_change") or {}).get("sd")
    if objective == "gain":
        return g
    if objective == "retain":
        return o
    return None if g is None or o is None else math.hypot(g, o)
