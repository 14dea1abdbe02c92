"""advisor.data.describe_dataset: descriptors memoised by the source's identity, so describing a
known dataset decodes no image; a changed file, a source without identity or a damaged memo
loads the data again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from advisor import data, plugins
from advisor.hookspecs import hookimpl
from advisor.specs import DatasetBundle, DatasetSource, DatasetSpec, ImageSet


def _bundle(spec: DatasetSpec, n: int) -> DatasetBundle:
    images = np.zeros((2 * n, 4, 4), dtype=np.uint8)
    labels = np.repeat(np.arange(2), n)
    return DatasetBundle(name=spec.name, class_names=["a", "b"], templates=["a photo of a {}."],
                         train=ImageSet(images, labels, [f"i{k}" for k in range(2 * n)]), test=None,
                         fingerprint=f"fp-{n}")


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A source ``counted`` whose data is a file holding its size per class; loads are counted."""
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    source_file = tmp_path / "n.txt"
    source_file.write_text("5")
    loads = []

    def load(spec: DatasetSpec) -> DatasetBundle:
        loads.append(spec.name)
        return _bundle(spec, int(source_file.read_text()))

    def identity(spec: DatasetSpec) -> str:
        st = source_file.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetSource(name="counted", load=load, identity=identity))
            register(DatasetSource(name="plain", load=load))

    pm = plugins.load_plugins()
    pm.register(Plugin(), name="counted-plugin")
    plugins.reset_cache()
    try:
        yield source_file, loads
    finally:
        pm.unregister(name="counted-plugin")
        plugins.reset_cache()


def test_a_described_dataset_is_not_loaded_again(counted) -> None:
    _, loads = counted
    first = data.describe_dataset("counted")
    assert first == data.dataset_descriptors(_bundle(DatasetSpec("counted"), 5))
    assert data.describe_dataset("counted") == first
    assert loads == ["counted"]


def test_a_changed_source_file_is_described_anew(counted) -> None:
    source_file, loads = counted
    assert data.describe_dataset("counted")["n_train"] == 8  # 10 images, 80 % train
    source_file.write_text("10")
    assert data.describe_dataset("counted")["n_train"] == 16
    assert loads == ["counted", "counted"]


def test_a_source_without_identity_is_loaded_every_time(counted) -> None:
    _, loads = counted
    data.describe_dataset("plain")
    data.describe_dataset("plain")
    assert loads == ["plain", "plain"]


def test_a_damaged_memo_costs_only_a_load(counted, tmp_path: Path) -> None:
    _, loads = counted
    first = data.describe_dataset("counted")
    for memo in (tmp_path / "cache" / "datasets").glob("descriptors-*.json"):
        memo.write_text("{not json")
    assert data.describe_dataset("counted") == first
    assert loads == ["counted", "counted"]


@pytest.mark.parametrize("name", ["digits", "mnist-0to4"])
def test_offline_sources_memoise_what_loading_describes(name: str) -> None:
    expected = data.dataset_descriptors(data.load_dataset(name))
    assert data.describe_dataset(name) == expected
    assert data.describe_dataset(name) == expected  # from the memo


def test_offline_identity_follows_the_option_files(tmp_path: Path) -> None:
    from advisor_plugins.datasets import offline

    names = tmp_path / "names.json"
    names.write_text('["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]')
    spec = DatasetSpec("digits", options=(("classnames", str(names)),))
    before = offline.identity("digits", spec)
    assert before is not None and before != offline.identity("digits", DatasetSpec("digits"))
    names.write_text('["0", "1", "2", "3", "4", "5", "6", "7", "8", "nine!"]')
    assert offline.identity("digits", spec) != before
