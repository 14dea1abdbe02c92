"""Write docs/cli.md from the click definitions, so the CLI reference cannot drift from the code.

    python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is out of date

Third-party plugins are blocked while rendering (``ADVISOR_BLOCK_PLUGINS=1``): the reference
describes advisor itself, not whatever happens to be installed. tests/test_docs.py runs ``render``
and compares it with the file.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any, Iterator

os.environ["ADVISOR_BLOCK_PLUGINS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import click  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli.md"

HEADER = """# Command-line reference

Generated from the click definitions by `python scripts/gen_cli_docs.py`; do not edit by hand
(`tests/test_docs.py` fails when this file and the code disagree). `advisor COMMAND --help`
shows the same text.

Conventions every command follows:

- Results go to standard output; warnings, notes, status lines and progress bars go to standard
  error. Progress shows only when standard error is a terminal (`ADVISOR_PROGRESS=1` forces it,
  `ADVISOR_PROGRESS=0` or `--quiet` silences it).
- `--json` on every command prints one JSON document instead of a table; the same things have
  the same keys everywhere (`signals`, `path`, `history`).
- Tables fit the terminal width (`COLUMNS` overrides): long cells wrap onto continuation
  lines, names first at their `-`/`_` separators, numbers never. Output piped or redirected
  (and `COLUMNS` unset) is not wrapped: one row, one line.
- Bad input is one `Error: ...` line and exit code 1 (usage mistakes: click's exit code 2).
  `advisor ... | head` ends quietly with exit code 0.
- One name per thing: `--max-images` caps images (embedded, or tested by `run`), `--weights-dir`
  is where model weights live (the embedding cache is `advisor cache`, `ADVISOR_CACHE`),
  `--device` defaults to `auto` everywhere, `--shots` defaults to 16 wherever it means the
  fine-tuning run's training images per class (`run`, `recommend`, `sweep`); on `embed` and
  `signals` it cuts the sample to embed and has no default, as the history's signals use none.
"""


def _walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], path + [name])


def _help_text(cmd: click.Command) -> str:
    """The docstring as Markdown: paragraphs as text, click's ``\\b`` blocks as code."""
    text = inspect.cleandoc(cmd.help or "")
    out: list[str] = []
    for para in text.split("\n\n"):
        if para.startswith("\b"):
            lines = [ln for ln in para.splitlines()[1:]]
            out.append("```\n" + "\n".join(lines) + "\n```")
        else:
            out.append(" ".join(para.split()))
    return "\n\n".join(out)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(ctx: click.Context, p: click.Option) -> str:
    if p.is_flag and not p.count:
        return ""
    if p.required:
        return "required"
    value = p.get_default(ctx, call=False)
    unset = getattr(click.core, "UNSET", None)  # click >= 8.2 marks "no default" with a sentinel
    if value is None or value is unset or value == () or callable(value):
        return ""
    return f"`{value}`"


def _options(ctx: click.Context, cmd: click.Command) -> list[str]:
    rows = ["| option | value | default | env | description |", "|---|---|---|---|---|"]
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Argument):
            rows.append(f"| `{p.make_metavar(ctx) if _takes_ctx(p) else p.make_metavar()}` | argument | | | "
                        f"{'required' if p.required else 'optional'} |")
            continue
        if not isinstance(p, click.Option) or p.hidden:
            continue
        names = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
        value = "" if p.is_flag else _cell(p.make_metavar(ctx) if _takes_ctx(p) else p.make_metavar())
        env = f"`{p.envvar}`" if isinstance(p.envvar, str) else ""
        rows.append(f"| {names} | {value} | {_cell(_default(ctx, p))} | {env} | {_cell(p.help or '')} |")
    return rows


def _takes_ctx(p: click.Parameter) -> bool:
    return "ctx" in inspect.signature(p.make_metavar).parameters


def render() -> str:
    """docs/cli.md as the code defines it."""
    from advisor.cli import ENVIRONMENT, cli

    parts = [HEADER]
    parts.append("## Environment variables\n")
    parts.append("Every variable advisor reads (`advisor --help` lists them too):\n")
    parts.append("| variable | effect |\n|---|---|")
    parts.append("\n".join(f"| `{k}` | {_cell(v)} |" for k, v in ENVIRONMENT.items()) + "\n")
    # The root context carries the group's context_settings (``-h`` as well as ``--help``), as
    # ``cli.make_context`` would; sub-command contexts inherit them.
    root = click.Context(cli, info_name="advisor", **cli.context_settings)
    for path, cmd in _walk(cli, []):
        name = " ".join(["advisor", *path])
        ctx = click.Context(cmd, info_name=path[-1], parent=root) if path else root
        parts.append(f"## {name}\n")
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        parts.append(f"```\n{name} {usage}\n```\n")
        if cmd.help:
            parts.append(_help_text(cmd) + "\n")
        if isinstance(cmd, click.Group) and cmd.commands:
            parts.append("Commands: " + ", ".join(f"`{c}`" for c in sorted(cmd.commands)) + ".\n")
        rows = _options(ctx, cmd)
        if len(rows) > 2:
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
