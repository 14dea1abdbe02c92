"""History files: reading CSV / JSON array / JSON lines into validated records, writing exports.

The row shape is ``rows.COLUMNS`` (documented in docs/history.md); the value rules are
``validate.py``. Export always writes every column in the order of ``COLUMNS`` (signals
sorted by name), nested JSON with sorted keys and floats in Python's shortest round-trip form,
so add -> export -> add into an empty database -> export is byte-identical.

Imports are validated completely before the database is touched; the first problem is
reported as one line naming the file, row and column.
"""

from __future__ import annotations

import csv
import difflib
import io as _io
import json
import os
import re
import stat
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from ..errors import InputFileError
from .keys import config_hash, dataset_desc_of, dataset_key, model_desc_of, model_key, run_id_of
from .rows import (  # noqa: F401  (COLUMNS, BY_NAME, ImportRecord ... are this module's public names too)
    BY_NAME,
    COLUMNS,
    DATASET_FIELDS,
    MODEL_FIELDS,
    REQUIRED,
    SIGNAL_COLUMN,
    SIGNAL_PREFIX,
    Column,
    ImportRecord,
    column_for,
)
from .validate import loads, may_hold_surrogates, parse_cell, parse_row, type_name  # noqa: F401

FORMATS = ("csv", "json", "jsonl")

# ------------------------------------------------------------------------------- reading files


#: A line longer than this is refused before more is read (``history add /dev/zero`` would
#: otherwise read until memory runs out). A JSON array on one line counts as one line.
MAX_LINE_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


