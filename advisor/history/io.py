"""Import and export of runs as flat rows (CSV, JSON array, JSON lines).

One row per run. The columns (documented in docs/history.md) are the ``RunResult`` fields,
``recorded_at``, the model and dataset descriptors as ``model.<field>`` / ``dataset.<field>``,
the run's signal set as one ``signal.<name>`` column per metric plus ``signal_versions`` and
``signal_seconds``. Export always writes every column in the order of ``COLUMNS`` (signals
sorted by name), nested JSON with sorted keys and floats in Python's shortest round-trip form,
so add -> export -> add into an empty database -> export is byte-identical.

Imports are validated column by column before the database is touched; the first problem is
reported as one line naming the file, row and column.
"""

from __future__ import annotations

import csv
import difflib
import io as _io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterable

from ..errors import InputFileError
from ..specs import RunResult

# ------------------------------------------------------------------------------- the columns


@dataclass(frozen=True)
class Column:
    """One flat column: its name, value kind, whether it must be present and non-empty, and
    the smallest value allowed (for numbers)."""

    name: str
    kind: str  # text | int | float | acc | bool | time | object | acc_map | float_map | text_map | float_list | text_list
    required: bool = False
    minimum: float | None = None
    help: str = ""


COLUMNS: tuple[Column, ...] = (
    Column("run_id", "text", help="unique id; generated from the configuration and seed when empty"),
    Column("recorded_at", "time", help="ISO 8601 time the run was recorded (UTC); now when empty"),
    Column("model", "text", True, help="model name (lit-offline, ViT-B-32, hf-hub:...)"),
    Column("pretrained", "text", help="open_clip pretrained tag or checkpoint"),
    Column("dataset", "text", True, help="dataset name"),
    Column("method", "text", True, help="fine-tuning method (tuner name)"),
    Column("shots", "int", minimum=1, help="training images per class; empty: all"),
    Column("seed", "int", True, help="seed of the run"),
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
    Column("trainable_params", "int", minimum=0, help="number of trained parameters"),
    Column("device", "text", help="cpu, cuda, ..."),
    Column("provenance", "object", help="versions and git sha (JSON object)"),
    Column("losses", "float_list", help="training losses (JSON list)"),
    Column("adapter_path", "text", help="where the trained adapter was saved"),
    Column("model.image_size", "int", minimum=1, help="working resolution in pixels"),
    Column("model.family", "text"),
    Column("model.architecture", "text"),
    Column("model.params", "int", minimum=0),
    Column("model.embed_dim", "int", minimum=1),
    Column("model.source", "text"),
    Column("model.extra", "object", help="other model descriptors (JSON object)"),
    Column("dataset.fingerprint", "text"),
    Column("dataset.n_classes", "int", minimum=1),
    Column("dataset.n_train", "int", minimum=0),
    Column("dataset.n_test", "int", minimum=0),
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
_EMPTY_OBJECT = ("hparams", "ood_before", "ood_after", "provenance", "model.extra", "dataset.extra",
                 "signal_versions", "signal_seconds")
FORMATS = ("csv", "json", "jsonl")


def column_for(name: str) -> Column | None:
    if name in BY_NAME:
        return BY_NAME[name]
    if name.startswith(SIGNAL_PREFIX) and _valid_signal_name(name[len(SIGNAL_PREFIX):]):
        return SIGNAL_COLUMN
    return None


def _valid_signal_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*", name))


# ------------------------------------------------------------------------------- reading files


def detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "json"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    head = text.lstrip()[:1]
    return {"[": "json", "{": "jsonl"}.get(head, "csv")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)


