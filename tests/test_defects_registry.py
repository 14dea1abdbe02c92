"""Issue 16: the shipped history carries no adapter paths that exist on no user's machine.

Adapters are stored relative to the adapters directory beside their history (see
tests/test_defects_run.py); the shipped rows had absolute paths into the builder's home
directory (/root/.local/share/advisor/adapters/...). A shipped row may name an adapter only
relative to ``registry.adapters/`` and only when that file ships too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from advisor.config import adapters_dir, shipped_registry


def test_shipped_rows_hold_no_absolute_or_missing_adapter_paths():
    shipped = shipped_registry()
    if shipped is None:
        pytest.skip("no shipped registry.db")
    con = sqlite3.connect(f"file:{shipped}?mode=ro", uri=True)
    try:
        paths = [p for (p,) in con.execute("select adapter_path from runs where adapter_path is not null")]
    finally:
        con.close()
    folder = adapters_dir(shipped)
    bad = [p for p in paths if Path(p).is_absolute() or not (folder / p).is_file()]
    assert not bad, f"{len(bad)} of {len(paths)} shipped rows name adapters no user has, e.g. {bad[0]}"
