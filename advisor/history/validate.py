"""One set of rules for what may enter the history, applied to file rows and to ``RunResult``s.

``parse_row`` turns a flat row read from a file into an ``ImportRecord``; ``validate_run`` checks
a ``RunResult`` field by field against the same columns (no detour through the file format).
A value outside what the column's SQL type holds on *every* backend (a seed above 2**31-1, a
parameter count above 2**63-1) and JSON nested deeper than ``MAX_JSON_DEPTH`` are refused here
as one line, never surfacing as a driver ``OverflowError`` or a ``RecursionError``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from ..errors import HistoryError, InputFileError
from ..specs import RunResult
from .rows import (
    BY_NAME,
    COLUMNS,
    DATASET_FIELDS,
    MODEL_FIELDS,
    SIGNAL_COLUMN,
    SIGNAL_PREFIX,
    Column,
    ImportRecord,
    column_for,
    jsonable,
    valid_signal_name,
)

MAX_JSON_DEPTH = 64  # hyper-parameters and descriptors are a few levels deep; 64 is generous
_EMPTY_OBJECT = ("hparams", "ood_before", "ood_after", "provenance", "model.extra", "dataset.extra",
                 "signal_versions", "signal_seconds")
_OPTIONAL_TEXT = ("run_id", "pretrained", "split_hash", "device", "adapter_path")
#: Names stored in NFC, so one model spelt composed or decomposed is one model (``history list``
#: filters are normalised the same way: ``normal_name``).
NAME_COLUMNS = ("model", "pretrained", "dataset", "method")


class CellError(ValueError):
    """A value that fails validation (message without the row/column prefix)."""


# ------------------------------------------------------------------------------- JSON text


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C; the pairs are walked only when a key came twice
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"key {k!r} appears twice in one object")
            seen.add(k)
    return out


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def loads(text: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity, no nesting the parser cannot hold."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None


def type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "text", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _check_json_value(value: Any) -> None:
    """Nested JSON: at most ``MAX_JSON_DEPTH`` deep and only finite numbers (iterative, so a
    pathological value cannot exhaust the stack)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        v, depth, where = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise CellError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((child, depth + 1, f"{where}[{k!r}]") for k, child in items)
        elif isinstance(v, float) and not math.isfinite(v):
            raise CellError(f"{where or 'value'} is {v!r}, not a finite number")