def _read_bounded(p: Path) -> bytes:
    """The bytes of ``p``, refusing (one line) a line over ``MAX_LINE_BYTES``."""
    chunks: list[bytes] = []
    line, lineno = 0, 1  # bytes of the current line so far, and its number
    with open(p, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            newlines = chunk.count(b"\n")
            line = len(chunk) - chunk.rfind(b"\n") - 1 if newlines else line + len(chunk)
            if line > MAX_LINE_BYTES:
                raise InputFileError(f"{p} line {lineno + newlines} is longer than {MAX_LINE_BYTES // 2**20} MiB; "
                                     "not a history file (or give a big JSON array as JSON lines)")
            lineno += newlines
            chunks.append(chunk)


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


def read_rows(path: str | Path, fmt: str | None = None) -> tuple[str, list[dict[str, Any]], bool]:
    """Read a history file: (format, rows, cells_are_text). Raises InputFileError."""
    return _read_rows(Path(path), fmt)[:3]


def _read_rows(p: Path, fmt: str | None) -> tuple[str, list[dict[str, Any]], bool, bool]:
    """``read_rows`` and whether a cell may hold a lone surrogate (``validate.may_hold_surrogates``
    of the file's text)."""
    try:
        if p.is_dir():
            raise InputFileError(f"{p} is a directory, not a history file")
        raw = _read_bounded(p)
    except OSError as exc:
        raise InputFileError(f"cannot read {p}: {exc.strerror or exc}") from None
    except MemoryError:
        raise InputFileError(f"{p} is too large to read into memory") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{p} is not UTF-8 text (byte {exc.start})") from None
    fmt = fmt or detect_format(p, text)
    if fmt not in FORMATS:
        raise InputFileError(f"unknown format {fmt!r} (use csv, json or jsonl)")
    surrogates = may_hold_surrogates(text)
    if fmt == "csv":
        return fmt, _read_csv(p, text), True, surrogates
    if fmt == "json":
        try:
            data = loads(text)
        except ValueError as exc:
            raise InputFileError(f"{p} is not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise InputFileError(f"{p}: expected a JSON array of objects, one per run")
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise InputFileError(f"{p} row {i}: expected a JSON object, got {type_name(item)}")
        return fmt, data, False, surrogates
    rows = []
    # Lines end at "\n" (and "\r\n") only: str.splitlines() would also split a name at U+2028,
    # U+0085 or \x1c, which JSON allows raw inside a string.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        try:
            item = loads(line)
        except ValueError as exc:
            raise InputFileError(f"{p} line {lineno} is not valid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise InputFileError(f"{p} line {lineno}: expected a JSON object, got {type_name(item)}")
        rows.append(item)
    return fmt, rows, False, surrogates


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


# ------------------------------------------------------------------------------- checking


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


def parse_file(path: str | Path, fmt: str | None = None) -> list[ImportRecord]:
    """Read and validate a whole history file; nothing is written. Raises InputFileError."""
    p = Path(path)
    fmt, rows, text, surrogates = _read_rows(p, fmt)
    _check_columns(p, rows)
    records = [parse_row(row, text, f"{p} row {i}", surrogates) for i, row in enumerate(rows, start=1)]
    del rows  # the raw cells: half the memory of a large file
    _check_consistency(records)
    return records


def _check_consistency(records: list[ImportRecord]) -> None:
    """Within one file: no run id twice, no (configuration, seed) twice, and one set of
    descriptors per model and per dataset (they are stored once)."""
    by_id: dict[str, str] = {}
    by_config: dict[tuple[str, int], str] = {}
    descs: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for rec in records:
        run = rec.run
        md, dd = model_desc_of(run), dataset_desc_of(run)
        cfg = rec.config = config_hash(run, md, dd)
        rid = run_id_of(run, cfg)
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


#: Characters that some readers take as a line break (str.splitlines, editors) and JSON leaves
#: raw inside a string: escaped in JSON lines, so every run stays on its own line.
_LINE_BREAKS = re.compile("[\x85\u2028\u2029]")
_CSV_SPECIAL = re.compile('[,"\r\n]')


def _csv_line(cells: list[str]) -> str:
    """One CSV record as ``csv.writer`` (minimal quoting, ``\\n`` line ends) writes it, except
    that a cell holding a bare carriage return is quoted too (Python 3.11's writer leaves it
    bare, and every reader then ends the record there)."""
    return ",".join('"' + c.replace('"', '""') + '"' if _CSV_SPECIAL.search(c) else c for c in cells) + "\n"


def write_rows(rows: Iterable[dict[str, Any]], fmt: str, out: IO[str], columns: list[str] | None = None) -> int:
    """Write flat rows (``History.runs()``) as CSV or JSON lines; returns the number written.
    ``columns`` (``export_columns`` of every row, known in advance) lets ``rows`` be a stream
    that is never held in memory whole; without it the rows are read once to find them."""
    if fmt not in ("csv", "jsonl"):
        raise InputFileError(f"unknown export format {fmt!r} (use csv or jsonl)")
    if columns is None:
        rows = list(rows)
        columns = export_columns(rows)
    n = 0
    if fmt == "csv":
        out.write(_csv_line(columns))
        for r in rows:
            out.write(_csv_line([_csv_cell(r.get(c)) for c in columns]))
            n += 1
    else:
        for r in rows:
            line = json.dumps({c: _sorted_json(r.get(c)) for c in columns}, ensure_ascii=False)
            out.write(_LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group(0)):04x}", line) + "\n")
            n += 1
    return n


def write_file(path: str | os.PathLike[str], write: Callable[[IO[str]], int]) -> int:
    """Call ``write(f)`` (returns a count) on a temporary file beside ``path`` and rename it over
    ``path``, so a failed export (a full disk) leaves the file that was there, and no partial file
    on a new path. The file keeps its mode (a new one: 0666 less the umask); a link is followed
    (the file it names is replaced, not the link); a device or pipe (``/dev/stdout``) is written
    directly. OSError propagates (the caller names the file)."""
    target = Path(os.path.realpath(path))
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(target, "w", encoding="utf-8", newline="") as f:
            return write(f)
    from ..atomic import replace_file

    return replace_file(target, st, write, newline="", prefix=40)
