"""The docs keep up with the code (as datasette does): every hook has a section in
docs/plugins.md headed by its exact signature, and every history column is in docs/history.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from advisor import hookspecs
from advisor.history.io import COLUMNS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _hookspecs() -> list[tuple[str, str]]:
    out = []
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if getattr(fn, "advisor_spec", None) is not None:  # set by HookspecMarker("advisor")
            params = ", ".join(inspect.signature(fn).parameters)
            out.append((name, f"{name}({params})"))
    return out


def _headings(path: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{2,4}\s+(.+)$", path.read_text(encoding="utf-8"), re.M)}


def test_there_are_hooks_to_document():
    assert {name for name, _ in _hookspecs()} >= {"register_metrics", "register_tuners", "register_datasets",
                                                  "register_models", "register_commands", "on_run_recorded"}


@pytest.mark.parametrize("name, signature", _hookspecs())
def test_hook_is_documented_with_its_signature(name, signature):
    headings = _headings(DOCS / "plugins.md")
    assert signature in headings, f"docs/plugins.md needs a heading '## {signature}'"


def test_no_documented_hook_is_missing_from_the_code():
    documented = {h.split("(")[0] for h in _headings(DOCS / "plugins.md") if re.fullmatch(r"\w+\(.*\)", h)}
    assert documented == {name for name, _ in _hookspecs()}


@pytest.mark.parametrize("column", [c.name for c in COLUMNS])
def test_history_column_is_documented(column):
    assert f"| `{column}` |" in (DOCS / "history.md").read_text(encoding="utf-8")


def test_cli_reference_is_generated_from_the_click_definitions():
    """docs/cli.md is exactly what scripts/gen_cli_docs.py renders from the code: an option
    added, renamed or re-documented without regenerating it fails here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_cli_docs", DOCS.parent / "scripts" / "gen_cli_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    expected = gen.render()
    actual = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/cli.md is out of date: run python scripts/gen_cli_docs.py"


def test_cli_reference_covers_every_command_and_option():
    """Independent of the generator: every command path and every visible option name of the
    click tree appears in docs/cli.md."""
    import click

    from advisor.cli import cli

    text = (DOCS / "cli.md").read_text(encoding="utf-8")

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])

    for path, cmd in walk(cli, []):
        section = text.split(f"## {' '.join(['advisor', *path])}\n", 1)
        assert len(section) == 2, f"docs/cli.md has no section for advisor {' '.join(path)}"
        body = section[1].split("\n## ", 1)[0]
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for opt in p.opts:
                    assert f"`{opt}`" in body, f"advisor {' '.join(path)}: {opt} is not documented"
