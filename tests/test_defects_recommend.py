"""Issue 16: `recommend` with more shots than the dataset's smallest class has training images
says so (a warning on stderr and in the JSON); at the limit it does not."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from advisor.config import shipped_registry
from advisor.data import get_split, load_dataset


@pytest.fixture
def registry_copy(tmp_path):
    shipped = shipped_registry()
    if shipped is None:
        pytest.skip("no shipped registry.db")
    db = tmp_path / "registry.db"
    shutil.copyfile(shipped, db)
    with sqlite3.connect(db) as con:  # the stored predictor's format may lag the code: train one on first use
        con.execute("delete from predictors")
    return db


def test_recommend_warns_when_shots_exceed_the_smallest_class(registry_copy, cli):
    labels = np.asarray(get_split(load_dataset("digits"), "train").labels)
    fewest = int(np.bincount(labels).min())
    too_many = cli("recommend", "--model", "lit-offline", "--dataset", "digits", "--shots", str(fewest + 1),
                   "--db", str(registry_copy), "--json")
    assert too_many.exit_code == 0, too_many.output
    warnings = json.loads(too_many.stdout)["warnings"]
    expected = f"{fewest + 1} shots per class requested but the training split of 'digits' has only {fewest} image(s)"
    assert any(w.startswith(expected) for w in warnings), warnings
    table = cli("recommend", "--model", "lit-offline", "--dataset", "digits", "--shots", str(fewest + 1),
                "--db", str(registry_copy))
    assert any(ln.startswith("Warning: " + expected) for ln in table.stderr.splitlines()), table.stderr
    assert expected not in table.stdout
    at_limit = cli("recommend", "--model", "lit-offline", "--dataset", "digits", "--shots", str(fewest),
                   "--db", str(registry_copy), "--json")
    assert at_limit.exit_code == 0, at_limit.output
    assert not any("shots per class requested" in w for w in json.loads(at_limit.stdout)["warnings"])
