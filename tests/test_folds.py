"""Code that was written twice and now lives in one place: which hyper-parameters differ among
runs (``history list`` and "Similar runs"), the ``.npz`` cache write (``advisor.atomic``), the
asset sources' declarations, and the path checks of the ``csv:`` and ``folder:`` datasets."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_run

from advisor.atomic import npz_cached
from advisor.errors import DatasetError
from advisor.history import open_history
from advisor.predictor.support import differing_hparams, similar_run_labels
from advisor.specs import DatasetSpec

# ------------------------------------------------------------------ differing hyper-parameters

RUNS = [{"lr": 0.0012344, "rank": 4, "epochs": 10}, {"lr": 0.0012341, "rank": 4, "epochs": 20}, {"lr": 0.02, "rank": 4}]


def test_history_list_and_similar_runs_name_the_same_differing_hyper_parameters(tmp_path: Path, cli: Any) -> None:
    db = str(tmp_path / "h.db")
    with open_history(db) as h:
        for seed, hp in enumerate(RUNS):
            h.record_run(make_run(seed=seed, hparams=hp))
    res = cli("history", "list", "--db", db)
    assert res.exit_code == 0, res.output
    listed = [ln for ln in res.stdout.splitlines() if " lora " in ln]
    labels = similar_run_labels([{"hparams": hp, "seed": 0, "shots": 4} for hp in RUNS], lambda r: ("m", "d"))
    # Both say epochs and lr differ (rank does not), with a missing epochs read as null; the two
    # learning rates that 4 significant digits would merge are written in full.
    expected = ["epochs=10 lr=0.0012344", "epochs=20 lr=0.0012341", "epochs=null lr=0.02"]
    assert [next(e for e in expected if e in ln) for ln in listed] == expected
    assert labels == [f"m on d (4 shots, {e.replace(' ', ', ')})" for e in expected]
    assert differing_hparams([hp for hp in RUNS[:1]]) == [[]]  # one run: nothing differs


# ------------------------------------------------------------------ the .npz cache write


def test_npz_cache_is_built_once_then_read_and_a_damaged_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "x.npz"  # the folder is made
    calls = []

    def build() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return np.arange(6, dtype=np.uint8).reshape(2, 3), np.array([0, 1])

    first = npz_cached(path, ("images", "labels"), build)
    again = npz_cached(path, ("images", "labels"), build)
    assert len(calls) == 1 and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # as open() makes it, not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.npz"]  # no temporary file left
    path.write_bytes(b"PK\x03\x04 half a file")
    assert np.array_equal(npz_cached(path, ("images", "labels"), build)[0], first[0]) and len(calls) == 2
    assert np.array_equal(npz_cached(path, ("images", "labels"), build)[1], first[1]) and len(calls) == 2


def test_npz_cache_that_cannot_be_written_still_returns_the_arrays(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    images, labels = npz_cached(blocker / "x.npz", ("images", "labels"), lambda: (np.zeros((1, 2)), np.ones(1)))
    assert images.shape == (1, 2) and labels.tolist() == [1.0]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ asset source declarations


def test_a_folder_source_declared_through_the_helper_lists_renders_and_says_what_is_missing(tmp_path: Path) -> None:
    from PIL import Image

    from advisor_plugins.datasets import assets, offline

    root = tmp_path / "icons"
    for folder, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), colour).save(root / folder / f"{i}.png")
    classes = (assets.FolderClass("red", ("a",)), assets.FolderClass("blue", ("b",)))
    names = ("test-fold-icons", "test-fold-missing")
    try:
        src = assets._folder_source(names[0], root, classes, assets._png_tree, side=8, cap=2, template="a {} icon.",
                                    domain=("colour",), description="d", needs="apt-get install nothing", origin="o")
        assert offline.source(names[0]) is src and src.class_names == ("red", "blue")
        raw = src.raw()
        assert raw.train.images.shape == (4, 8, 8, 3) and raw.train.labels.tolist() == [0, 0, 1, 1]
        assert raw.train.ids == ["a/0.png", "a/2.png", "b/0.png", "b/2.png"]  # at most cap, spread evenly
        assert src.files(None) == [root / "a/0.png", root / "a/2.png", root / "b/0.png", root / "b/2.png"]
        gone = assets._folder_source(names[1], tmp_path / "nowhere", classes, assets._png_tree, side=8, cap=2,
                                     template="{}", domain=(), description="d", needs="apt-get install x", origin="o")
        with pytest.raises(DatasetError, match=rf"^test-fold-missing needs `apt-get install x` \(missing {tmp_path}/nowhere\)$"):
            gone.raw()
        assert gone.files(None) is None
    finally:
        for n in names:
            offline._REGISTERED.pop(n, None)


# ------------------------------------------------------------------ csv: and folder: paths


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_csv_and_folder_paths_are_checked_alike(kind: str, tmp_path: Path) -> None:
    from advisor_plugins.datasets import csv, folder

    plugin = csv if kind == "csv" else folder
    noun = "csv file" if kind == "csv" else "folder"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    wrong = tmp_path / "a-folder" if kind == "csv" else tmp_path / "a-file"
    wrong.mkdir() if kind == "csv" else wrong.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=rf"^{kind} dataset needs a path: {kind}:PATH$"):
        plugin.check(DatasetSpec(name=f"{kind}:"))
    with pytest.raises(DatasetError, match=rf"^{noun} {dangling} does not exist$"):
        plugin.check(DatasetSpec(name=f"{kind}:{dangling}"))
    what = "file" if kind == "csv" else "directory"
    for path in (wrong, fifo):  # a FIFO is never opened (reading it would wait forever)
        with pytest.raises(DatasetError, match=rf"^{kind}:{path} is not a {what}$"):
            plugin.load(DatasetSpec(name=f"{kind}:{path}"))
    with pytest.raises(DatasetError, match=rf"^{noun} .* cannot be read: the path is longer than the file system allows$"):
        plugin.check(DatasetSpec(name=f"{kind}:{tmp_path / ('x' * 300)}"))
    link = tmp_path / "link"
    target = tmp_path / ("t.csv" if kind == "csv" else "t")
    target.write_text("image,label\n") if kind == "csv" else target.mkdir()
    link.symlink_to(target)
    assert plugin.check(DatasetSpec(name=f"{kind}:{link}")) == target.resolve()  # through the link


def test_a_listed_image_the_file_system_refuses_is_one_line_naming_it_and_the_table(tmp_path: Path) -> None:
    from advisor.atomic import short_path
    from advisor_plugins.datasets import csv

    image = tmp_path / ("x" * 300 + ".png")
    table = tmp_path / "t.csv"
    table.write_text(f"image,label\n{image.name},cat\n")
    with pytest.raises(DatasetError) as err:
        csv.load(DatasetSpec(name=f"csv:{table}"))
    assert str(err.value) == (f"cannot read {short_path(image)} (csv {table}): "
                              "the path is longer than the file system allows")
