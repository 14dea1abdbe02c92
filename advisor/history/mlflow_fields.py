"""How a history row maps to an MLflow run, in both directions.

The default mapping names every history column after itself, in one MLflow namespace: the
configuration as params, the measured outcomes and the signals as metrics, provenance and the
advisor's bookkeeping as tags. Families of values (hyper-parameters, OOD sets, signals,
descriptors, provenance) become one key per member (``params.hparams.lr``,
``metrics.ood_after.digits``, ``metrics.signal.iimm``), so MLflow can compare and filter them.
The same rules read the run back, so export -> import reproduces the row exactly; ``--map``
rules let other teams' runs in. docs/history.md documents the table.

Params and tags are strings. A scalar column is written as a CSV cell would be (and read back
through the same validation as ``history add``); a family member is written raw when it is text
that could not be mistaken for JSON, else as JSON, and read back the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdvisorError
from . import io as hio

PARAMS, METRICS, TAGS = "params", "metrics", "tags"
NAMESPACES = (PARAMS, METRICS, TAGS)

#: Scalar columns and where the default mapping keeps them (namespace, MLflow key).
SCALARS: dict[str, tuple[str, str]] = {
    "model": (PARAMS, "model"),
    "pretrained": (PARAMS, "pretrained"),
    "dataset": (PARAMS, "dataset"),
    "method": (PARAMS, "method"),
    "shots": (PARAMS, "shots"),
    "seed": (PARAMS, "seed"),
    "split_hash": (PARAMS, "split_hash"),
    "device": (PARAMS, "device"),
    "id_acc_before": (METRICS, "id_acc_before"),
    "id_acc_after": (METRICS, "id_acc_after"),
    "gap_before": (METRICS, "gap_before"),
    "gap_after": (METRICS, "gap_after"),
    "wall_time_s": (METRICS, "wall_time_s"),
    "train_images_per_s": (METRICS, "train_images_per_s"),
    "peak_memory_mb": (METRICS, "peak_memory_mb"),
    "trainable_params": (METRICS, "trainable_params"),
    "losses": (METRICS, "loss"),  # one value per training step (the metric's history)
    "run_id": (TAGS, "advisor.run_id"),
    "recorded_at": (TAGS, "advisor.recorded_at"),
    "adapter_path": (TAGS, "advisor.adapter_path"),
}

#: Families: ``<family>.<member>`` fields, each member one MLflow key under the same prefix.
#: ``model.`` and ``dataset.`` members are descriptor columns or, when not a column, go to
#: ``model.extra`` / ``dataset.extra``.
FAMILIES: dict[str, str] = {
    "hparams": PARAMS,
    "model": PARAMS,
    "dataset": PARAMS,
    "ood_before": METRICS,
    "ood_after": METRICS,
    "signal": METRICS,
    "provenance": TAGS,
    "signal_versions": TAGS,
    "signal_seconds": TAGS,
}
#: Families stored as one JSON-object column.
_OBJECT_FAMILIES = ("hparams", "ood_before", "ood_after", "provenance", "signal_versions", "signal_seconds")
#: Metric-valued families: members are numbers, not JSON text.
_SERIES_FIELDS = ("losses",)

#: The learning curve (``advisor.curves``) travels as step metrics ``curve.<value>`` (step = epoch).
CURVE_PREFIX = "curve."
CURVE_VALUES = ("step", "train_loss", "val_acc", "ood_proxy_acc", "train_s")

#: Outcomes the MLflow plugin derives from a row and logs as metrics (``id_gain``,
#: ``ood_change``: ``advisor.predictor.rows.row_targets``); computed again, never read back.
DERIVED_METRICS = ("id_gain", "ood_change")

#: MLflow's limits (mlflow.utils.validation) and its key syntax on POSIX.
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_KEY_RE = re.compile(r"^[/\w.\- :]*$")


class MappingError(AdvisorError):
    """A ``--map KEY=FIELD`` rule that names no MLflow key or no history field."""


# ------------------------------------------------------------------------------- values


def scalar_text(value: Any) -> str:
    """A scalar column as text, exactly as ``history export`` writes a CSV cell."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return _json(value)
    return str(value)


def member_text(value: Any) -> str:
    """A family member (a hyper-parameter, a provenance entry) as text that reads back as the
    same JSON value: text stays raw unless it would parse as JSON (``"1"``, ``"true"``)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return _json(value)


def member_value(text: str) -> Any:
    """The inverse of ``member_text``: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def valid_key(key: str) -> bool:
    """Whether MLflow accepts ``key`` as a param, metric or tag name."""
    import posixpath

    if not key or len(key) > MAX_KEY_LENGTH or not _KEY_RE.match(key):
        return False
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


# ------------------------------------------------------------------------------- out: row -> MLflow


