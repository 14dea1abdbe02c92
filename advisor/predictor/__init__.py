"""The learned predictor: LightGBM over the run history, and its honest evaluation.

One module per concept, data flowing downwards:

- ``rows``: history rows -> identities (dataset, model, method, shots) and the three targets;
- ``features``: the feature schema (signals, descriptors, method, shots, device);
- ``trees``: LightGBM's text format evaluated with numpy (predictions, exact TreeSHAP);
- ``spaces``: the feasible / extrapolating spaces the targets are learned in, and back;
- ``support``: what the history covers, and the out-of-support flags of a case;
- ``intervals``: conformal intervals from out-of-fold residuals;
- ``stored``: ``FittedPredictor``, the stored predictor (JSON, numpy only: no LightGBM or
  scikit-learn import at ``advisor recommend`` time);
- ``estimator``: ``AdvisorPredictor``, the scikit-learn estimator that fits one;
- ``baselines`` and ``evaluation``: held-out scores (dataset, source or tower) beside the baselines;
- ``training``: fit on a history and store.

Names are re-exported here lazily (PEP 562), so ``from advisor.predictor import X`` imports
only the module that defines ``X``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The name the predictor is stored under in a history (``predictor train`` writes it;
#: ``recommend``, ``report`` and ``predictor show`` read it). Here, not in a submodule, so
#: reading it imports nothing heavy.
DEFAULT_PREDICTOR = "default"

_WHERE = {
    "rows": ("HOLDOUT_KEYS", "TARGETS", "as_dict", "as_float", "cost_offset", "device_kind", "headroom_share",
             "row_dataset", "row_family", "row_method", "row_model", "row_shots", "row_signals", "row_source",
             "row_targets", "row_tower", "row_zero_shot", "seed_noise", "share_to_gain", "targets_matrix",
             "training_hash"),
    "features": ("ANCHOR_PREFIX", "CATEGORICAL", "CORE_FEATURES", "DOMAIN_PREFIX", "FEATURE_SETS", "HPARAM_PREFIX", "SIGNAL_PREFIX",
                 "FeatureSchema", "core_values", "feature_ranges", "pretty_feature", "row_hparam_values"),
    "anchors": ("ANCHOR_FEATURES", "anchor_at", "row_anchor", "row_anchor_values"),
    "claims": ("claims", "claims_table"),
    "trees": ("TreeEnsemble",),
    "stored": ("FORMAT", "FittedPredictor"),
    "estimator": ("AdvisorPredictor",),
    "spaces": ("GAIN_SPACES", "MONOTONE_SUPPORT", "model_targets", "shots_monotone", "to_targets"),
    "support": ("WIDENING_PER_FLAG", "HistorySupport", "exact"),
    "intervals": ("bag_spread", "calibrate", "coverage", "group_folds", "half_width", "score_quantile"),
    "baselines": ("IIMM_SIGNAL", "AnchorOffset", "BestSingleMethod", "IIMMLinear", "LinearInOne", "SignalKNN",
                  "ZeroShotLinear"),
    "evaluation": ("CALIBRATION_LEVELS", "HOLDOUT_MODES", "RECOMMENDERS", "EvaluationError", "ablation", "clean_json",
                   "evaluate",
                   "evaluate_lodo", "holdout_folds", "lodo_folds", "mae", "objective_value", "spearman"),
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
