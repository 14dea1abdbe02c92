"""The plain data types that cross plugin boundaries.

Plugins receive and return only what is defined here (plus numpy arrays and torch tensors), so
a metric, tuner, dataset or model written by a third party never needs to import the CLI or the
history database. Data flows one way: ModelSpec + DatasetSpec -> Embeddings -> signals ->
predictor -> recommendation; ``advisor run``: DatasetBundle -> TrainContext -> Adapted -> RunResult.

One module per concept: ``requests`` (ModelSpec, DatasetSpec), ``datasets``, ``models``,
``embeddings`` (Embeddings, Metric), ``recommend`` (RecommendRequest), ``run`` (RunRequest), ``tuners`` (TrainContext ... RunResult), ``hashing``.
Import every name from ``advisor.specs``: the modules are where they are defined.
"""

from .datasets import WIDE_MODES, DatasetBundle, DatasetSource, ImageSet, to_rgb
from .embeddings import Embeddings, Metric
from .hashing import stable_hash
from .models import ModelSource, VisionLanguageModel
from .recommend import RecommendRequest
from .requests import DatasetSpec, ModelSpec
from .run import RunRequest
from .tuners import LOOP_HPARAMS, TUNER_FAMILIES, Adapted, EpochEnd, HParam, RunResult, TrainContext, TrainResult, Tuner

__all__ = ["LOOP_HPARAMS", "TUNER_FAMILIES", "WIDE_MODES", "Adapted", "DatasetBundle", "DatasetSource", "DatasetSpec", "Embeddings", "HParam",
           "EpochEnd", "ImageSet", "Metric", "ModelSource", "ModelSpec", "RecommendRequest", "RunRequest", "RunResult", "TrainContext", "TrainResult", "Tuner",
           "VisionLanguageModel", "stable_hash", "to_rgb"]