@dataclass
class MlflowRecord:
    """What one history row becomes in MLflow. ``rejected``: keys MLflow would refuse, with why."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    loss: list[float] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def curve_metrics(self) -> list[tuple[str, float, int]]:
        """The learning curve as MLflow step metrics: (``curve.<value>``, value, step = epoch)."""
        return [(f"{CURVE_PREFIX}{key}", float(p[key]), int(p["epoch"]))
                for p in self.curve for key in CURVE_VALUES if p.get(key) is not None]

    def put(self, namespace: str, key: str, value: Any) -> None:
        if not valid_key(key):
            self.rejected[f"{namespace}.{key}"] = "not a valid MLflow name"
            return
        if namespace == METRICS:
            self.metrics[key] = float(value)
            return
        text = value if isinstance(value, str) else scalar_text(value)
        limit = MAX_PARAM_LENGTH if namespace == PARAMS else MAX_TAG_LENGTH
        if len(text) > limit:
            self.rejected[f"{namespace}.{key}"] = f"value longer than MLflow's {limit} characters"
            return
        (self.params if namespace == PARAMS else self.tags)[key] = text


def to_mlflow(row: dict[str, Any]) -> MlflowRecord:
    """A flat history row (``History.get_run``) as MLflow params, metrics, tags and the loss
    series, by the default mapping."""
    out = MlflowRecord()
    for name, (namespace, key) in SCALARS.items():
        value = row.get(name)
        if name == "losses":
            out.loss = [float(v) for v in value or []]
            out.curve = [dict(p) for p in row.get("curve") or []]
        elif value is not None:
            out.put(namespace, key, value)
    for family in _OBJECT_FAMILIES:
        namespace = FAMILIES[family]
        for member, value in sorted((row.get(family) or {}).items()):
            out.put(namespace, f"{family}.{member}", value if namespace == METRICS else member_text(value))
    for prefix, fields in (("model", hio.MODEL_FIELDS), ("dataset", hio.DATASET_FIELDS)):
        for f in fields:
            value = row.get(f"{prefix}.{f}")
            if value is not None:
                out.put(PARAMS, f"{prefix}.{f}", scalar_text(value))
        for member, value in sorted((row.get(f"{prefix}.extra") or {}).items()):
            out.put(PARAMS, f"{prefix}.{member}", member_text(value))
    for name, value in sorted(row.items()):
        if name.startswith(hio.SIGNAL_PREFIX) and value is not None:
            out.put(METRICS, name, value)
    return out


# ------------------------------------------------------------------------------- in: MLflow -> row


@dataclass(frozen=True)
class Rule:
    """``source`` (``params.lr``, or a prefix ending in ``.`` / empty after the namespace for a
    wildcard) feeds ``target`` (a history field, or a family prefix for a wildcard)."""

    source: str
    target: str
    wildcard: bool = False
    user: bool = False


def default_rules() -> list[Rule]:
    rules = [Rule(f"{ns}.{key}", name) for name, (ns, key) in SCALARS.items()]
    rules += [Rule(f"{ns}.{family}.", f"{family}.", wildcard=True) for family, ns in FAMILIES.items()]
    return rules


def _check_target(target: str, wildcard: bool, rule: str) -> None:
    if wildcard:
        family = target[:-1]
        if family not in FAMILIES:
            raise MappingError(f"--map {rule}: {target}* is not a family of fields "
                               f"(use one of {', '.join(f + '.*' for f in FAMILIES)})")
        return
    if target in SCALARS or target in hio.BY_NAME:
        return
    family, _, member = target.partition(".")
    if family in FAMILIES and member:
        if family == "signal" and hio.column_for(target) is None:
            raise MappingError(f"--map {rule}: {member!r} is not a valid signal name")
        return
    known = ", ".join(list(SCALARS) + [f + ".NAME" for f in FAMILIES])
    raise MappingError(f"--map {rule}: unknown history field {target!r} (fields: {known})")


def parse_rules(items: Iterable[str]) -> list[Rule]:
    """``KEY=FIELD`` strings (``params.base_model=model``, ``params.*=hparams.*``) -> rules."""
    rules: list[Rule] = []
    targets: dict[str, str] = {}
    for item in items:
        key, sep, target = item.partition("=")
        key, target = key.strip(), target.strip()
        if not sep or not key or not target:
            raise MappingError(f"--map {item!r}: expected KEY=FIELD, e.g. params.base_model=model")
        namespace, _, rest = key.partition(".")
        if namespace not in NAMESPACES or (not rest and not key.endswith("*")):
            raise MappingError(f"--map {item}: the key must start with params., metrics. or tags. (got {key!r})")
        wildcard = key.endswith("*")
        if wildcard != target.endswith("*"):
            raise MappingError(f"--map {item}: use * on both sides (params.cfg.*=hparams.*) or on neither")
        if wildcard:
            key, target = key[:-1], target[:-1]
            if not key.endswith(".") or not target.endswith("."):
                raise MappingError(f"--map {item}: a wildcard follows a dot (params.cfg.*=hparams.*)")
        _check_target(target, wildcard, item)
        if not wildcard:
            if target in targets:
                raise MappingError(f"--map {item}: {target} is already mapped from {targets[target]}")
            targets[target] = key
        rules.append(Rule(key, target, wildcard, user=True))
    return rules


def effective_rules(user: list[Rule]) -> tuple[dict[str, str], list[Rule]]:
    """Exact rules (source -> target; a user rule replaces the default for its field) and the
    wildcards, most specific first (user before default on equal prefixes)."""
    exact: dict[str, str] = {}
    claimed = {r.target for r in user if not r.wildcard}
    for r in default_rules():
        if not r.wildcard and r.target not in claimed:
            exact[r.source] = r.target
    for r in user:
        if not r.wildcard:
            exact[r.source] = r.target
    wild = [r for r in user if r.wildcard] + [r for r in default_rules() if r.wildcard]
    wild.sort(key=lambda r: -len(r.source))  # stable: user first among equals
    return exact, wild


def sources_of(target: str, user: list[Rule]) -> list[str]:
    """The MLflow keys that feed a field (for "missing" messages)."""
    exact, _ = effective_rules(user)
    return [s for s, t in exact.items() if t == target]


class RowProblem(ValueError):
    """A run that cannot become a history row (the message says why)."""


@dataclass
class MappedRow:
    """A run's values as history cells (text, as from a CSV file) and the keys no rule used."""

    cells: dict[str, str]
    unmapped: list[str]


