"""Errors a user can cause.

Every exception a user can trigger with bad input is an ``AdvisorError`` with a one-line
message; the CLI prints ``Error: <message>`` and exits 1. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (the type alone when there is no message): how a
    caught exception is shown inside a one-line error or warning."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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


class TrainingError(AdvisorError):
    """A fine-tuning run cannot start or cannot finish (bad hyper-parameters, shots too large)."""


class RecommendError(AdvisorError):
    """Bad recommend arguments (objective, constraints, shots, device)."""


class PredictorError(AdvisorError):
    """No usable predictor, or one trained on features that do not match."""


class ConfigError(AdvisorError):
    """A setting that this machine cannot honour: an unknown or absent device, a bad cache size."""
