"""Issue 16, embedding cache items: it lives in the user *cache* directory, `cache clear
--older-than` removes what was not used for that long, a size cap evicts least recently used
files after writes, and `cache path/list/clear` speak JSON."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from advisor import cache
from advisor.config import cache_dir
from advisor.specs import Embeddings


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cache.MAX_GB_ENV, raising=False)
    return tmp_path / "cache" / cache.SUBDIR


def _emb(seed: int, n: int = 50) -> Embeddings:
    rng = np.random.default_rng(seed)
    return Embeddings(image=rng.normal(size=(n, 8)).astype(np.float32), text=rng.normal(size=(2, 8)).astype(np.float32),
                      labels=np.arange(n) % 2, class_names=["a", "b"], meta={"model": "m", "dataset": f"d{seed}"})


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_cache_defaults_to_the_user_cache_dir_not_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVISOR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("ADVISOR_HOME", raising=False)
    import platformdirs

    assert cache_dir() == Path(platformdirs.user_cache_dir("advisor")) == tmp_path / "xdg-cache" / "advisor"
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_clear_older_than_removes_only_files_unused_for_that_long(fresh_cache, cli):
    old = cache.save("a" * 24, _emb(1))
    recent = cache.save("b" * 24, _emb(2))
    _age(old, 10 * 86400)
    _age(recent, 3600)
    r = cli("cache", "clear", "--older-than", "7d", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["removed"] == 1 and out["bytes_freed"] > 0 and out["older_than_s"] == 7 * 86400
    assert not old.exists() and recent.exists()
    listed = json.loads(cli("cache", "list", "--json").stdout)
    assert [row["key"] for row in listed] == ["b" * 24] and listed[0]["last_used"]


def test_a_cache_hit_counts_as_use_for_clear_older_than(fresh_cache, cli):
    path = cache.save("c" * 24, _emb(3))
    _age(path, 10 * 86400)
    assert cache.load("c" * 24) is not None
    assert json.loads(cli("cache", "clear", "--older-than", "7d", "--json").stdout)["removed"] == 0
    assert path.exists()


def test_size_cap_evicts_least_recently_used_after_a_write(fresh_cache, monkeypatch):
    first = cache.save("1" * 24, _emb(1))
    size = first.stat().st_size
    second = cache.save("2" * 24, _emb(2))
    third = cache.save("3" * 24, _emb(3))
    for i, p in enumerate((first, second, third)):
        _age(p, 1000 - i)  # first oldest
    assert cache.load("1" * 24) is not None  # a hit: first becomes the most recently used
    monkeypatch.setenv(cache.MAX_GB_ENV, str(3.5 * size / 1e9))
    fourth = cache.save("4" * 24, _emb(4))
    assert fourth.exists() and first.exists() and third.exists() and not second.exists()
    assert cache.usage()[1] <= 3.5 * size
    assert {row["key"][0] for row in cache.entries()} == {"1", "3", "4"}


def test_bad_cache_settings_are_one_line_errors(fresh_cache, cli, monkeypatch):
    r = cli("cache", "clear", "--older-than", "soon")
    assert r.exit_code == 1 and r.output.strip() == "Error: duration 'soon' is not like 7d, 12h, 90m, 30s or 1d12h"
    for bad in ("0", "-1", "lots", "inf", "nan"):
        monkeypatch.setenv(cache.MAX_GB_ENV, bad)
        r = cli("cache", "path")
        assert r.exit_code == 1 and r.output.strip() == f"Error: {cache.MAX_GB_ENV}={bad!r} is not a positive number of gigabytes"


def test_cache_path_json(fresh_cache, cli):
    cache.save("d" * 24, _emb(5))
    out = json.loads(cli("cache", "path", "--json").stdout)
    assert out["path"] == str(fresh_cache) and out["files"] == 1
    assert out["bytes"] == (fresh_cache / ("d" * 24 + ".npz")).stat().st_size
    assert out["max_bytes"] == int(cache.DEFAULT_MAX_GB * 1e9)
    assert cli("cache", "path").stdout.strip() == str(fresh_cache)
