"""The learned predictor: LightGBM over the run history, and its honest evaluation.

One module per concept, data flowing downwards:

- ``rows``: history rows -> identities (dataset, model, method, shots) and the three targets;
- ``features``: the feature schema (signals, descriptors, method, shots, device);
- ``trees``: LightGBM's text format evaluated with numpy (predictions, exact TreeSHAP);
- ``stored``: ``FittedPredictor``, the stored predictor (JSON, numpy only: no LightGBM or
  scikit-learn import at ``advisor recommend`` time);
- ``estimator``: ``AdvisorPredictor``, the scikit-learn estimator that fits one;
- ``baselines`` and ``evaluation``: leave-one-dataset-out scores beside the baselines;
- ``training``: fit on a history and store.

Names are re-exported here lazily (PEP 562), so ``from advisor.predictor import X`` imports
only the module that defines ``X``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "rows": ("TARGETS", "as_dict", "as_float", "device_kind", "row_dataset", "row_method", "row_model",
             "row_shots", "row_signals", "row_targets", "targets_matrix", "training_hash"),
    "features": ("CATEGORICAL", "CORE_FEATURES", "DOMAIN_PREFIX", "SIGNAL_PREFIX", "FeatureSchema",
                 "core_values", "feature_ranges", "pretty_feature"),
    "trees": ("TreeEnsemble",),
    "stored": ("FORMAT", "FittedPredictor"),
    "estimator": ("AdvisorPredictor",),
    "baselines": ("IIMM_SIGNAL", "IIMMLinear", "SignalKNN"),
    "evaluation": ("KNOWN_METHODS", "clean_json", "evaluate_lodo", "lodo_folds", "mae", "method_order",
                   "objective_value", "spearman"),
    "training": ("MIN_DATASETS", "MIN_RUNS", "history_ready", "train_predictor"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
