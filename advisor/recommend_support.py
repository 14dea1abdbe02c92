"""How much of the history looks like a pair, read from the training rows themselves: the
summary counts (``support_for``), the configurations the history ran each method with
(``history_configs``) and the similar runs (``similar_runs``). ``advisor.predictor.support``
answers the same questions from the summary stored with a predictor, without reading every run.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def support_for(
    model_desc: Mapping[str, Any], dataset_desc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """(summary counts, warnings about the dataset's domain), counted as a stored summary counts."""
    from .predictor.support import support_groups, support_summary

    return support_summary(support_groups(rows), len(rows), model_desc, dataset_desc)


def history_configs(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], shots: int | None) -> dict[str, dict[str, Any]]:
    """Per method, the configuration its predictions are for: the most common resolved
    hyper-parameters of its runs in the history at these shots (else at the nearest shots it
    has runs at, as the cost model's epochs). Methods without runs are left out."""
    return {m: c[0] for m, c in config_candidates(rows, methods, shots).items()}


def config_candidates(rows: Sequence[Mapping[str, Any]], methods: Sequence[str],
                      shots: int | None) -> dict[str, list[dict[str, Any]]]:
    """Per method, every configuration its runs used at these shots (else at the nearest
    shots), most used first: what ``recommend`` searches among, with the tuner's declared
    search space within the same ranges."""
    from .predictor.support import config_counts, configs_by_count

    return configs_by_count(config_counts(rows), methods, shots)


def similar_runs(case: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, list[str]]:
    """Per method, the history runs that really are similar to ``case``: the same image tower
    or model family, and (signals, log2 shots) within the history's own typical distance
    between neighbouring datasets (the median, over the history's (model, dataset) pairs, of
    the standardised distance to the nearest pair of another dataset). Labels say which runs,
    with the hyper-parameters and seed where they differ among a method's similar runs (two
    runs that differ only in epochs or lr do not read as the same run twice)."""
    from .predictor import SignalKNN, row_dataset, row_family, row_method, row_model, row_tower
    from .predictor.support import neighbour_radius, similar_run_labels, similar_to

    out: dict[str, list[str]] = {m: [] for m in methods}
    if not rows:
        return out
    knn = SignalKNN().fit(rows)
    radius = neighbour_radius(knn, rows)
    d = knn.distances(case)
    similar = similar_to(case, radius)
    picked: dict[str, list[Mapping[str, Any]]] = {m: [] for m in methods}
    for i, r in enumerate(rows):
        if row_method(r) in out and similar(row_tower(r), row_family(r), d[i]):
            picked[row_method(r)].append(r)
    for m, runs in picked.items():
        out[m].extend(similar_run_labels(runs, lambda r: (row_model(r).split("|")[0], row_dataset(r))))
    return out


class HistoryEvidence:
    """The history as ``recommend`` reads it: the bounded view of a stored predictor's summary
    (``advisor.predictor.support.bounded_view``) when there is one, else every training row.
    Each question is asked the same way whichever it holds."""

    def __init__(self, history: Any, view: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        self.history, self.view, self.rows = history, view, list(rows)

    def support_for(self, model_desc: Mapping[str, Any], dataset_desc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        if self.view is not None:
            return self.view.support_for(model_desc, dataset_desc)
        return support_for(model_desc, dataset_desc, self.rows)

    def stored_predictor(self, name: str) -> Any:
        return self.view.stored if self.view is not None else self.history.load_predictor(name)

    def changed_since(self, training_hash: str) -> bool:
        """Whether runs or signals were added since a predictor with ``training_hash`` was trained."""
        if self.view is not None:
            return self.view.changed()
        from .predictor import training_hash as hash_of

        return bool(self.rows) and training_hash != hash_of(self.rows)

    def count(self) -> int:
        return self.view.count() if self.view is not None else len(self.rows)

    def device_rows(self) -> Sequence[Mapping[str, Any]]:
        return self.view.device_rows() if self.view is not None else self.rows

    def similar_runs(self, case: Mapping[str, Any], methods: Sequence[str]) -> dict[str, list[str]]:
        if self.view is not None:
            return self.view.similar_runs(case, methods)
        return similar_runs(case, self.rows, methods)

    def history_configs(self, methods: Sequence[str], shots: int | None) -> dict[str, dict[str, Any]]:
        if self.view is not None:
            return self.view.history_configs(methods, shots)
        return history_configs(self.rows, methods, shots)

    def config_candidates(self, methods: Sequence[str], shots: int | None) -> dict[str, list[dict[str, Any]]]:
        if self.view is not None:
            return self.view.config_candidates(methods, shots)
        return config_candidates(self.rows, methods, shots)

    def shot_counts(self, method: str) -> list[int]:
        """The shot counts the history ran ``method`` at."""
        if self.view is not None:
            return sorted(int(s) for s, _ in self.view.summary.configs.get(method, []) if s is not None)
        from .predictor import row_method, row_shots

        return sorted({s for r in self.rows if row_method(r) == method and (s := row_shots(r)) is not None})

    def seed_noise(self) -> Any:
        if self.view is not None:
            return self.view.seed_noise
        from .predictor import seed_noise

        return seed_noise(self.rows)
