"""What the training history covers, so a prediction can say where it extrapolates.

Built from the training rows and stored with the predictor: the model families and image
towers, the devices, the range of shots, the exact range of every signal, and, per method,
the epochs and trainable parameters its runs used (a recommendation asks about runs that have
not happened: these fill in what the cost model needs). ``flags(case)`` names every input of a
case outside that support, and ``widening(case)`` how much they widen its intervals.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .rows import as_dict, as_float, device_kind, row_family, row_method, row_shots, row_signals, row_tower

#: Each out-of-support input multiplies the interval half-widths by (1 + this). A rule of thumb
#: (a case outside the history is less well known than the history's own out-of-fold errors
#: say), not a calibrated number: ``predictor evaluate --holdout tower|source`` measures how the
#: widened intervals cover.
WIDENING_PER_FLAG = 0.5


def exact(v: float) -> str:
    """A float with enough digits to tell it from any other (``repr``): "1 lies outside
    [1, 8.03]" cannot be printed for a value that is really outside."""
    return repr(float(v))


@dataclass
class HistorySupport:
    families: list[str] = field(default_factory=list)
    towers: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    shots: list[int] = field(default_factory=list)  # [min, max] of the runs with a shot count
    signal_ranges: dict[str, list[float]] = field(default_factory=dict)
    method_epochs: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> shots -> epochs
    method_trainable: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> family -> params
    method_trainable_share: dict[str, float] = field(default_factory=dict)  # method -> trainable / model params

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> "HistorySupport":
        sig: dict[str, list[float]] = {}
        epochs: dict[str, dict[str, list[float]]] = {}
        trainable: dict[str, dict[str, list[float]]] = {}
        share: dict[str, list[float]] = {}
        for r in rows:
            for k, v in row_signals(r).items():
                lo_hi = sig.setdefault(k, [v, v])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], v), max(lo_hi[1], v)
            m = row_method(r)
            e = as_float(as_dict(r.get("hparams")).get("epochs"))
            if math.isfinite(e):
                epochs.setdefault(m, {}).setdefault(str(row_shots(r)), []).append(e)
            tp = as_float(r.get("trainable_params"))
            if tp > 0:
                trainable.setdefault(m, {}).setdefault(row_family(r), []).append(tp)
                params = as_float(as_dict(r.get("model_desc")).get("params"))
                if params > 0:
                    share.setdefault(m, []).append(tp / params)
        shots = [s for s in (row_shots(r) for r in rows) if s is not None]
        med = statistics.median
        return cls(
            families=sorted({row_family(r) for r in rows}),
            towers=sorted({row_tower(r) for r in rows}),
            devices=sorted({d for d in (device_kind(r.get("device")) for r in rows) if d}),
            shots=[min(shots), max(shots)] if shots else [],
            signal_ranges=sig,
            method_epochs={m: {s: med(v) for s, v in by.items()} for m, by in epochs.items()},
            method_trainable={m: {f: med(v) for f, v in by.items()} for m, by in trainable.items()},
            method_trainable_share={m: med(v) for m, v in share.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HistorySupport":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    # -- filling in a case the history has not run ----------------------------------------

    def epochs_for(self, method: str, shots: int | None) -> float | None:
        """The epochs the method's runs used at these shots (else at the nearest shots)."""
        by = self.method_epochs.get(method) or {}
        if not by:
            return None
        if str(shots) in by:
            return by[str(shots)]
        numeric = {int(k): v for k, v in by.items() if k != "None"}
        if shots is None or not numeric:
            return by.get("None", next(iter(by.values())))
        return numeric[min(numeric, key=lambda k: (abs(math.log(k) - math.log(shots)), k))]

    def trainable_for(self, method: str, family: str, model_params: Any) -> float | None:
        """Trainable parameters of the method on this family (else its usual share of the model)."""
        same = (self.method_trainable.get(method) or {}).get(family)
        if same:
            return same
        share, params = self.method_trainable_share.get(method), as_float(model_params)
        return share * params if share and params > 0 else None

    # -- what lies outside ----------------------------------------------------------------

    def flags(self, case: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(kind, one line) per input of ``case`` outside the history's support; kinds are
        ``family``, ``tower``, ``device``, ``shots`` and ``signal``."""
        out = []
        fam, tower = row_family(case), row_tower(case)
        if self.families and fam not in self.families:
            out.append(("family", f"model family {fam!r} has no runs in the history (seen: {', '.join(self.families)})"))
        if self.towers and tower != fam and tower not in self.towers:
            out.append(("tower", f"image tower {tower!r} has no runs in the history (seen: {', '.join(self.towers)})"))
        dev = device_kind(case.get("device"))
        if dev and self.devices and dev not in self.devices:
            out.append(("device", f"device {dev!r} has no runs in the history (seen: {', '.join(self.devices)}): "
                       "the cost is extrapolated"))
        shots = row_shots(case)
        if shots is not None and self.shots and not self.shots[0] <= shots <= self.shots[1]:
            out.append(("shots", f"shots={shots} lies outside the history's shots [{self.shots[0]}, {self.shots[1]}]"))
        for k, v in sorted(row_signals(case).items()):
            rng = self.signal_ranges.get(k)
            if rng and not rng[0] <= v <= rng[1]:
                out.append(("signal", f"{k}={exact(v)} lies outside the history's range [{exact(rng[0])}, {exact(rng[1])}]"))
        return out

    def signal_excess(self, case: Mapping[str, Any]) -> float:
        """How far the case's signals lie outside the history's ranges: the largest distance
        beyond a range end, in units of that range's width (0 inside every range)."""
        worst = 0.0
        for k, v in row_signals(case).items():
            rng = self.signal_ranges.get(k)
            if rng:
                width = rng[1] - rng[0] or abs(rng[0]) or 1.0
                worst = max(worst, (rng[0] - v) / width, (v - rng[1]) / width)
        return worst

    def widening(self, case: Mapping[str, Any], extra_kinds: Sequence[str] = ()) -> float:
        """The factor on a case's interval half-widths: ``1 + WIDENING_PER_FLAG`` per kind of
        out-of-support input other than signals (family, tower, device, shots, and
        ``extra_kinds`` such as random weights), plus up to one more ``WIDENING_PER_FLAG`` for
        signals in proportion to how far outside their ranges they lie (``signal_excess``,
        capped at one range width): a signal barely past the end of its range adds almost
        nothing. Measured on the shipped history's leave-one-dataset-out folds, widening every
        out-of-range signal fully made 80 % intervals cover 85-91 %."""
        kinds = {kind for kind, _ in self.flags(case) if kind != "signal"} | set(extra_kinds)
        return 1.0 + WIDENING_PER_FLAG * (len(kinds) + min(1.0, self.signal_excess(case)))
