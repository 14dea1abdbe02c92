"""Errors a user can cause.

Every exception a user can trigger with bad input is an ``AdvisorError`` with a one-line
message; the CLI prints ``Error: <message>`` and exits 1. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class AdvisorError(Exception):
    """Base class: a one-line, user-facing problem."""


class UnknownNameError(AdvisorError):
    """An unknown model, dataset, metric or tuner name."""


class DatasetError(AdvisorError):
    """A dataset that cannot be used: missing files, corrupt images, empty classes, bad labels."""


class ModelLoadError(AdvisorError):
    """Weights or a model definition that cannot be loaded."""


class HistoryError(AdvisorError):
    """The run-history database cannot be opened, read or written."""


class InputFileError(AdvisorError):
    """A user-supplied file (history import, embeddings .npz) is malformed."""


class MetricError(AdvisorError):
    """A metric plugin failed or returned something that is not a finite float."""


class TrainingError(AdvisorError):
    """A fine-tuning run cannot start or cannot finish (bad hyper-parameters, shots too large)."""


class PredictorError(AdvisorError):
    """No usable predictor, or one trained on features that do not match."""


class ConfigError(AdvisorError):
    """A setting that this machine cannot honour: an unknown or absent device, a bad cache size."""
