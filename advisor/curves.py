"""Learning curves: what a run looked like along the way, recorded with the run.

A probe (``advisor recommend --probe``) runs the first epochs of a method's real schedule; the
predictor compares that start with the same first epochs of the history's runs, so every run
records its curve at a fixed set of epochs (``curve_epochs``): 1, 2 and 5 (the probe lengths),
half and all of the schedule. At each such epoch a point holds

- ``train_loss``: the epoch's mean training loss (every epoch's is in the run's ``losses`` too);
- ``val_acc``: top-1 accuracy on a validation part of the *training split* that the run's shots
  do not use (``validation_part``; never the test sample), None when no image is left over;
- ``ood_proxy_acc``: the mean top-1 accuracy over a small fixed out-of-domain sample (the first
  ``OOD_PROXY_PER_SET`` images of each OOD reference set's test sample): how forgetting starts;
- ``train_s``: seconds of training up to that point (measurements excluded), which is what a
  probe of that length costs.

Point 0 is the untouched model. Measuring never changes the run: the model stays in ``eval()``
mode, no gradient is taken and no random number is drawn, so a run with a curve trains exactly
as one without (a test checks the adapters are bit-identical).

What it costs: prompt methods leave the image tower as it was (checked bitwise on a few images),
and an ``Adapted`` with ``image_features_from(base_features)`` (TPC-CMA's maps on the frozen
features) derives its features from the cached ones, so neither encodes an image; methods that
change the tower encode the validation and proxy images (at most ``VAL_MAX`` +
``OOD_PROXY_PER_SET`` per reference set) at each point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .specs import EpochEnd, ImageSet

#: Bump when what a point means changes; stored in every run's provenance.
CURVE_VERSION = "1"
#: At most this many validation images (stratified; at least ``VAL_MIN_PER_CLASS`` per class).
VAL_MAX = 100
VAL_MIN_PER_CLASS = 2
VAL_SEED = 1
#: Out-of-domain proxy: this many images of each reference set's fixed test sample.
OOD_PROXY_PER_SET = 20
#: Images whose features decide whether the image tower changed since the start (bitwise).
TOWER_PROBE = 4
PROBE_EPOCHS = (1, 2, 5)
FRACTIONS = (0.5, 1.0)


def curve_epochs(epochs: int) -> list[int]:
    """The epochs (1-based) after which a run of ``epochs`` epochs records a point."""
    epochs = int(epochs)
    marks = set(PROBE_EPOCHS) | {max(1, math.ceil(epochs * f)) for f in FRACTIONS}
    return sorted(e for e in marks if 1 <= e <= epochs)


def validation_part(train: ImageSet, shots_part: ImageSet, n_classes: int) -> ImageSet | None:
    """Images of the training split that the run does not train on, stratified, at most
    ``VAL_MAX`` (at least ``VAL_MIN_PER_CLASS`` per class where the class has them); None when
    the shots use every training image."""
    from .data import sample

    used = set(shots_part.ids)
    rest = np.array([i for i, item in enumerate(train.ids) if item not in used], dtype=np.int64)
    if rest.size == 0:
        return None
    left = train.subset(rest)
    cap = max(VAL_MAX, VAL_MIN_PER_CLASS * max(n_classes, 1))
    return sample(left, min(cap, len(left)), VAL_SEED)


@dataclass
class ProxySet:
    """A small evaluation set with the untouched model's image features (for reuse while the
    tuner leaves the image tower as it was)."""

    name: str
    class_names: list[str]
    template: str
    pixels: Any
    labels: np.ndarray
    base_features: Any


@dataclass
class CurveRecorder:
    """``TrainContext.on_epoch`` for the runner: records the points of ``curve_epochs``.

    ``val`` and ``ood`` are ProxySets; ``probe_pixels``/``probe_base`` decide, bitwise, whether the
    image tower still encodes as the untouched model did (then the cached features are used)."""

    val: ProxySet | None
    ood: Sequence[ProxySet]
    base_adapted: Any
    points: list[dict[str, Any]] = field(default_factory=list)
    measure_s: float = 0.0
    _probe_base: Any = None

    def start(self, first: dict[str, Any] | None = None) -> None:
        """Point 0: the untouched model (its accuracies come from the cached features), or
        ``first``, the same point measured already (the probes of one pair share it)."""
        t0 = time.perf_counter()
        if first is not None:
            self.points = [dict(first)]
        else:
            val = self._accuracy(self.val, self.base_adapted, reuse=True) if self.val is not None else None
            ood = self._ood(self.base_adapted, reuse=True)
            self.points = [point(0, 0, None, val, ood, 0.0)]
        probe = self._probe_pixels()
        if probe is not None:
            self._probe_base = _features(self.base_adapted, probe)
        self.measure_s += time.perf_counter() - t0

    def __call__(self, end: EpochEnd) -> None:
        if end.epoch not in curve_epochs(end.epochs):
            return
        t0 = time.perf_counter()
        val = ood = None
        if end.adapted is not None:
            derive = getattr(end.adapted, "image_features_from", None)
            reuse = derive is None and self._tower_unchanged(end.adapted)
            val = self._accuracy(self.val, end.adapted, reuse, derive) if self.val is not None else None
            ood = self._ood(end.adapted, reuse, derive)
        self.points.append(point(end.epoch, end.step, end.loss, val, ood, end.train_s))
        self.measure_s += time.perf_counter() - t0

    # ---------------------------------------------------------------------------------------

    def _probe_pixels(self) -> Any:
        src = self.val if self.val is not None else (self.ood[0] if self.ood else None)
        return None if src is None else src.pixels[:TOWER_PROBE]

    def _tower_unchanged(self, adapted: Any) -> bool:
        import torch

        probe = self._probe_pixels()
        if probe is None or self._probe_base is None:
            return False
        now = _features(adapted, probe)
        return now.shape == self._probe_base.shape and bool(torch.equal(now, self._probe_base))

    def _ood(self, adapted: Any, reuse: bool, derive: Any = None) -> float | None:
        accs = [self._accuracy(s, adapted, reuse, derive) for s in self.ood]
        return float(np.mean(accs)) if accs else None

    @staticmethod
    def _accuracy(s: ProxySet, adapted: Any, reuse: bool, derive: Any = None) -> float:
        import torch

        from .tuning import measure_pixels

        feats = s.base_features if reuse else None
        if derive is not None:
            with torch.no_grad():
                feats = torch.as_tensor(derive(s.base_features)).float().cpu()
        return measure_pixels(adapted, s.pixels, s.labels, s.class_names, s.template, image_features=feats)[0]


def _features(adapted: Any, pixels: Any) -> Any:
    import torch

    with torch.no_grad():
        return torch.as_tensor(adapted.encode_image(pixels)).float().cpu()


def point(epoch: int, step: int, loss: float | None, val: float | None, ood: float | None,
          train_s: float) -> dict[str, Any]:
    """One curve point as stored (JSON-ready; None where not measured)."""
    return {"epoch": int(epoch), "step": int(step),
            "train_loss": None if loss is None else float(loss),
            "val_acc": None if val is None else float(val),
            "ood_proxy_acc": None if ood is None else float(ood),
            "train_s": round(float(train_s), 4)}
