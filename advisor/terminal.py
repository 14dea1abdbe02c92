"""What a person at a terminal sees: tables that fit its width, notes on stderr, progress.

Results go to stdout (tables, JSON) so they can be piped; everything said *about* the results
(warnings, notes, status lines, progress bars) goes to stderr. Progress appears only when stderr
is a terminal, unless ``ADVISOR_PROGRESS`` forces it on (``1``) or off (``0``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

#: Width used when stdout is not a terminal (a pipe, a file) and ``COLUMNS`` is not set.
DEFAULT_WIDTH = 100
#: A numeric column is never squeezed below this many characters (its header wraps instead).
MIN_COLUMN = 6
GUTTER = "  "
PROGRESS_ENV = "ADVISOR_PROGRESS"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every C0/C1 control character (and DEL) shown as its ``\\x..`` escape, so a
    name stored in the history cannot move the cursor, clear the screen or set the window title
    when printed as text (JSON output escapes them itself)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` overrides; ``DEFAULT_WIDTH`` when not a terminal)."""
    return max(20, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def output_width() -> int | None:
    """The width tables on stdout must fit: ``COLUMNS`` when set, else the terminal's when stdout
    is one, else None (piped or redirected output is not wrapped: one row, one line)."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return max(20, int(env))
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        if isatty is None or not isatty():
            return None
    except ValueError:  # a closed stream
        return None
    return terminal_width()


#: Floors: a prose column (cells of five words or more) may narrow to PROSE_FLOOR, other text
#: to TOKEN_FLOOR, a numeric column only to its widest value (a number never wraps); a bracketed
#: group such as an interval ``[-0.155, +0.027]`` never breaks. A name is first wrapped at
#: spaces, then after its separators (``lit-`` / ``offline``), and only then cut inside a part.
PROSE_FLOOR = 16
TOKEN_FLOOR = 6
_NBSP = "\xa0"  # split() of the wrapper leaves it alone: a protected space holds a group together
_BRACKETED = re.compile(r"\[[^\[\]]*\]|\([^()]*\)")
_SOFT_BREAK = re.compile(r"(?<=[-_/:])(?=[^-_/:])")  # after a separator: "lit-offline" -> "lit-", "offline"


def _protect(text: str) -> str:
    return _BRACKETED.sub(lambda m: m.group(0).replace(" ", _NBSP), text)


def _is_number(text: str) -> bool:
    try:
        float(text.replace("%", ""))
    except ValueError:
        return False
    return True


def fit_widths(columns: Sequence[str], cells: Sequence[Sequence[str]], width: int) -> list[int]:
    """Column widths whose sum plus gutters is at most ``width``. One character at a time, the
    column where narrowing costs least gives way: breaking a word inside costs 3 per cell,
    wrapping a cell at a space 1 (prose columns: 0), the header counting as a cell; ties go to
    the widest. Past every floor the table stays wider than ``width`` rather than cut a number."""
    n = len(columns)
    headers = [c.replace("_", "_ ") for c in columns]  # a header may wrap after an underscore
    texts = [[headers[i], *(_protect(row[i]) for row in cells)] for i in range(n)]
    total = [Counter(len(t) for t in col) for col in texts]
    longest_word = [Counter(max((len(w) for w in t.split()), default=0) for t in col) for col in texts]
    longest_part = [max((len(part) for t in col for w in t.split() for part in _SOFT_BREAK.split(w)), default=0)
                    for col in texts]
    widths = [max(len(columns[i]), *(len(row[i]) for row in cells)) for i in range(n)]
    floors, prose = [], []
    for i in range(n):
        values = [t for t in texts[i][1:] if t]
        prose.append(any(v.count(" ") >= 4 for v in values))
        header_word = max(len(w) for w in headers[i].split()) if headers[i].strip() else 0
        if values and all(_is_number(v) for v in values):
            floors.append(min(widths[i], max(MIN_COLUMN, header_word, *(len(v) for v in values))))
            continue
        groups = [len(g) for v in values for g in _BRACKETED.findall(v.replace(_NBSP, " "))]
        floors.append(min(widths[i], max(PROSE_FLOOR if prose[i] else TOKEN_FLOOR, max(groups, default=0))))
    budget = width - len(GUTTER) * (n - 1)

    def cost(i: int) -> int:
        w = widths[i]
        return 3 * longest_word[i][w] + (0 if prose[i] else 1) * total[i][w]

    # First wrap only at spaces (no column below its longest word), then after separators
    # inside names (no column below its longest part), then break inside parts if must.
    whole_words = [max(f, max(k for k, c in longest_word[i].items() if c)) for i, f in enumerate(floors)]
    parts = [max(f, min(w, longest_part[i])) for i, (f, w) in enumerate(zip(floors, whole_words))]
    for stage in (whole_words, parts, floors):
        while sum(widths) > budget:
            movable = [i for i in range(n) if widths[i] > stage[i]]
            if not movable:
                break
            widths[min(movable, key=lambda i: (cost(i), -widths[i]))] -= 1
    return widths


def _split_word(word: str, width: int) -> list[str]:
    """A word too long for ``width``, cut after its separators, and inside a part only when
    the part alone is longer than ``width``."""
    if len(word) <= width:
        return [word]
    lines: list[str] = []
    cur = ""
    for part in _SOFT_BREAK.split(word):
        while len(part) > width:
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(part[:width])
            part = part[width:]
        if len(cur) + len(part) <= width:
            cur += part
        else:
            lines.append(cur)
            cur = part
    if cur:
        lines.append(cur)
    return lines


def _wrap(text: str, width: int, header: bool = False) -> list[str]:
    if len(text) <= width:
        return [text]
    if header:  # "acc_before" -> "acc_" / "before", not "acc_be" / "fore"
        text = text.replace("_", "_ ")
    lines: list[str] = []
    cur = ""
    for word in _protect(text).split(" "):
        if not word:
            continue
        pieces = _split_word(word, width)
        if cur and len(cur) + 1 + len(pieces[0]) <= width:
            cur += " " + pieces[0]
        else:
            if cur:
                lines.append(cur)
            cur = pieces[0]
        for piece in pieces[1:]:
            lines.append(cur)
            cur = piece
    lines.append(cur)
    return [line.strip().replace(_NBSP, " ") for line in lines] or [""]


def format_table(cells: Sequence[Sequence[str]], columns: Sequence[str], width: int | None = None) -> list[str]:
    """Lines of an aligned text table that fits ``width`` (default: ``output_width()``): cells
    too long for their column wrap onto continuation lines instead of widening the row. With no
    width (output piped or redirected, ``COLUMNS`` unset) every row stays on one line."""
    width = output_width() if width is None else width
    if width is None:
        width = sys.maxsize
    widths = fit_widths(columns, cells, width)

    def render(values: Sequence[str], header: bool = False) -> list[str]:
        parts = [_wrap(v, w, header) for v, w in zip(values, widths)]
        height = max(len(p) for p in parts)
        return [GUTTER.join((p[k] if k < len(p) else "").ljust(w) for p, w in zip(parts, widths)).rstrip()
                for k in range(height)]

    lines = render(list(columns), header=True)
    lines.append(GUTTER.join("-" * w for w in widths))
    for row in cells:
        lines.extend(render(list(row)))
    return lines


def wrap_pair(key: str, value: str, key_width: int, width: int | None = None) -> list[str]:
    """``key  value`` with a long value wrapped under itself (``history show``; not wrapped when
    the output is piped and ``COLUMNS`` is unset)."""
    width = output_width() if width is None else width
    if width is None:
        return [f"{key.ljust(key_width)}{GUTTER}{value}"]
    room = max(MIN_COLUMN, width - key_width - len(GUTTER))
    parts = textwrap.wrap(value, room, break_long_words=True, break_on_hyphens=False) or [""]
    pad = " " * (key_width + len(GUTTER))
    return [f"{key.ljust(key_width)}{GUTTER}{parts[0]}"] + [pad + p for p in parts[1:]]


# ------------------------------------------------------------------------------ progress


def progress_enabled(quiet: bool = False) -> bool:
    """Whether to show progress: never with ``quiet``; ``ADVISOR_PROGRESS=1``/``0`` decides
    when set; otherwise only when stderr is a terminal (so logs and pipes stay clean)."""
    if quiet:
        return False
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


_quiet = False
_open_line = False  # a phase line waits for its " done" ending


def set_quiet(quiet: bool) -> None:
    """The CLI's ``--quiet``: silences ``phase`` status lines and bars for this process."""
    global _quiet
    _quiet = quiet


def _active_bar() -> Any:
    """The tqdm class when a progress bar is showing on the terminal now, else None (tqdm is
    not imported for this)."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return None
    bars = list(getattr(std.tqdm, "_instances", ()))
    return std.tqdm if any(not getattr(b, "disable", True) for b in bars) else None


def _status(line: str) -> None:
    """A whole status line on stderr; above a showing bar (cleared, then redrawn) so the two
    never share a line."""
    bar = _active_bar()
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


@contextmanager
def phase(what: str) -> Iterator[None]:
    """One status line on stderr around a long step: ``advisor: loading model lit-offline ...``
    then `` 4.2 s`` on the same line when it ends. Shown when ``progress_enabled``. While a
    progress bar shows, the line is written whole above the bar instead."""
    global _open_line
    if not progress_enabled(_quiet):
        yield
        return
    if _active_bar() is not None:
        _status(f"advisor: {what} ...")
        opened = False
    else:
        if _open_line:  # a phase inside a phase: finish the outer line first
            print(file=sys.stderr)
        print(f"advisor: {what} ...", end="", file=sys.stderr, flush=True)
        _open_line = opened = True
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if opened and _open_line and _active_bar() is None:
            print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        else:
            if _open_line and _active_bar() is None:
                print(file=sys.stderr)
            _status(f"advisor: {what}: {time.perf_counter() - t0:.1f} s")
        _open_line = False


def progress_bar(total: int, desc: str, unit: str, quiet: bool = False) -> Any:
    """A tqdm bar on stderr that follows the same rule as ``phase`` (disabled otherwise)."""
    global _open_line
    from tqdm.auto import tqdm

    disable = not progress_enabled(quiet or _quiet)
    if not disable and _open_line:
        print(file=sys.stderr)
        _open_line = False
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, leave=False)


class TrainingProgress:
    """``TrainContext.progress`` for the CLI: a bar of optimisation steps with the loss."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, "training", "step", self.quiet)
        self.bar.update(max(0, step - self.bar.n))
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