# ------------------------------------------------------------------------------- Unicode


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate (U+D800..U+DFFF) in a string, or in the keys and values of nested
    JSON, else None: such text cannot be written as UTF-8 (export, PostgreSQL)."""
    if type(value) is str:  # the common cases first: one cell of a large import
        return None if value.isascii() else (lambda f: f.group(0) if f else None)(_SURROGATE.search(value))
    if value is None or type(value) in (int, float, bool):
        return None
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            found = _SURROGATE.search(v)
            if found:
                return found.group(0)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None


def normal_name(value: str, what: str = "name") -> str:
    """A name as the history stores it (NFC); a lone surrogate is a one-line ``HistoryError``."""
    bad = lone_surrogate(value)
    if bad is not None:
        raise HistoryError(f"{what} {value!r} contains a lone surrogate {bad!r}, which is not valid Unicode text")
    return unicodedata.normalize("NFC", value)


# ------------------------------------------------------------------------------- one cell


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise CellError(f"{v!r} is not a finite number")
    return float(v)


def _number(value: Any, text: bool) -> float:
    if text:
        try:
            f = float(value)
        except ValueError:
            raise CellError(f"{value!r} is not a number") from None
        return _finite(f)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CellError(f"expected a number, got {type_name(value)}")
    try:
        return _finite(float(value))
    except OverflowError:
        raise CellError("the integer is too large to be a number of this column") from None


def _integer(col: Column, value: Any, text: bool) -> int:
    if text:
        if not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise CellError(f"{value!r} is not an integer")
        out = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CellError(f"expected an integer, got {type_name(value)} {value!r}")
        out = value
    if col.minimum is not None and out < col.minimum:
        raise CellError(f"{out} is below the minimum {col.minimum:g}")
    if col.maximum is not None and out > col.maximum:
        raise CellError(f"{out} is above the maximum {col.maximum} this column holds")
    return out


def _mapping(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    if kind in ("acc_map", "float_map"):
        out: dict[str, Any] = {}
        for k, v in value.items():
            try:
                f = _number(v, False)
            except CellError as exc:
                raise CellError(f"{k!r}: {exc}") from None
            if kind == "acc_map" and not 0.0 <= f <= 1.0:
                raise CellError(f"{k!r}: {f!r} is not an accuracy within [0, 1]")
            if kind == "float_map" and f < 0:
                raise CellError(f"{k!r}: {f!r} is negative")
            out[k] = f
        return out
    if kind == "text_map":
        for k, v in value.items():
            if not isinstance(v, str):
                raise CellError(f"{k!r}: expected text, got {type_name(v)}")
    else:
        _check_json_value(value)
    return value


def parse_cell(col: Column, value: Any, text: bool, surrogates: bool = True) -> Any:
    """One cell -> its Python value (None when empty). ``text``: the cell came from CSV. Text
    with a lone surrogate is refused; the names of ``NAME_COLUMNS`` come back in NFC.
    ``surrogates=False``: the caller knows the cell cannot hold a surrogate (``may_hold_surrogates``
    of the file's text is False), so the value is not searched for one."""
    out = _parse_cell(col, value, text)
    bad = lone_surrogate(out) if surrogates else None
    if bad is not None:
        raise CellError(f"contains a lone surrogate {bad!r}, which is not valid Unicode text")
    if col.name in NAME_COLUMNS and isinstance(out, str):
        out = unicodedata.normalize("NFC", out)
    return out


def _parse_cell(col: Column, value: Any, text: bool) -> Any:
    if value is None or (text and value == ""):
        if col.required:
            raise CellError("is required but empty")
        return None
    kind = col.kind
    if kind == "text":
        if not isinstance(value, str):
            raise CellError(f"expected text, got {type_name(value)}")
        if not value.strip():
            if col.required:
                raise CellError("is required but empty")
            return None
        return value
    if kind == "int":
        return _integer(col, value, text)
    if kind in ("float", "acc"):
        out_f = _number(value, text)
        if kind == "acc" and not 0.0 <= out_f <= 1.0:
            raise CellError(f"{out_f!r} is not an accuracy within [0, 1]")
        if col.minimum is not None and out_f < col.minimum:
            raise CellError(f"{out_f!r} is below the minimum {col.minimum:g}")
        return out_f
    if kind == "bool":
        if text:
            low = value.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise CellError(f"{value!r} is not true or false")
        if not isinstance(value, bool):
            raise CellError(f"expected true or false, got {type_name(value)}")
        return value
    if kind == "time":
        if not isinstance(value, str):
            raise CellError(f"expected an ISO 8601 time, got {type_name(value)}")
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise CellError(f"{value!r} is not an ISO 8601 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return t.astimezone(timezone.utc).isoformat(timespec="seconds")
    # JSON-valued kinds
    is_map = kind.endswith(("map", "object"))
    if text:
        try:
            value = loads(value)
        except ValueError as exc:
            raise CellError(f"{value[:80]!r} is not valid JSON ({exc}); expected "
                            f"{'a JSON object' if is_map else 'a JSON list'}") from None
    if is_map:
        if not isinstance(value, dict):
            raise CellError(f"expected a JSON object, got {type_name(value)}")
        return _mapping(kind, value)
    if kind == "curve":
        try:
            return check_curve(value) or None
        except ValueError as exc:
            raise CellError(str(exc)) from None
    if kind in ("float_list", "text_list"):
        if not isinstance(value, list):
            raise CellError(f"expected a JSON list, got {type_name(value)}")
        if kind == "float_list":
            return [_number(v, False) for v in value]
        for v in value:
            if not isinstance(v, str):
                raise CellError(f"expected a list of text, found {type_name(v)}")
        return value
    raise AssertionError(f"unknown column kind {kind}")  # pragma: no cover


# ------------------------------------------------------------------------------- a file row


#: A surrogate in decoded text, or a JSON escape that decodes to one (``\\ud800``..``\\udfff``).
_SURROGATE_SOURCE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")


def may_hold_surrogates(text: str) -> bool:
    """False when no cell read from ``text`` (a whole file, decoded) can hold a lone surrogate:
    it has none itself and no JSON escape of one. One scan of the file instead of one search of
    every cell of every row (``parse_row(..., surrogates=False)``); True is only a maybe."""
    if text.isascii() and "\\u" not in text:  # the common case, in C: two quick scans
        return False
    return _SURROGATE_SOURCE.search(text) is not None


_COLUMNS_BY_KEY: dict[str, Column | None] = {}


def _column(name: str) -> Column | None:
    """``column_for``, remembered per key (a file repeats its few dozen keys on every row)."""
    try:
        return _COLUMNS_BY_KEY[name]
    except KeyError:
        col = column_for(name)
        if len(_COLUMNS_BY_KEY) < 10_000:
            _COLUMNS_BY_KEY[name] = col
        return col


def parse_row(row: dict[str, Any], text: bool, label: str, surrogates: bool = True) -> ImportRecord:
    """A flat row (column -> cell; columns already checked to exist) -> an ``ImportRecord``.
    ``surrogates=False``: skip the search for lone surrogates (see ``may_hold_surrogates``)."""
    values: dict[str, Any] = {}
    signals: dict[str, float] = {}
    for name, raw in row.items():
        col = _column(name)
        if col is None:
            raise InputFileError(f"{label}: unknown column {name!r}")
        try:
            v = parse_cell(col, raw, text, surrogates)
        except CellError as exc:
            raise InputFileError(f"{label}, column {name}: {exc}") from None
        if col is SIGNAL_COLUMN:
            if v is not None:
                signals[name[len(SIGNAL_PREFIX):]] = v
        else:
            values[name] = v
    for name in _EMPTY_OBJECT:
        if values.get(name) is None:
            values[name] = {}
    if values.get("losses") is None:
        values["losses"] = []
    if values.get("curve") is None:
        values["curve"] = []
    for name in ("signal_versions", "signal_seconds"):
        stray = sorted(set(values[name]) - set(signals))
        if stray:
            raise InputFileError(f"{label}, column {name}: names {stray[0]!r}, which has no signal.{stray[0]} value")
    fields = {c.name: values.get(c.name) for c in COLUMNS if "." not in c.name}
    recorded_at, seconds = fields.pop("recorded_at"), fields.pop("signal_seconds")
    run = RunResult(
        **fields,
        signals=signals,
        model_desc=_desc(values, "model", MODEL_FIELDS, label),
        dataset_desc=_desc(values, "dataset", DATASET_FIELDS, label),
    )
    return ImportRecord(label=label, run=run, recorded_at=recorded_at, signal_seconds=seconds)


def _desc(values: dict[str, Any], prefix: str, fields: tuple[str, ...], label: str) -> dict[str, Any]:
    extra = values.get(f"{prefix}.extra") or {}
    reserved = set(fields) | {"name", "pretrained"}
    clash = sorted(reserved & set(extra))
    if clash:
        raise InputFileError(f"{label}, column {prefix}.extra: {clash[0]!r} has its own column ({prefix}.{clash[0]})")
    desc = {f: values[f"{prefix}.{f}"] for f in fields if values.get(f"{prefix}.{f}") is not None}
    desc.update(extra)
    return desc


# ------------------------------------------------------------------------------- a RunResult


def _programmatic(col: Column, value: Any) -> Any:
    """Values computed by code: numpy/tuples -> plain types, 224.0 -> 224, "" -> None."""
    value = jsonable(value)
    if col.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if col.kind == "text" and value == "" and not col.required:
        return None
    return value


def _check(col: Column, name: str, value: Any) -> Any:
    try:
        return parse_cell(col, _programmatic(col, value), False)
    except CellError as exc:
        raise HistoryError(f"cannot record run, column {name}: {exc}") from None
    except RecursionError:
        raise HistoryError(f"cannot record run, column {name}: nested deeper than {MAX_JSON_DEPTH} levels") from None


def _validated_desc(desc: dict[str, Any] | None, prefix: str, fields: tuple[str, ...],
                    reserved: tuple[str, ...]) -> dict[str, Any]:
    rest = {str(k): v for k, v in (desc or {}).items() if k not in reserved}
    out = {}
    for f in fields:
        v = _check(BY_NAME[f"{prefix}.{f}"], f"{prefix}.{f}", rest.pop(f, None))
        if v is not None:
            out[f] = v
    out.update(_check(BY_NAME[f"{prefix}.extra"], f"{prefix}.extra", rest) or {})
    return out


def validate_run(run: RunResult) -> RunResult:
    """Check a ``RunResult`` field by field with the column rules; returns the cleaned run
    (plain Python types, integral floats as ints). ``HistoryError`` names the field."""
    clean: dict[str, Any] = {}
    for col in COLUMNS:
        if "." in col.name or col.name in ("recorded_at", "signal_versions", "signal_seconds"):
            continue
        clean[col.name] = _check(col, col.name, getattr(run, col.name))
    for name in ("hparams", "ood_before", "ood_after", "provenance"):
        clean[name] = clean[name] or {}
    clean["losses"] = clean["losses"] or []
    clean["curve"] = clean["curve"] or []
    signals: dict[str, float] = {}
    for name, value in (run.signals or {}).items():
        if not isinstance(name, str) or not valid_signal_name(name):
            raise HistoryError(f"cannot record run: bad signal name {name!r}")
        signals[name] = _check(SIGNAL_COLUMN, SIGNAL_PREFIX + name, value)
    # Versions of metrics that produced no value (a failed metric) are dropped, not an error.
    versions = {k: v for k, v in (run.signal_versions or {}).items() if k in signals}
    clean["signal_versions"] = _check(BY_NAME["signal_versions"], "signal_versions", versions) or {}
    return replace(
        run, **clean, signals=signals,
        model_desc=_validated_desc(run.model_desc, "model", MODEL_FIELDS, ("name", "pretrained")),
        dataset_desc=_validated_desc(run.dataset_desc, "dataset", DATASET_FIELDS, ("name",)),
    )


def check_curve(curve: Any) -> list[dict[str, Any]]:
    """A stored learning curve (``advisor.curves.point``'s points) as a list of points; raises
    ValueError naming what is wrong (used when a history reads or imports runs). It lives with
    the history's other cell checks, so validating a row never reaches the recording code."""
    if curve is None:
        return []
    if not isinstance(curve, list):
        raise ValueError("curve must be a list of points")
    out = []
    last = -1
    for p in curve:
        if not isinstance(p, dict) or "epoch" not in p:
            raise ValueError("each curve point must be an object with an 'epoch'")
        epoch = p["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or epoch <= last:
            raise ValueError("curve epochs must be increasing non-negative integers")
        last = epoch
        clean: dict[str, Any] = {"epoch": epoch, "step": int(p.get("step") or 0)}
        for key in ("train_loss", "val_acc", "ood_proxy_acc", "train_s"):
            v = p.get(key)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"curve point {key} must be a finite number or null")
                if key in ("val_acc", "ood_proxy_acc") and not 0.0 <= v <= 1.0:
                    raise ValueError(f"curve point {key} must lie in [0, 1]")
                v = float(v)
            clean[key] = v
        out.append(clean)
    return out
