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