def from_mlflow(params: dict[str, str], metrics: dict[str, float], tags: dict[str, str],
                metric_history: Callable[[str], list[float]], user: list[Rule],
                metric_steps: Callable[[str], list[tuple[int, float]]] | None = None) -> MappedRow:
    """One MLflow run -> history cells by the rules. ``metric_history(key)`` returns a metric's
    values in step order (for ``losses``), ``metric_steps(key)`` its (step, value) pairs (for the
    ``curve.*`` metrics). Raises RowProblem on a clash of two keys."""
    exact, wild = effective_rules(user)
    cells: dict[str, str] = {}
    curve_keys = [k for k in metrics if k.startswith(CURVE_PREFIX) and k[len(CURVE_PREFIX):] in CURVE_VALUES]
    if curve_keys and metric_steps is not None:
        points: dict[int, dict[str, Any]] = {}
        for key in curve_keys:
            for step, value in metric_steps(key):
                points.setdefault(int(step), {"epoch": int(step)})[key[len(CURVE_PREFIX):]] = value
        for p in points.values():
            if "step" in p:
                p["step"] = int(p["step"])
        cells["curve"] = _json([points[e] for e in sorted(points)])
        metrics = {k: v for k, v in metrics.items() if k not in curve_keys}
    origin: dict[str, str] = {}
    families: dict[str, dict[str, Any]] = {}
    unmapped: list[str] = []

    def assign(target: str, source: str, value: Any, namespace: str) -> None:
        if target in origin:
            raise RowProblem(f"both {origin[target]} and {source} map to {target}")
        origin[target] = source
        family, _, member = target.partition(".")
        col = hio.BY_NAME.get(target)
        if target in _SERIES_FIELDS:
            series = metric_history(source.partition(".")[2]) if namespace == METRICS else member_value(value)
            cells[target] = _json(series) if not isinstance(series, str) else series
        elif col is not None or (family == "signal" and member):
            kind = col.kind if col is not None else "float"
            cells[target] = _metric_text(value, kind) if namespace == METRICS else value
        elif family in ("model", "dataset"):
            families.setdefault(f"{family}.extra", {})[member] = value if namespace == METRICS else member_value(value)
        else:
            families.setdefault(family, {})[member] = value if namespace == METRICS else member_value(value)

    for namespace, values in ((PARAMS, params), (METRICS, metrics), (TAGS, tags)):
        for key, value in sorted(values.items()):
            source = f"{namespace}.{key}"
            if source in exact:
                assign(exact[source], source, value, namespace)
                continue
            for r in wild:
                if source.startswith(r.source) and len(source) > len(r.source):
                    target = r.target + source[len(r.source):]
                    if r.target == "signal." and hio.column_for(target) is None:
                        raise RowProblem(f"{source}: {target[len('signal.'):]!r} is not a valid signal name")
                    assign(target, source, value, namespace)
                    break
            else:
                if not source.startswith(f"{TAGS}.mlflow.") and not (  # MLflow's own bookkeeping
                        namespace == METRICS and key in DERIVED_METRICS):  # ours, derived from the row
                    unmapped.append(source)
    for column, members in families.items():
        if column in cells:
            raise RowProblem(f"{origin[column]} and member keys both give {column}")
        cells[column] = _json(members)
    return MappedRow(cells, unmapped)


def _metric_text(value: float, kind: str) -> str:
    """A metric (always a float in MLflow) as the cell of a column of ``kind``."""
    if kind == "int" and float(value).is_integer():
        return str(int(value))
    return repr(float(value))
