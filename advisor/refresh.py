"""Recompute a history's signal sets with the metrics as they are now.

A long history build (``sweeps/registry.toml``) outlives metric fixes: the runs measured weeks
ago still point at signal sets computed by older metric code. ``refresh_signals`` recomputes the
signals of every (model, dataset) pair that has runs, with the same protocol as ``advisor run``
(the pair's training split, seed 0), stores the new set and points the pair's runs at it, one
transaction per pair. The measurements of the runs themselves are untouched.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from .specs import DatasetSpec, ModelSpec


def refresh_signals(db: str | None, *, device: str | None = None, dry_run: bool = False,
                    only_stale: bool = True, echo: Callable[[str], None] | None = None,
                    metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per pair: model, dataset, runs, and what was done (``refreshed`` with the new
    signal set id, ``current`` when its versions already match the registered metrics, or
    ``would-refresh`` in a dry run).

    ``metrics`` recomputes only those metrics (on every pair, or the stale ones) and keeps the
    pair's other stored signals as they are, in the new set: how a history takes in a metric
    plugin added after its runs, without recomputing everything (and without layer states
    unless a named metric needs them)."""
    from .history import open_history
    from .plugins import get_metrics
    from .signals import compute_signals

    say = echo or (lambda m: print(m, file=sys.stderr, flush=True))
    history = open_history(db)
    if not dry_run:
        history.check_writable()
    registered = get_metrics()
    unknown = sorted(set(metrics or []) - set(registered))
    if unknown:
        from .errors import UnknownNameError

        raise UnknownNameError(f"unknown metric(s) {', '.join(unknown)} (registered: {', '.join(sorted(registered))})")
    current_versions = {name: str(getattr(m, "version", "")) for name, m in registered.items()
                        if not metrics or name in metrics}
    rows = history.training_rows()
    # Every run's versions, not the first run's: a pair whose runs were recorded by two code
    # versions (a sweep re-pinned midway) points at two signal sets, and is stale if either is.
    versions_by_pair: dict[tuple[str, str], list[dict[str, str]]] = {}
    kept_by_pair: dict[tuple[str, str], tuple[dict[str, float], dict[str, str]]] = {}
    for r in rows:
        key = (str(r.get("model")), str(r.get("dataset")))
        versions = dict(r.get("signal_versions") or {})
        if versions not in versions_by_pair.setdefault(key, []):
            versions_by_pair[key].append(versions)
        kept_by_pair[key] = (dict(r.get("signals") or {}), versions)  # the newest run's merged signals
    out = []
    pairs = history.pairs()
    for i, pair in enumerate(pairs, 1):
        md, dd = pair["model_desc"], pair["dataset_desc"]
        entry: dict[str, Any] = {"model": md["name"], "dataset": dd["name"], "runs": pair["runs"]}
        stale = sorted({m for stored in versions_by_pair.get((md["name"], dd["name"]), [])
                        for m in _stale_metrics(stored, current_versions)})
        if only_stale and not stale:
            entry["status"] = "current"
            out.append(entry)
            continue
        entry["stale_metrics"] = stale
        if dry_run:
            entry["status"] = "would-refresh"
            out.append(entry)
            continue
        say(f"[{i}/{len(pairs)}] {md['name']} on {dd['name']}: recomputing ({', '.join(stale) or 'all'})")
        spec = ModelSpec(md["name"], md.get("pretrained"), md.get("image_size"))
        if metrics:
            needs_layers = any("layers" in getattr(registered[m], "needs", ()) for m in metrics)
            sig = compute_signals(spec, DatasetSpec(dd["name"]), seed=0, device=device, quiet=True,
                                  metrics=list(metrics), with_layers=needs_layers)
            mine = set(sig.values)
            kept_values, kept_versions = kept_by_pair.get((md["name"], dd["name"]), ({}, {}))
            # A kept signal a recomputed metric no longer reports is dropped with its metric.
            owned = {k for k in kept_values if any(k == m or k.startswith(m + "_") for m in metrics)}
            values = {k: v for k, v in kept_values.items() if k not in owned and k not in mine}
            versions = {k: v for k, v in kept_versions.items() if k in values}
            values.update(sig.values)
            versions.update(sig.versions)
            seconds = dict(sig.seconds)
        else:
            sig = compute_signals(spec, DatasetSpec(dd["name"]), seed=0, device=device, quiet=True)
            values, versions, seconds = dict(sig.values), dict(sig.versions), dict(sig.seconds)
        ss_id = history.store_signal_set(md, dd, sig.meta.get("split_hash"), values, versions, seconds)
        entry["runs_repointed"] = history.use_signal_set(ss_id)
        entry["signal_set_id"] = ss_id
        entry["status"] = "refreshed"
        out.append(entry)
    history.close()
    return out


def _stale_metrics(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """Metrics whose stored signals (``name`` or ``name_*``) carry another version than the
    registered metric's. A metric with no stored signal is not stale (it may not apply to the
    pair, e.g. MIR without layer states); ``--all`` recomputes those too."""
    out = []
    for metric, version in current.items():
        mine = [v for sig, v in stored.items() if sig == metric or sig.startswith(metric + "_")]
        if any(v != version for v in mine):
            out.append(metric)
    return sorted(out)
