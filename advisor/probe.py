"""Probe runs: the first epochs of each candidate method's real schedule on the user's own pair.

``run_probes(model, dataset, configs, epochs=K, budget_s=...)`` runs, for each method and its
configuration, an ordinary ``advisor run`` (``advisor.runner``, the tuner plugin's own code:
the same optimiser, warm-up and learning-rate schedule as the full run, so a third-party tuner is
probed with no extra work) stopped after K epochs (``RunRequest.stop_after_epochs``). Its
learning curve (``advisor.curves``) is what the history's runs recorded over their first K
epochs, so ``advisor.predictor.probes`` reads both the same way.

**One preparation, shared.** Before the first probe the pair is prepared once in one
``Session``: the model, the dataset, the fixed test sample (``max_images``) and the OOD
reference samples, preprocessed, and the learning curve's validation part (encoded by the
untouched model). A probe stopped before the end of its schedule needs no test or OOD accuracy
(its curve is what it measures), so none is measured; a whole run measures them when it runs. Every probe
takes them from the session (``Session.loads`` counts one load of each); a probe itself still
preprocesses its shots. The preparation's seconds are ``setup_s`` of the first result; they are not part of any
probe's ``cost_s`` or of the budget.

**The budget** (``budget_s``, wall seconds over all probes; None: no limit) is split over the
methods in the order given, each taking an equal share of what is left when its turn comes:
``share = (budget_s - cost of the probes before it) / methods left``, so what one probe leaves
unused goes to the ones after it and what one overran is taken from them. A probe's share is
the deadline of its training (``RunRequest.probe_budget_s`` -> ``TrainContext.deadline``): the
shared training loop (``advisor.tuning.fit``) checks it after every optimiser step, so a probe
runs at least one step and overruns its share by at most one step (and, when the share runs
out on an epoch's last step, that epoch's curve point), plus what the tuner does before its
first step. It stops with what it measured (``stopped="budget"``): the points of the epochs it
completed. **A partial epoch gives no point**: its steps are counted (``steps_run``) but its
loss and accuracies are not measured, since a point at epoch e means e whole epochs in the
history's curves and a partial one would be read as such. A probe stopped inside its first
epoch thus has only the untouched model's point (epoch 0), and its probe features are NaN. Its
evaluation afterwards is not cut. A method whose turn comes when nothing is left is not run
(``steps_run=0``, ``stopped="budget"``, no curve).

**Whole runs.** When the first epoch's training seconds times the schedule's epochs fit in what
is left of the method's share after its probe, the method is run in full (the same request
without the stop; the first K epochs are repeated, bit for bit): its outcome is measured
(``id_gain``, ``ood_change`` on the test sample and the OOD sets, as ``advisor run`` measures
them), ``measured=True``. A schedule of at most K epochs is whole already. Without a budget no
method is run in full.

**The history.** A probe stopped early is never recorded (it would be mistaken for a full
run). A measured whole run is recorded in ``history`` when one is given and can be written
(its provenance says ``probe``), without an adapter; ``run_id`` says so. Probes measure no
signals (the runs carry the pair's descriptors; ``advisor recommend`` has the signals).

Progress goes to stderr, one line per probe, unless ``quiet``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from .errors import HistoryError, TrainingError
from .session import Session
from .specs import DatasetSpec, ModelSpec, RunRequest
from .specs.run import DEFAULT_MAX_OOD, DEFAULT_MAX_TEST

__all__ = ["ProbeResult", "run_probes"]


@dataclass
class ProbeResult:
    """One method's probe (see the module doc).

    ``hparams`` are the run's resolved hyper-parameters and ``epochs`` its schedule's length;
    ``epochs_run`` how many whole epochs it trained and ``steps_run`` how many optimiser steps
    (those of a partial epoch included); ``cost_s`` the wall seconds of this method's runs (probe
    and, when measured, the whole run: training, curve points, evaluation), the shared
    preparation excluded (``setup_s``, paid by the first probe); ``train_s`` the training
    seconds up to the last epoch run (curve points excluded). ``stopped``: None (the whole
    schedule ran), ``"epochs"`` (the K probe epochs ran) or ``"budget"`` (the share ran out
    first). ``curve``: the learning-curve points measured. ``id_gain`` / ``ood_change``: the
    measured outcome of a whole run (``measured``). ``budget_s``: the method's share.
    ``run_id``: the recorded run, when it was recorded. ``error``: why the method's probe
    failed (it diverged), when it did."""

    model: str
    method: str
    hparams: dict[str, Any]
    epochs: int
    epochs_run: int
    cost_s: float
    measured: bool = False
    stopped: str | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    id_gain: float | None = None
    ood_change: float | None = None
    train_s: float | None = None
    budget_s: float | None = None
    setup_s: float = 0.0
    run_id: str | None = None
    error: str | None = None
    steps_run: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_probes(
    model: ModelSpec,
    dataset: DatasetSpec,
    configs: Mapping[str, Mapping[str, Any]],
    *,
    epochs: int,
    budget_s: float | None = None,
    shots: int | None = 16,
    device: str | None = None,
    max_images: int = DEFAULT_MAX_TEST,
    quiet: bool = False,
    history: Any = None,
    seed: int = 0,
    ood: tuple[str, ...] | None = None,
    max_ood: int = DEFAULT_MAX_OOD,
    session: Session | None = None,
) -> list[ProbeResult]:
    """Probe each method of ``configs`` (method -> its hyper-parameters, epochs and lr
    included) for its first ``epochs`` epochs on (``model``, ``dataset``) at ``shots``, within
    ``budget_s`` seconds; see the module doc. Returns one ``ProbeResult`` per method, in order.

    Raises a one-line AdvisorError for a bad request (an unknown method, a bad hyper-parameter,
    ``epochs`` < 1, a budget that is not a positive number) before anything trains; a method
    whose training diverges gets a result with ``error``."""
    from .run_checks import check_request

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise TrainingError(f"--probe must be a whole number of epochs, at least 1 (got {epochs!r})")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                 or not math.isfinite(budget_s) or budget_s <= 0):
        raise TrainingError(f"--probe-budget must be a positive number of seconds (got {budget_s!r})")
    session = session if session is not None else Session()
    requests = {m: RunRequest(model, dataset, m, shots=shots, seed=seed, hparams=dict(hp), ood=ood, device=device,
                              max_test=max_images, max_ood=max_ood, signals=False, record=False, save_adapter=False,
                              stop_after_epochs=epochs, quiet=True,
                              provenance_extra={"probe": {"epochs": epochs, "budget_s": budget_s}})
                for m, hp in configs.items()}
    checked = {m: check_request(r) for m, r in requests.items()}  # every request refused before any work
    setup_s = _prepare(next(iter(checked.values())), session) if checked else 0.0
    if not quiet:
        print(f"probes: the pair prepared in {setup_s:.1f} s; {len(checked)} methods, {epochs} epoch(s) each"
              + (f", {budget_s:g} s in all" if budget_s is not None else ""), file=sys.stderr)
    results: list[ProbeResult] = []
    spent = 0.0
    for i, (method, run) in enumerate(checked.items()):
        share = None if budget_s is None else max(0.0, budget_s - spent) / (len(checked) - i)
        result = _probe(run, epochs, share, session, history)
        if i == 0:
            result.setup_s = round(setup_s, 3)
        spent += result.cost_s
        results.append(result)
        if not quiet:
            print(_progress_line(result), file=sys.stderr)
    return results


def _prepare(checked: Any, session: Session) -> float:
    """Load and measure what every probe of the pair shares, into ``session``; its seconds."""
    from .runner import curve_recorder, load_inputs, measure_before

    t0 = time.perf_counter()
    req, device = checked.request, checked.device
    inputs = load_inputs(req, device, session)
    measure_before(req, device, inputs, session, zero_shot=False)  # a probe needs its curve only
    # the learning curve's validation part, encoded once (every probe of the pair uses the same)
    curve_recorder(inputs.base, inputs.bundle, inputs.train_split, inputs.train, inputs.id_set, inputs.ood_sets,
                   device, req.shots, session)
    return time.perf_counter() - t0


def _probe(checked: Any, k: int, share: float | None, session: Session, history: Any) -> ProbeResult:
    """One method: its K-epoch probe within ``share``, then its whole run when that fits."""
    from .run_checks import check_request
    from .runner import run_request

    req = checked.request
    schedule = int(checked.resolved.get("epochs") or 0)
    base = ProbeResult(model=req.model.name, method=req.method, hparams=dict(checked.resolved), epochs=schedule,
                       epochs_run=0, cost_s=0.0, budget_s=share)
    if share is not None and share <= 0.0:
        base.stopped = "budget"
        return base
    t0 = time.perf_counter()
    whole = None
    steps = [0]  # the last optimiser step of the method's last run (quiet: no progress bar to feed)

    def on_step(step: int, total: int, loss: float) -> None:
        steps[0] = step

    try:
        run = run_request(replace(checked, request=replace(req, probe_budget_s=share)), session, on_step=on_step)
        whole = _whole_run_fits(run, share, time.perf_counter() - t0)
        if whole is not None:
            full_req = replace(req, stop_after_epochs=None, probe_budget_s=whole)
            run = run_request(check_request(full_req), session, on_step=on_step)
    except TrainingError as exc:
        base.cost_s = round(time.perf_counter() - t0, 3)
        base.error, base.steps_run = str(exc), steps[0]
        return base
    result = _result(base, run, time.perf_counter() - t0, stop=k if whole is None else None)
    result.steps_run = steps[0]
    if result.measured and history is not None:
        result.run_id = _record(history, run)
    return result


def _whole_run_fits(run: Any, share: float | None, used: float) -> float | None:
    """What is left of ``share`` for the whole run when the probe stopped before the end of its
    schedule and the first epoch's training seconds x the schedule's epochs fit in it; else None."""
    schedule = int(run.hparams.get("epochs") or 0)
    if share is None or len(run.losses) >= schedule:
        return None
    first = next((p for p in run.curve if p.get("epoch") == 1), None)
    if first is None or first.get("train_s") is None:
        return None
    left = share - used
    return left if float(first["train_s"]) * schedule <= left else None


def _result(base: ProbeResult, run: Any, cost: float, stop: int | None) -> ProbeResult:
    """``base`` completed from the last run of the method (``stop``: the epochs it was asked to
    stop after; None for a whole run)."""
    from .runner import summarize

    epochs_run = len(run.losses)
    base.hparams = dict(run.hparams)
    base.epochs = int(run.hparams.get("epochs") or base.epochs)
    base.epochs_run, base.cost_s, base.curve = epochs_run, round(cost, 3), [dict(p) for p in run.curve]
    base.train_s = round(float(run.wall_time_s), 3)
    if epochs_run >= base.epochs:
        summary = summarize(run)
        base.measured, base.stopped = True, None
        base.id_gain, base.ood_change = summary["id_gain"], summary["ood_change"]
    else:
        base.stopped = "epochs" if stop is not None and epochs_run >= stop else "budget"
    return base


def _record(history: Any, run: Any) -> str | None:
    """Record a measured whole run; None (and a warning) when the history cannot be written."""
    try:
        history.check_writable()
        return history.record_run(run)
    except HistoryError as exc:
        print(f"Warning: the measured {run.method} run was not recorded: {exc}", file=sys.stderr)
        return None


def _progress_line(r: ProbeResult) -> str:
    if r.error:
        return f"probe {r.method}: failed after {r.cost_s:.1f} s: {r.error}"
    if r.steps_run == 0:
        return f"probe {r.method}: not run, the budget was spent"
    if r.epochs_run == 0:
        return (f"probe {r.method}: stopped by the budget inside epoch 1 after {r.steps_run} step(s) in {r.cost_s:.1f} s"
                + (f" (share {r.budget_s:.1f} s)" if r.budget_s is not None else "") + ": no epoch point")
    last = r.curve[-1] if r.curve else {}
    val = last.get("val_acc")
    what = {None: "the whole run, measured", "epochs": "probe", "budget": "stopped by the budget"}[r.stopped]
    text = (f"probe {r.method}: {r.epochs_run} of {r.epochs} epochs in {r.cost_s:.1f} s ({what}"
            + (f"; share {r.budget_s:.1f} s" if r.budget_s is not None else "") + ")")
    if val is not None:
        text += f", validation accuracy {val:.3f} at epoch {last.get('epoch')}"
    if r.measured and r.id_gain is not None:
        text += f", ID gain {r.id_gain:+.3f}"
    return text
