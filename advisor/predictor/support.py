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
from typing import Any, Callable, Mapping, Sequence

from .rows import as_dict, as_float, device_kind, row_dataset, row_family, row_method, row_model, row_shots, row_signals, row_tower

#: Each out-of-support input multiplies the interval half-widths by (1 + this). A rule of thumb
#: (a case outside the history is less well known than the history's own out-of-fold errors
#: say), not a calibrated number: ``predictor evaluate --holdout tower|source`` measures how the
#: widened intervals cover.
WIDENING_PER_FLAG = 0.5


def config_values(r: Mapping[str, Any]) -> dict[str, float]:
    """The numeric hyper-parameters of a run or a case's configuration, epochs included (the
    values a configuration's support is judged on)."""
    from .features import row_hparam_values

    out = row_hparam_values(r)
    e = as_float(as_dict(r.get("hparams")).get("epochs"))
    if math.isfinite(e):
        out["epochs"] = e
    return out


def configs_by_count(counts: Mapping[str, Mapping[Any, Mapping[str, int]]], methods: Sequence[str],
                     shots: int | None) -> dict[str, list[dict[str, Any]]]:
    """Per method, the configurations (decoded hyper-parameter dicts) its runs used at these
    shots, else at the nearest shots it has runs at, most used first (ties: the greater JSON
    first, as ``max`` over (count, JSON) picks).
    ``counts`` is method -> shots -> JSON of the hyper-parameters -> runs."""
    import json

    out: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        per = counts.get(m)
        if not per:
            continue
        numeric = [k for k in per if k is not None]
        if shots in per or shots is None or not numeric:
            pick = per.get(shots) or per[next(iter(per))]
        else:
            pick = per[min(numeric, key=lambda k: (abs(math.log(k) - math.log(shots)), k))]
        out[m] = [json.loads(k) for k, _ in sorted(pick.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
    return out


def support_groups(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Runs per (model family, image tower, dataset, domain tags): ``[family, tower, dataset,
    tags, runs]`` rows, what ``support_summary`` counts from (and a ``HistorySummary`` stores)."""
    groups: dict[tuple[Any, ...], int] = {}
    for r in rows:
        tags = tuple(sorted(set(as_dict(r.get("dataset_desc")).get("domain") or [])))
        k = (row_family(r), row_tower(r), row_dataset(r), tags)
        groups[k] = groups.get(k, 0) + 1
    return [[f, t, d, list(tags), n] for (f, t, d, tags), n in groups.items()]


def support_summary(groups: Sequence[Sequence[Any]], n_runs: int, model_desc: Mapping[str, Any],
                    dataset_desc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(summary counts of the history's runs like the pair's: same family, same tower, same
    dataset, a shared domain; warnings about the dataset's domain) from ``support_groups``."""
    case = {"model_desc": dict(model_desc), "model": model_desc.get("name")}
    fam, tower = row_family(case), row_tower(case)
    tags = set(dataset_desc.get("domain") or [])
    name = dataset_desc.get("name")
    same_family = same_tower = same_dataset = shared_domain = 0
    seen_tags: set[str] = set()
    for f, t, d, rtags, n in groups:
        rtags = set(rtags)
        seen_tags |= rtags
        same_family += n * (f == fam)
        same_tower += n * (t == tower)
        same_dataset += n * (d == name)
        shared_domain += n * (d == name or bool(tags & rtags))
    warnings = []
    if n_runs and same_dataset == 0 and tags and not (tags & seen_tags):
        warnings.append(f"no dataset in the history shares a domain with {name!r} ({', '.join(sorted(tags))}): "
                        "predictions extrapolate")
    return {"runs": n_runs, "same_model_family": same_family, "same_image_tower": same_tower,
            "same_dataset": same_dataset, "shared_domain": shared_domain,
            "datasets": len({g[2] for g in groups})}, warnings


def config_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[Any, dict[str, int]]]:
    """method -> shots -> JSON of the resolved hyper-parameters -> runs (``configs_by_count``
    picks from it)."""
    import json

    counts: dict[str, dict[Any, dict[str, int]]] = {}
    for r in rows:
        hp = as_dict(r.get("hparams"))
        if hp:
            key = json.dumps(hp, sort_keys=True, default=str)
            by = counts.setdefault(row_method(r), {}).setdefault(row_shots(r), {})
            by[key] = by.get(key, 0) + 1
    return counts


def neighbour_radius(knn: Any, rows: Sequence[Mapping[str, Any]]) -> float:
    """The history's typical distance between neighbouring datasets: the median, over its
    (model, dataset) pairs, of the standardised distance (``knn``, a ``SignalKNN`` fitted on
    ``rows``) to the nearest pair of another dataset; inf when there is none."""
    import numpy as np

    reps: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        reps.setdefault((row_model(r), row_dataset(r)), i)
    idx = list(reps.values())
    names = [row_dataset(rows[i]) for i in idx]
    Zr = knn.Z_[idx] if idx else np.zeros((0, len(knn.names_) + 1))
    nearest = []
    for a, i in enumerate(idx):
        d = np.linalg.norm(Zr - knn.Z_[i], axis=1)
        other = [d[b] for b in range(len(idx)) if names[b] != names[a]]
        if other:
            nearest.append(min(other))
    return float(np.median(nearest)) if nearest else math.inf


def exact(v: float, *near: float) -> str:
    """``v`` with 3 significant digits, more only where needed to tell it apart from ``near``
    (the bound it lies outside): "1 lies outside [1, 8.03]" cannot be printed for a value that
    is really outside, and 8.59319134036829 reads 8.59."""
    v = float(v)
    for digits in range(3, 18):
        text = f"{v:.{digits}g}"
        if all(f"{float(b):.{digits}g}" != text for b in near):
            return repr(v) if float(text) == v else text
    return repr(v)


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
    #: method -> hyper-parameter -> [min, max] of the numeric values its runs used (epochs too)
    method_hparam_ranges: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> "HistorySupport":
        sig: dict[str, list[float]] = {}
        epochs: dict[str, dict[str, list[float]]] = {}
        trainable: dict[str, dict[str, list[float]]] = {}
        share: dict[str, list[float]] = {}
        hp_ranges: dict[str, dict[str, list[float]]] = {}
        for r in rows:
            for k, v in row_signals(r).items():
                lo_hi = sig.setdefault(k, [v, v])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], v), max(lo_hi[1], v)
            m = row_method(r)
            for k, v in config_values(r).items():
                span = hp_ranges.setdefault(m, {}).setdefault(k, [v, v])
                span[0], span[1] = min(span[0], v), max(span[1], v)
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
            method_hparam_ranges=hp_ranges,
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
        ``family``, ``tower``, ``device``, ``shots``, ``config`` (a hyper-parameter of the
        case's method outside the values that method's runs used) and ``signal``."""
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
        out += self.config_flags(case)
        for k, v in sorted(row_signals(case).items()):
            rng = self.signal_ranges.get(k)
            if rng and not rng[0] <= v <= rng[1]:
                out.append(("signal", f"{k}={exact(v, *rng)} lies outside the history's range "
                                      f"[{exact(rng[0], v)}, {exact(rng[1], v)}]"))
        return out

    def config_flags(self, case: Mapping[str, Any]) -> list[tuple[str, str]]:
        """("config", line) per numeric hyper-parameter of the case's configuration outside the
        range its method's runs used (or one the method's runs never set), so a configuration
        the history never tried is flagged as a signal outside its range is."""
        method = case.get("method")
        ranges = self.method_hparam_ranges.get(str(method)) if method is not None else None
        if not ranges:
            return []
        out = []
        for k, v in sorted(config_values(case).items()):
            rng = ranges.get(k)
            if rng is None:
                out.append(("config", f"{method} {k}={exact(v)}: no run of {method} in the history sets {k}"))
            elif not rng[0] <= v <= rng[1]:
                seen = exact(rng[0], v) if rng[0] == rng[1] else f"[{exact(rng[0], v)}, {exact(rng[1], v)}]"
                out.append(("config", f"{method} {k}={exact(v, *rng)} lies outside the history's {k} for {method} "
                                      f"({seen})"))
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


# ------------------------------------------------------------------------------------------
# What a recommendation needs from the whole history, computed once at training (issue 25)
# ------------------------------------------------------------------------------------------

#: Similar runs listed per method at most (the first ones, oldest first): a bounded read
#: however many runs of a configuration the history holds.
SIMILAR_LIMIT = 50


@dataclass
class HistorySummary:
    """Everything ``recommend`` used to compute from every run on every call, computed once
    when the predictor is trained and stored beside it (``predictors.summary``):

    - ``state``: ``History.state()`` at training, so a change of the history is seen in
      constant time; ``n_runs``;
    - ``support``: run counts per (model family, image tower, dataset, domain tags): the
      ``support`` summary of a recommendation;
    - ``devices``: run counts per device kind (the default device of the cost);
    - ``configs``: per method and shots, the counts of each set of hyper-parameters;
    - ``seed_noise``: ``rows.seed_noise`` of the history;
    - ``knn`` and ``points``: the similar-runs index: the standardisation of (signals, log2
      shots) fitted on every run (``SignalKNN``), the radius (the history's typical distance
      between neighbouring datasets), and one standardised point per (model, dataset, signal
      set, shots) with its runs per method, whose runs are then read with a bounded query.

    Its answers equal those of the functions in ``advisor.recommendation`` on all rows (a
    test compares them on the shipped history)."""

    state: dict[str, Any] = field(default_factory=dict)
    n_runs: int = 0
    support: list[list[Any]] = field(default_factory=list)
    devices: list[list[Any]] = field(default_factory=list)
    configs: dict[str, list[list[Any]]] = field(default_factory=dict)
    seed_noise: dict[str, Any] = field(default_factory=dict)
    knn: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)

    FORMAT = "advisor-history-summary/1"

    @classmethod
    def build(cls, rows: Sequence[Mapping[str, Any]], history: Any) -> "HistorySummary":
        """From the training rows and the history they were read from (``run_groups``,
        ``state``)."""
        import numpy as np

        from .baselines import SignalKNN
        from .rows import seed_noise

        support = support_groups(rows)
        devices: dict[str, int] = {}
        for r in rows:
            if r.get("device"):
                dk = str(r.get("device")).split(":", 1)[0]
                devices[dk] = devices.get(dk, 0) + 1
        configs = config_counts(rows)
        knn = SignalKNN().fit(rows)
        radius = neighbour_radius(knn, rows)
        points: dict[tuple[Any, ...], dict[str, Any]] = {}
        for g in history.run_groups():
            key = (g["model_id"], g["dataset_id"], g["signal_set_id"], g["shots"])
            p = points.get(key)
            if p is None:
                case = {"signals": g["signals"], "shots": g["shots"], "model_desc": g["model_desc"]}
                z = np.nan_to_num((knn._vec(case) - knn.mu_) / knn.sd_)
                p = points[key] = {"model_id": g["model_id"], "dataset_id": g["dataset_id"],
                                   "signal_set_id": g["signal_set_id"], "shots": g["shots"],
                                   "tower": row_tower(case), "family": row_family(case),
                                   "z": [float(v) for v in z], "methods": {}}
            p["methods"][g["method"]] = p["methods"].get(g["method"], 0) + g["runs"]
        state = history.state() if callable(getattr(history, "state", None)) else {}
        return cls(
            state=dict(state), n_runs=len(rows),
            support=support,
            devices=[[k, n] for k, n in devices.items()],
            configs={m: [[s, list(by.items())] for s, by in per.items()] for m, per in configs.items()},
            seed_noise=seed_noise(rows),
            knn={"names": list(knn.names_), "mu": [float(v) for v in knn.mu_], "sd": [float(v) for v in knn.sd_],
                 "radius": radius if math.isfinite(radius) else None, "rows": len(rows)},
            points=list(points.values()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "HistorySummary | None":
        """None for a predictor stored without one (or in another format): then a
        recommendation reads every run, as before."""
        if not isinstance(d, Mapping) or d.get("format") != cls.FORMAT:
            return None
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    # -- the answers ------------------------------------------------------------------------

    def support_for(self, model_desc: Mapping[str, Any], dataset_desc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """As ``advisor.recommend_support.support_for`` on every training row."""
        return support_summary(self.support, self.n_runs, model_desc, dataset_desc)

    def device_rows(self) -> list[dict[str, Any]]:
        """One row holding the device kind most runs used (what ``_default_device_kind`` picks
        from every row), or none."""
        if not self.devices:
            return []
        best = max(n for _, n in self.devices)
        return [{"device": next(k for k, n in self.devices if n == best)}]

    def history_configs(self, methods: Sequence[str], shots: int | None) -> dict[str, dict[str, Any]]:
        """As ``advisor.recommendation.history_configs`` on every training row."""
        return {m: c[0] for m, c in self.config_candidates(methods, shots).items()}

    def config_candidates(self, methods: Sequence[str], shots: int | None) -> dict[str, list[dict[str, Any]]]:
        """As ``advisor.recommend_support.config_candidates`` on every training row."""
        return configs_by_count({m: {s: dict(by) for s, by in entries} for m, entries in self.configs.items()},
                                methods, shots)

    def changed(self, history: Any) -> bool:
        """Whether runs or signals were added since training (two primary-key maxima)."""
        state = getattr(history, "state", None)
        return bool(self.state) and callable(state) and state() != self.state

    def similar_runs(self, case: Mapping[str, Any], methods: Sequence[str], history: Any,
                     limit: int = SIMILAR_LIMIT) -> dict[str, list[str]]:
        """As ``advisor.recommendation.similar_runs`` on every training row, with at most
        ``limit`` runs per method (the oldest): the index finds the similar (model, dataset,
        signal set, shots) points, ``history.group_runs`` reads their first runs."""
        import numpy as np

        out: dict[str, list[str]] = {m: [] for m in methods}
        if not self.n_runs or not self.points:
            return out
        names, mu, sd = self.knn["names"], np.array(self.knn["mu"], dtype=float), np.array(self.knn["sd"], dtype=float)
        radius = self.knn.get("radius")
        radius = math.inf if radius is None else float(radius)
        s = row_signals(case)
        sh = row_shots(case)
        v = np.array([s.get(n, math.nan) for n in names] + [math.log2(sh) if sh else math.nan], dtype=float)
        z = np.nan_to_num((v - mu) / sd)
        Z = np.array([p["z"] for p in self.points], dtype=float).reshape(len(self.points), len(names) + 1)
        d = np.linalg.norm(Z - z, axis=1)
        similar = similar_to(case, radius)
        near = [p for p, dist in zip(self.points, d) if similar(p["tower"], p["family"], dist)]
        for m in methods:
            groups = [p for p in near if p["methods"].get(m)]
            runs = history.group_runs(m, groups, limit) if groups else []
            out[m].extend(similar_run_labels(runs, lambda r: (r["model"], r["dataset"])))
        return out


def similar_to(case: Mapping[str, Any], radius: float) -> Callable[[Any, Any, float], bool]:
    """The similar-run rule, as a predicate over a run's (image tower, model family, distance
    to ``case``): the same tower or the same family, and within ``radius``. Both the full read
    and the stored summary ask it, so they pick the same runs."""
    tower, family = row_tower(case), row_family(case)
    return lambda t, f, distance: (t == tower or f == family) and distance <= radius


def similar_run_labels(runs: Sequence[Mapping[str, Any]],
                       names: Callable[[Mapping[str, Any]], tuple[str, str]]) -> list[str]:
    """``<model> on <dataset> (<shots> shots, lr=..., seed N)`` for one method's similar runs:
    the hyper-parameters (and the seed) that differ among them, so no two rows look identical.
    ``names(run)`` gives the (model, dataset) names of a run."""
    differ = differing_hparams([r.get("hparams") for r in runs])
    seeds = len({r.get("seed") for r in runs}) > 1
    out = []
    for r, extra in zip(runs, differ):
        if seeds:
            extra.append(f"seed {r.get('seed')}")
        model, dataset = names(r)
        out.append(f"{model} on {dataset} ({', '.join([f'{row_shots(r)} shots', *extra])})")
    return out


def differing_hparams(hparams: Sequence[Any]) -> list[list[str]]:
    """Per run (its ``hparams``: a mapping, or the JSON text of one), ``key=value`` for each
    hyper-parameter whose value differs among ``hparams``, keys sorted: two LoRA runs at lr 5e-3
    and 2e-2 read ``lr=0.005`` and ``lr=0.02``, so runs that differ only in their configuration
    never read alike (``similar_run_labels``, ``advisor history list``). A key a run lacks reads
    ``null``. Values are written as ``_short`` writes them, or in full (JSON) for a key whose
    short forms would make two different values read alike."""
    import json

    hps = [as_dict(h) for h in hparams]
    columns = []
    for k in sorted({k for hp in hps for k in hp}):
        exact = [json.dumps(hp.get(k), sort_keys=True, default=str) for hp in hps]
        if len(set(exact)) < 2:
            continue
        shown = [_short(hp.get(k)) for hp in hps]
        if len(set(shown)) < len(set(exact)):  # 0.0012344 and 0.0012341 both read 0.001234
            shown = exact
        columns.append([f"{k}={v}" for v in shown])
    return [[col[i] for col in columns] for i in range(len(hps))]


def _short(v: Any) -> str:
    """A hyper-parameter value in a label, as ``advisor.recommendation`` writes it."""
    import json

    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v, default=str)


class BoundedView:
    """What ``recommend`` reads of a history whose stored predictor carries a ``HistorySummary``:
    the stored predictor, its summary, and bounded queries (``group_runs``, ``state``), never
    every run. ``bounded_view`` gives one, or None when the predictor has no summary."""

    def __init__(self, history: Any, stored: Mapping[str, Any], summary: HistorySummary) -> None:
        self.history, self.stored, self.summary = history, stored, summary
        self.seed_noise = summary.seed_noise

    def support_for(self, model_desc: Mapping[str, Any], dataset_desc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        return self.summary.support_for(model_desc, dataset_desc)

    def device_rows(self) -> list[dict[str, Any]]:
        return self.summary.device_rows()

    def history_configs(self, methods: Sequence[str], shots: int | None) -> dict[str, dict[str, Any]]:
        return self.summary.history_configs(methods, shots)

    def config_candidates(self, methods: Sequence[str], shots: int | None) -> dict[str, list[dict[str, Any]]]:
        return self.summary.config_candidates(methods, shots)

    def similar_runs(self, case: Mapping[str, Any], methods: Sequence[str]) -> dict[str, list[str]]:
        return self.summary.similar_runs(case, methods, self.history)

    def changed(self) -> bool:
        return self.summary.changed(self.history)

    def count(self) -> int:
        """Runs now (read only when the history changed, for the note that says so)."""
        return int(self.history.count())


def bounded_view(history: Any, name: str) -> BoundedView | None:
    """A ``BoundedView`` of ``history`` when its stored predictor ``name`` has a summary."""
    if not callable(getattr(history, "group_runs", None)):
        return None
    stored = history.load_predictor(name)
    summary = HistorySummary.from_dict(stored.get("summary")) if stored else None
    return BoundedView(history, stored, summary) if summary is not None else None
