"""The shape of one run as a flat row: the import/export columns and how a stored run becomes one.

One row per run (documented in docs/history.md): the ``RunResult`` fields, ``recorded_at``, the
model and dataset descriptors as ``model.<field>`` / ``dataset.<field>``, the run's signal set as
one ``signal.<name>`` column per metric plus ``signal_versions`` and ``signal_seconds``. The
column list is the single description of that shape: validation (``validate.py``), files
(``io.py``) and the store's read side (``flat_row`` here) all follow it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from dataclasses import fields as dc_fields
from typing import TYPE_CHECKING, Any, Mapping

from ..specs import RunResult

if TYPE_CHECKING:  # the shapes below read stored rows by attribute: ORM objects or plain ones
    from .schema import Dataset, Model, Run

INT32_MAX = 2**31 - 1  # INTEGER columns: 32-bit on PostgreSQL, so the limit on every backend
INT64_MAX = 2**63 - 1  # BIGINT columns (parameter counts)


@dataclass(frozen=True)
class Column:
    """One flat column: its name, value kind, whether it must be present and non-empty, and
    the range allowed (for numbers)."""

    name: str
    kind: str  # text | int | float | acc | bool | time | object | acc_map | float_map | text_map | float_list | text_list | curve
    required: bool = False
    minimum: float | None = None
    help: str = ""
    maximum: int | None = None  # for ints: what the column's SQL type holds


COLUMNS: tuple[Column, ...] = (
    Column("run_id", "text", help="unique id; generated from the configuration and seed when empty"),
    Column("recorded_at", "time", help="ISO 8601 time the run was recorded (UTC); now when empty"),
    Column("model", "text", True, help="model name (lit-offline, ViT-B-32, hf-hub:...)"),
    Column("pretrained", "text", help="open_clip pretrained tag or checkpoint"),
    Column("dataset", "text", True, help="dataset name"),
    Column("method", "text", True, help="fine-tuning method (tuner name)"),
    Column("shots", "int", minimum=1, maximum=INT32_MAX, help="training images per class; empty: all"),
    Column("seed", "int", True, minimum=-INT32_MAX - 1, maximum=INT32_MAX, help="seed of the run"),
    Column("hparams", "object", help="hyper-parameters (JSON object)"),
    Column("split_hash", "text", help="hash of the training items used"),
    Column("id_acc_before", "acc", True, help="in-domain accuracy before fine-tuning, in [0, 1]"),
    Column("id_acc_after", "acc", True, help="in-domain accuracy after fine-tuning, in [0, 1]"),
    Column("ood_before", "acc_map", help="reference set -> accuracy before (JSON object)"),
    Column("ood_after", "acc_map", help="reference set -> accuracy after (JSON object)"),
    Column("gap_before", "float", help="modality gap before"),
    Column("gap_after", "float", help="modality gap after"),
    Column("wall_time_s", "float", minimum=0, help="training wall time in seconds"),
    Column("train_images_per_s", "float", minimum=0, help="training throughput"),
    Column("peak_memory_mb", "float", minimum=0, help="peak accelerator/host memory in MB"),
    Column("trainable_params", "int", minimum=0, maximum=INT64_MAX, help="number of trained parameters"),
    Column("device", "text", help="cpu, cuda, ..."),
    Column("provenance", "object", help="versions and git sha (JSON object)"),
    Column("losses", "float_list", help="training losses (JSON list)"),
    Column("curve", "curve", help="learning-curve points (JSON list of objects: epoch, step, train_loss, val_acc, "
                                  "ood_proxy_acc, train_s); empty for runs recorded without one"),
    Column("adapter_path", "text", help="where the trained adapter was saved"),
    Column("model.image_size", "int", minimum=1, maximum=INT32_MAX, help="working resolution in pixels"),
    Column("model.family", "text"),
    Column("model.architecture", "text"),
    Column("model.params", "int", minimum=0, maximum=INT64_MAX),
    Column("model.embed_dim", "int", minimum=1, maximum=INT32_MAX),
    Column("model.source", "text"),
    Column("model.extra", "object", help="other model descriptors (JSON object)"),
    Column("dataset.fingerprint", "text"),
    Column("dataset.n_classes", "int", minimum=1, maximum=INT32_MAX),
    Column("dataset.n_train", "int", minimum=0, maximum=INT32_MAX),
    Column("dataset.n_test", "int", minimum=0, maximum=INT32_MAX),
    Column("dataset.domain", "text_list", help="domain tags (JSON list of strings)"),
    Column("dataset.mean_side_px", "float", minimum=0),
    Column("dataset.is_grayscale", "bool"),
    Column("dataset.extra", "object", help="other dataset descriptors (JSON object)"),
    Column("signal_versions", "text_map", help="signal name -> metric version (JSON object)"),
    Column("signal_seconds", "float_map", help="signal name -> seconds spent (JSON object)"),
)
SIGNAL_PREFIX = "signal."
SIGNAL_COLUMN = Column("signal.*", "float", help="one column per signal: its value")
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
REQUIRED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)

MODEL_FIELDS = ("image_size", "family", "architecture", "params", "embed_dim", "source")
DATASET_FIELDS = ("fingerprint", "n_classes", "n_train", "n_test", "domain", "mean_side_px", "is_grayscale")
# RunResult fields that are not one column each (they live in the descriptor/signal columns).
NESTED_FIELDS = ("signals", "signal_versions", "model_desc", "dataset_desc")


def column_for(name: str) -> Column | None:
    """The column a flat key belongs to (``signal.<name>`` for any valid signal name)."""
    if name in BY_NAME:
        return BY_NAME[name]
    if name.startswith(SIGNAL_PREFIX) and valid_signal_name(name[len(SIGNAL_PREFIX):]):
        return SIGNAL_COLUMN
    return None


def valid_signal_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*", name))


@dataclass
class ImportRecord:
    """A validated row, ready for ``History.add_records``."""

    label: str  # "file.csv row 3": how errors name it
    run: RunResult
    recorded_at: str | None
    signal_seconds: dict[str, float]
    config: str | None = None  # its configuration hash, once computed (``keys.config_hash``)


#: Types ``jsonable`` returns as they are: tested with ``type(v) in``, so the leaves of a large
#: value (a learning curve's floats) cost no call each.
_LEAVES = frozenset({str, int, float, bool, type(None)})


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples, sets and paths -> plain JSON types (recursively)."""
    if isinstance(obj, dict):
        return {k if type(k) is str else str(k): v if type(v) in _LEAVES else jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [v if type(v) in _LEAVES else jsonable(v) for v in items]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy scalar
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    tolist = getattr(obj, "tolist", None)  # numpy array
    if callable(tolist):
        return jsonable(tolist())
    return str(obj)


# ------------------------------------------------------------------------------- stored run -> row


def run_fields(r: Run) -> dict[str, Any]:
    """The RunResult fields of a stored run (without signals and descriptors)."""
    out: dict[str, Any] = {}
    for f in dc_fields(RunResult):
        if f.name in NESTED_FIELDS:
            continue
        if f.name == "model":
            out["model"] = r.model.name
        elif f.name == "pretrained":
            out["pretrained"] = r.model.pretrained
        elif f.name == "dataset":
            out["dataset"] = r.dataset.name
        else:
            out[f.name] = getattr(r, f.name)
    out["curve"] = out.get("curve") or []  # NULL: recorded before runs had curves
    return out


def model_desc(m: Model) -> dict[str, Any]:
    """A stored model's descriptors as one dict (columns and extras)."""
    d: dict[str, Any] = {"name": m.name, "pretrained": m.pretrained}
    d.update({f: getattr(m, f) for f in MODEL_FIELDS})
    d.update(m.extra or {})
    return d


def dataset_desc(d: Dataset) -> dict[str, Any]:
    """A stored dataset's descriptors as one dict (columns and extras)."""
    out: dict[str, Any] = {"name": d.name}
    out.update({f: getattr(d, f) for f in DATASET_FIELDS})
    out.update(d.extra or {})
    return out


def flat_row(r: Run) -> dict[str, Any]:
    """A stored run as one flat row with every column of ``COLUMNS`` plus its signals."""
    fields = run_fields(r)
    values = r.signal_set.values if r.signal_set else []
    flat: dict[str, Any] = {}
    for col in COLUMNS:
        name = col.name
        if name == "recorded_at":
            flat[name] = r.created_at
        elif name.startswith("model."):
            f = name[len("model."):]
            flat[name] = (r.model.extra or {}) if f == "extra" else getattr(r.model, f)
        elif name.startswith("dataset."):
            f = name[len("dataset."):]
            flat[name] = (r.dataset.extra or {}) if f == "extra" else getattr(r.dataset, f)
        elif name == "signal_versions":
            flat[name] = {v.name: v.version for v in values if v.version is not None}
        elif name == "signal_seconds":
            flat[name] = {v.name: v.seconds for v in values if v.seconds is not None}
        else:
            flat[name] = fields[name]
    for v in values:
        flat[f"{SIGNAL_PREFIX}{v.name}"] = v.value
    return flat


def training_row(r: Run, signals: dict[str, tuple[float, str | None]]) -> dict[str, Any]:
    """One row of ``History.training_rows``: the run's fields, id and time, ``signals`` (name ->
    (value, version), already merged) and the stored descriptors."""
    row = run_fields(r)
    row.update(
        run_id=r.run_id,
        recorded_at=r.created_at,
        signals={k: v[0] for k, v in sorted(signals.items())},
        signal_versions={k: v[1] for k, v in sorted(signals.items()) if v[1] is not None},
        model_desc=model_desc(r.model),
        dataset_desc=dataset_desc(r.dataset),
    )
    return row


#: Run fields the predictor never reads: left out of ``lean`` training rows (a million runs'
#: learning curves and losses would otherwise dominate the memory of ``predictor train``).
LEAN_DROP = ("losses", "curve", "provenance", "adapter_path")


class TrainingRows:
    """Builds training rows one run at a time from plain column values (a SQL row), sharing
    what many runs have in common: one ``model_desc`` dict per model, one ``dataset_desc`` per
    dataset, one ``signals`` / ``signal_versions`` pair per (model, dataset, signal set). The
    rows are equal to ``training_row``'s; the shared dicts must not be modified by a consumer
    (the predictor only reads them). ``lean``: without ``LEAN_DROP``."""

    def __init__(self, models: dict[int, Any], datasets: dict[int, Any],
                 latest: dict[tuple[int, int], dict[str, tuple[float, str | None]]],
                 own: dict[int, dict[str, tuple[float, str | None]]], lean: bool = False) -> None:
        self.models, self.datasets, self.latest, self.own = models, datasets, latest, own
        self.lean = lean
        self._mdesc: dict[int, dict[str, Any]] = {}
        self._ddesc: dict[int, dict[str, Any]] = {}
        self._signals: dict[tuple[int, int, int | None], tuple[dict[str, float], dict[str, str]]] = {}
        self._fields = [f.name for f in dc_fields(RunResult) if f.name not in NESTED_FIELDS
                        and f.name not in ("model", "pretrained", "dataset")]

    def signals(self, model_id: int, dataset_id: int, set_id: int | None) -> tuple[dict[str, float], dict[str, str]]:
        key = (model_id, dataset_id, set_id)
        found = self._signals.get(key)
        if found is None:
            mine = self.own.get(set_id, {}) if set_id is not None else {}
            merged = sorted({**self.latest.get((model_id, dataset_id), {}), **mine}.items())
            found = ({k: v[0] for k, v in merged}, {k: v[1] for k, v in merged if v[1] is not None})
            self._signals[key] = found
        return found

    def row(self, r: Mapping[str, Any]) -> dict[str, Any]:
        """One training row from a mapping of the ``runs`` columns."""
        m, d = self.models[r["model_id"]], self.datasets[r["dataset_id"]]
        out: dict[str, Any] = {"model": m.name, "pretrained": m.pretrained, "dataset": d.name}
        for f in self._fields:
            if f == "curve":
                out[f] = r[f] or []
            else:
                out[f] = r[f]
        if self.lean:
            for f in LEAN_DROP:
                out.pop(f, None)
        mdesc = self._mdesc.get(m.id)
        if mdesc is None:
            mdesc = self._mdesc[m.id] = model_desc(m)
        ddesc = self._ddesc.get(d.id)
        if ddesc is None:
            ddesc = self._ddesc[d.id] = dataset_desc(d)
        sig, ver = self.signals(m.id, d.id, r["signal_set_id"])
        out.update(run_id=r["run_id"], recorded_at=r["created_at"], signals=sig, signal_versions=ver,
                   model_desc=mdesc, dataset_desc=ddesc)
        return out