def read_rows(path: str | Path, fmt: str | None = None) -> tuple[str, list[dict[str, Any]], bool]:
    """Read a history file: (format, rows, cells_are_text). Raises InputFileError."""
    p = Path(path)
    if p.is_dir():
        raise InputFileError(f"{p} is a directory, not a history file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{p} is not UTF-8 text (byte {exc.start})") from None
    fmt = fmt or detect_format(p, text)
    if fmt not in FORMATS:
        raise InputFileError(f"unknown format {fmt!r} (use csv, json or jsonl)")
    if fmt == "csv":
        return fmt, _read_csv(p, text), True
    if fmt == "json":
        try:
            data = _loads(text)
        except ValueError as exc:
            raise InputFileError(f"{p} is not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise InputFileError(f"{p}: expected a JSON array of objects, one per run")
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise InputFileError(f"{p} row {i}: expected a JSON object, got {_type_name(item)}")
        return fmt, data, False
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = _loads(line)
        except ValueError as exc:
            raise InputFileError(f"{p} line {lineno} is not valid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise InputFileError(f"{p} line {lineno}: expected a JSON object, got {_type_name(item)}")
        rows.append(item)
    return fmt, rows, False


def _read_csv(p: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.reader(_io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputFileError(f"{p} is empty (expected a header row)") from None
    except csv.Error as exc:
        raise InputFileError(f"{p}: bad CSV ({exc})") from None
    seen = set()
    for name in header:
        if name in seen:
            raise InputFileError(f"{p}: column {name!r} appears twice in the header")
        seen.add(name)
    rows = []
    try:
        for i, cells in enumerate(reader, start=1):
            if not cells:
                continue
            if len(cells) != len(header):
                raise InputFileError(f"{p} row {i} has {len(cells)} cells but the header has {len(header)}")
            rows.append(dict(zip(header, cells)))
    except csv.Error as exc:
        raise InputFileError(f"{p}: bad CSV at line {reader.line_num} ({exc})") from None
    if not rows:
        # Keep the header so that column checks still run on an empty file.
        rows_header = {name: "" for name in header}
        _check_columns(p, [rows_header])
    return rows


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "text", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


# ------------------------------------------------------------------------------- validating


class _Bad(ValueError):
    """A cell that fails validation (message without the row/column prefix)."""


def _check_columns(p: Path, rows: list[dict[str, Any]]) -> None:
    names: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                names.append(k)
    for name in names:
        if column_for(name) is None:
            known = [c.name for c in COLUMNS]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; signals go in signal.<name> columns"
            raise InputFileError(f"{p}: unknown column {name!r}{hint}")
    for i, row in enumerate(rows, start=1):
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            where = f"{p}" if len(rows) == 1 or all(c not in r for r in rows for c in missing) else f"{p} row {i}"
            raise InputFileError(f"{where}: missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise _Bad(f"{v!r} is not a finite number")
    return float(v)


def _parse_json_cell(value: str, want: str) -> Any:
    try:
        return _loads(value)
    except ValueError as exc:
        raise _Bad(f"{value!r} is not valid JSON ({exc}); expected {want}") from None


def _number(value: Any, text: bool) -> float:
    if text:
        try:
            f = float(value)
        except ValueError:
            raise _Bad(f"{value!r} is not a number") from None
        return _finite(f)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"expected a number, got {_type_name(value)}")
    return _finite(float(value))


def parse_cell(col: Column, value: Any, text: bool) -> Any:
    """One cell -> its Python value (None when empty). ``text``: the cell came from CSV."""
    if value is None or (text and value == ""):
        if col.required:
            raise _Bad("is required but empty")
        return None
    kind = col.kind
    if kind == "text":
        if not isinstance(value, str):
            raise _Bad(f"expected text, got {_type_name(value)}")
        if not value.strip():
            if col.required:
                raise _Bad("is required but empty")
            return None
        return value
    if kind == "int":
        if text:
            if not re.fullmatch(r"[+-]?\d+", value.strip()):
                raise _Bad(f"{value!r} is not an integer")
            out = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Bad(f"expected an integer, got {_type_name(value)} {value!r}")
            out = value
        if col.minimum is not None and out < col.minimum:
            raise _Bad(f"{out} is below the minimum {col.minimum:g}")
        return out
    if kind in ("float", "acc"):
        out_f = _number(value, text)
        if kind == "acc" and not 0.0 <= out_f <= 1.0:
            raise _Bad(f"{out_f!r} is not an accuracy within [0, 1]")
        if col.minimum is not None and out_f < col.minimum:
            raise _Bad(f"{out_f!r} is below the minimum {col.minimum:g}")
        return out_f
    if kind == "bool":
        if text:
            low = value.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise _Bad(f"{value!r} is not true or false")
        if not isinstance(value, bool):
            raise _Bad(f"expected true or false, got {_type_name(value)}")
        return value
    if kind == "time":
        if not isinstance(value, str):
            raise _Bad(f"expected an ISO 8601 time, got {_type_name(value)}")
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise _Bad(f"{value!r} is not an ISO 8601 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return t.astimezone(timezone.utc).isoformat(timespec="seconds")
    # JSON-valued kinds
    if text:
        value = _parse_json_cell(value, "a JSON object" if kind.endswith(("map", "object")) else "a JSON list")
    if kind in ("object", "acc_map", "float_map", "text_map"):
        if not isinstance(value, dict):
            raise _Bad(f"expected a JSON object, got {_type_name(value)}")
        if kind == "acc_map":
            out_m = {}
            for k, v in value.items():
                try:
                    a = _number(v, False)
                except _Bad as exc:
                    raise _Bad(f"{k!r}: {exc}") from None
                if not 0.0 <= a <= 1.0:
                    raise _Bad(f"{k!r}: {a!r} is not an accuracy within [0, 1]")
                out_m[k] = a
            return out_m
        if kind == "float_map":
            out_m = {}
            for k, v in value.items():
                try:
                    out_m[k] = _number(v, False)
                except _Bad as exc:
                    raise _Bad(f"{k!r}: {exc}") from None
                if out_m[k] < 0:
                    raise _Bad(f"{k!r}: {out_m[k]!r} is negative")
            return out_m
        if kind == "text_map":
            for k, v in value.items():
                if not isinstance(v, str):
                    raise _Bad(f"{k!r}: expected text, got {_type_name(v)}")
        return value
    if kind in ("float_list", "text_list"):
        if not isinstance(value, list):
            raise _Bad(f"expected a JSON list, got {_type_name(value)}")
        if kind == "float_list":
            return [_number(v, False) for v in value]
        for v in value:
            if not isinstance(v, str):
                raise _Bad(f"expected a list of text, found {_type_name(v)}")
        return value
    raise AssertionError(f"unknown column kind {kind}")  # pragma: no cover


@dataclass
class ImportRecord:
    """A validated row, ready for ``History.add_records``."""

    label: str  # "file.csv row 3": how errors name it
    run: RunResult
    recorded_at: str | None
    signal_seconds: dict[str, float]


def parse_row(row: dict[str, Any], text: bool, label: str) -> ImportRecord:
    values: dict[str, Any] = {}
    signals: dict[str, float] = {}
    for name, raw in row.items():
        col = column_for(name)
        assert col is not None  # checked by _check_columns
        try:
            v = parse_cell(col, raw, text)
        except _Bad as exc:
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
    for name in ("signal_versions", "signal_seconds"):
        stray = sorted(set(values[name]) - set(signals))
        if stray:
            raise InputFileError(f"{label}, column {name}: names {stray[0]!r}, which has no signal.{stray[0]} value")
    model_desc = _desc(values, "model", MODEL_FIELDS, label)
    dataset_desc = _desc(values, "dataset", DATASET_FIELDS, label)
    run = RunResult(
        model=values["model"],
        pretrained=values.get("pretrained"),
        dataset=values["dataset"],
        method=values["method"],
        shots=values.get("shots"),
        seed=values["seed"],
        hparams=values["hparams"],
        split_hash=values.get("split_hash"),  # type: ignore[arg-type]
        id_acc_before=values["id_acc_before"],
        id_acc_after=values["id_acc_after"],
        ood_before=values["ood_before"],
        ood_after=values["ood_after"],
        gap_before=values.get("gap_before"),
        gap_after=values.get("gap_after"),
        wall_time_s=values.get("wall_time_s"),  # type: ignore[arg-type]
        train_images_per_s=values.get("train_images_per_s"),
        peak_memory_mb=values.get("peak_memory_mb"),
        trainable_params=values.get("trainable_params"),  # type: ignore[arg-type]
        device=values.get("device"),  # type: ignore[arg-type]
        provenance=values["provenance"],
        signals=signals,
        signal_versions=values["signal_versions"],
        model_desc=model_desc,
        dataset_desc=dataset_desc,
        losses=values["losses"],
        adapter_path=values.get("adapter_path"),
        run_id=values.get("run_id"),
    )
    return ImportRecord(label=label, run=run, recorded_at=values.get("recorded_at"),
                        signal_seconds=values["signal_seconds"])


def _desc(values: dict[str, Any], prefix: str, fields: tuple[str, ...], label: str) -> dict[str, Any]:
    extra = values.get(f"{prefix}.extra") or {}
    reserved = set(fields) | {"name", "pretrained"}
    clash = sorted(reserved & set(extra))
    if clash:
        raise InputFileError(f"{label}, column {prefix}.extra: {clash[0]!r} has its own column ({prefix}.{clash[0]})")
    desc = {f: values[f"{prefix}.{f}"] for f in fields if values.get(f"{prefix}.{f}") is not None}
    desc.update(extra)
    return desc


def parse_file(path: str | Path, fmt: str | None = None) -> list[ImportRecord]:
    """Read and validate a whole history file; nothing is written. Raises InputFileError."""
    p = Path(path)
    fmt, rows, text = read_rows(p, fmt)
    _check_columns(p, rows)
    records = [parse_row(row, text, f"{p} row {i}") for i, row in enumerate(rows, start=1)]
    _check_consistency(records)
    return records


def _check_consistency(records: list[ImportRecord]) -> None:
    """Within one file: no run id twice, no (configuration, seed) twice, and one set of
    descriptors per model and per dataset (they are stored once)."""
    from .store import config_hash, dataset_key, default_run_id, model_key, model_desc_of, dataset_desc_of

    by_id: dict[str, str] = {}
    by_config: dict[tuple[str, int], str] = {}
    descs: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for rec in records:
        run = rec.run
        md, dd = model_desc_of(run), dataset_desc_of(run)
        cfg = config_hash(run, md, dd)
        rid = run.run_id or default_run_id(run, cfg)
        if rid in by_id:
            raise InputFileError(f"{rec.label}: duplicate run_id {rid!r} (also in {_row_of(by_id[rid])})")
        by_id[rid] = rec.label
        if (cfg, run.seed) in by_config:
            raise InputFileError(
                f"{rec.label}: same model, dataset, method, shots, hparams, split and seed as {_row_of(by_config[(cfg, run.seed)])}"
            )
        by_config[(cfg, run.seed)] = rec.label
        for kind, key, desc in (("model", model_key(md), md), ("dataset", dataset_key(dd), dd)):
            seen = descs.get((kind, key))
            if seen is None:
                descs[(kind, key)] = (desc, rec.label)
                continue
            for field, value in desc.items():
                other = seen[0].get(field)
                if field in seen[0] and other != value:
                    raise InputFileError(
                        f"{rec.label}, column {kind}.{field}: {value!r} disagrees with {other!r} in "
                        f"{_row_of(seen[1])} for the same {kind} {key!r}"
                    )
            seen[0].update(desc)


def _row_of(label: str) -> str:
    return "row " + label.rsplit(" ", 1)[-1]


# ------------------------------------------------------------------------------- exporting


def _sorted_json(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _sorted_json(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted_json(x) for x in v]
    return v


def export_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    signals = sorted({k for r in rows for k in r if k.startswith(SIGNAL_PREFIX)})
    return [c.name for c in COLUMNS] + signals


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(_sorted_json(v), separators=(",", ":"), ensure_ascii=False)
    return str(v)


def write_rows(rows: list[dict[str, Any]], fmt: str, out: IO[str]) -> int:
    """Write flat rows (``History.runs()``) as CSV or JSON lines; returns the number written."""
    columns = export_columns(rows)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_cell(r.get(c)) for c in columns])
    elif fmt == "jsonl":
        for r in rows:
            out.write(json.dumps({c: _sorted_json(r.get(c)) for c in columns}, ensure_ascii=False) + "\n")
    else:
        raise InputFileError(f"unknown export format {fmt!r} (use csv or jsonl)")
    return len(rows)
