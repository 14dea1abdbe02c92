"""Issue 27, files and plugins: outputs written like a plain open() would (mode, devices, full
disks, missing folders), bounded inputs (image sizes, npz headers, csv labels), the embedding
cache checking what it serves, `cache clear` asking first, folder datasets with symbolic links,
declared dataset options, and plugins that cannot silence a command or replace one."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import advisor
from advisor import cache
from advisor.specs import Metric
from advisor.testing import registered_plugin
from conftest import run_advisor

#: A small, fast embedding: 40 test images of `digits` through lit-offline (cached after the first).
EMBED = ("embed", "--model", "lit-offline", "--dataset", "digits", "--split", "test", "--max-images", "40", "--quiet")
LONG = "/tmp/" + "a" * 5000


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


def _advisor_limited(max_file_bytes: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``advisor ARGS`` in a process that cannot write files beyond ``max_file_bytes``: a write
    past it fails with EFBIG, as a full disk fails with ENOSPC (no mount needed)."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
            "from advisor.cli import cli; sys.exit(cli())")
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          timeout=300)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- embed -o


def test_embed_output_gets_the_mode_a_plain_open_would_give(tmp_path, cli, umask_027):
    out = tmp_path / "e.npz"
    r = cli(*EMBED, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # 0666 less the umask, not mkstemp's 0600
    out.chmod(0o604)
    assert cli(*EMBED, "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o604  # a replaced file keeps its mode


def test_embed_output_to_a_device_node_writes_it_and_never_replaces_it(tmp_path, cli):
    node = tmp_path / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    line = _one_error_line(cli(*EMBED, "-o", str(node)))
    assert line.startswith(f"Error: cannot write {node}: ")
    assert stat.S_ISCHR(node.stat().st_mode)  # still the device, not a regular file renamed over it
    assert not list(tmp_path.glob(".full.*"))


def test_embed_output_to_a_fifo_writes_into_the_fifo(tmp_path, cli):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    received = {}

    import threading

    def read() -> None:
        with open(fifo, "rb") as f:
            received["bytes"] = f.read()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    r = cli(*EMBED, "-o", str(fifo))
    reader.join(timeout=60)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with np.load(io.BytesIO(received["bytes"])) as data:
        assert data["image"].shape[0] == 40


def test_embed_output_into_a_missing_folder_is_refused_before_embedding(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "no" / "such" / "e.npz"
    line = _one_error_line(cli(*EMBED, "-o", str(target)))
    assert line == f"Error: cannot write {target}: directory {target.parent} does not exist"
    assert not list((tmp_path / "cache").rglob("*.npz"))  # refused before any embedding


def test_paths_longer_than_the_file_system_allows_are_one_line_errors(tmp_path, cli):
    npz = tmp_path / "e.npz"
    assert cli(*EMBED, "-o", str(npz)).exit_code == 0
    db = str(tmp_path / "h.db")
    for args in [
        (*EMBED, "-o", LONG + ".npz"),
        ("report", "--db", db, "-o", LONG + ".html"),
        ("embed", "--model", "lit-offline", "--dataset", "folder:" + LONG, "--quiet"),
        ("embed", "--model", "lit-offline", "--dataset", "digits", "--classnames", LONG + ".json", "--quiet"),
        ("signals", "--from-embeddings", LONG + ".npz"),
        ("recommend", "--from-embeddings", LONG + ".npz"),
    ]:
        line = _one_error_line(cli(*args))
        assert "characters)" in line and len(line) < 400, line  # the path is elided, the line is short


def test_a_full_disk_is_one_line_naming_the_output_and_the_cache_only_warns(tmp_path):
    out = tmp_path / "e.npz"
    env = {"ADVISOR_CACHE": str(tmp_path / "cache")}
    p = _advisor_limited(20_000, *EMBED, "-o", str(out), env=env)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1] == f"Error: cannot write {out}: File too large"
    cache_warning = [x for x in lines if x.startswith("Warning: cannot write ") and x.endswith(
        "; going on without the embedding cache")]
    assert len(cache_warning) == 1 and str(tmp_path / "cache") in cache_warning[0]
    assert not out.exists() and not list(tmp_path.glob(".e.npz.*"))  # no partial file left behind
    assert not list((tmp_path / "cache").rglob("*.npz")) and not list((tmp_path / "cache").rglob(".*.tmp"))


# --------------------------------------------------------------------------- report -o


def test_report_on_a_full_disk_leaves_no_empty_file_and_keeps_the_old_one(tmp_path):
    from synthetic_history import record_synthetic, synthetic_rows

    db = str(tmp_path / "h.db")
    record_synthetic(db, synthetic_rows(n_datasets=3, shots=(16,)))
    fresh = tmp_path / "fresh.html"
    p = _advisor_limited(30_000, "report", "--db", db, "-o", str(fresh), env={"ADVISOR_HOME": str(tmp_path / "home")})
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"Error: cannot write {fresh}: File too large"
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.html.*"))
    old = tmp_path / "old.html"
    old.write_text("<p>the previous report</p>")
    p = _advisor_limited(30_000, "report", "--db", db, "-o", str(old), env={"ADVISOR_HOME": str(tmp_path / "home")})
    assert p.returncode == 1
    assert old.read_text() == "<p>the previous report</p>"


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("size", ["9223372036854775808", "4096", "8"])
def test_embed_image_size_out_of_bounds_is_refused_before_loading(tmp_path, cli, monkeypatch, size):
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    line = _one_error_line(cli("embed", "--model", "lit-offline", "--dataset", "digits", "--image-size", size))
    assert line == f"Error: --image-size must be a positive number of pixels from 16 to 2048 (got {size})"


def _npz_declaring(path: Path, **shapes: tuple[int, ...]) -> None:
    """An .npz whose npy headers claim ``shapes`` while holding only a few bytes of data."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, shape in shapes.items():
            buf = io.BytesIO()
            dtype = np.int64 if name == "labels" else np.float32
            np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                       "fortran_order": False, "shape": shape})
            buf.write(b"\0" * 64)
            zf.writestr(f"{name}.npy", buf.getvalue())


@pytest.mark.parametrize("command", ["signals", "recommend"])
def test_npz_headers_claiming_huge_arrays_are_refused_before_loading(tmp_path, cli, command):
    tall = tmp_path / "tall.npz"
    _npz_declaring(tall, image=(2_000_000_000, 8), text=(2, 8), labels=(2_000_000_000,))
    wide = tmp_path / "wide.npz"
    _npz_declaring(wide, image=(10, 50_000_000), text=(2, 50_000_000), labels=(10,))
    line = _one_error_line(cli(command, "--from-embeddings", str(tall)))
    assert line == (f"Error: {tall}: 'image' has shape (2000000000, 8): 2000000000 rows, more than the 10000000 "
                    "the signals can use")
    line = _one_error_line(cli(command, "--from-embeddings", str(wide)))
    assert line.startswith(f"Error: {wide}: 'image' has shape (10, 50000000): 50000000 columns, more than the 16384")


def test_csv_label_holding_a_huge_integer_is_one_line(tmp_path, cli):
    _pngs(tmp_path / "img", 2)
    (tmp_path / "t.csv").write_text("image,label\nimg/0.png,0\nimg/1.png,99999999999999999999999\n")
    line = _one_error_line(cli("embed", "--model", "lit-offline", "--dataset", f"csv:{tmp_path / 't.csv'}"))
    assert line.startswith("Error: label 99999999999999999999999 (row 3) would make ")
    assert "more than 100000" in line


# --------------------------------------------------------------------------- cache


def test_a_cache_file_replaced_by_another_embedding_is_a_miss(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    first = json.loads(cli(*EMBED, "--json").stdout)
    second = json.loads(cli(*EMBED[:-2], "41", "--quiet", "--json").stdout)  # another key, another sample
    folder = tmp_path / "cache" / cache.SUBDIR
    shutil.copyfile(folder / f"{first['cache_key']}.npz", folder / f"{second['cache_key']}.npz")
    again = json.loads(cli(*EMBED[:-2], "41", "--quiet", "--json").stdout)
    assert again["cache_hit"] is False and again["n"] == 41  # not the 40 images of the other key's file
    assert json.loads(cli(*EMBED[:-2], "41", "--quiet", "--json").stdout)["cache_hit"] is True


def test_cache_clear_without_yes_and_without_a_terminal_refuses(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("ADVISOR_CACHE", str(tmp_path / "cache"))
    assert cli(*EMBED).exit_code == 0
    files = list((tmp_path / "cache").rglob("*.npz"))
    assert files
    line = _one_error_line(cli("cache", "clear", input=""))
    assert line.startswith("Error: refusing to delete every cached embedding") and "--yes" in line
    assert all(f.exists() for f in files)
    p = run_advisor("cache", "clear", env={"ADVISOR_CACHE": str(tmp_path / "cache")})  # stdin of a pipe
    assert p.returncode == 1 and "--yes" in p.stderr and all(f.exists() for f in files)
    r = cli("cache", "clear", "--yes")
    assert r.exit_code == 0 and not any(f.exists() for f in files)


# --------------------------------------------------------------------------- folder: and csv:


def _pngs(folder: Path, n: int, offset: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i + offset)
        Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_folder_symlink_loops_are_walked_once_and_dangling_links_skipped(tmp_path, cli):
    root = tmp_path / "pets"
    _pngs(root / "cat", 6)
    _pngs(root / "dog", 6, offset=10)
    (root / "cat" / "loop").symlink_to("..")  # back to the dataset folder
    (root / "dog" / "again").symlink_to(root / "dog")  # to itself
    (root / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    out = tmp_path / "e.npz"
    r = cli("embed", "--model", "lit-offline", "--dataset", f"folder:{root}", "--quiet", "--json", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 10  # the training 80 % of the 12 images the folder holds
    from advisor.data import load_dataset

    bundle = load_dataset(f"folder:{root}")
    assert bundle.test is None and sorted(bundle.train.ids) == sorted(
        [f"cat/{i}.png" for i in range(6)] + [f"dog/{i}.png" for i in range(6)])  # each once
    warnings = [x for x in r.stderr.splitlines() if x.startswith("Warning: skipped")]
    assert any("cat/loop" in w and "loop" in w for w in warnings)
    assert any("dog/again" in w for w in warnings)
    assert any("gone.png: a link to a file that does not exist" in w for w in warnings)


def test_unknown_dataset_options_are_refused_for_every_loader(tmp_path, cli):
    _pngs(tmp_path / "img", 3)
    (tmp_path / "t.csv").write_text("image,class,label\nimg/0.png,a,x\nimg/1.png,b,x\nimg/2.png,c,y\n")
    line = _one_error_line(cli("embed", "--model", "lit-offline", "--dataset", f"csv:{tmp_path / 't.csv'}",
                               "-O", "label_colum=class"))
    assert line.startswith(f"Error: dataset 'csv:{tmp_path / 't.csv'}' has no option 'label_colum' (its options: ")
    assert "label_column" in line
    for dataset in (f"folder:{tmp_path}", "digits", "torchvision:MNIST"):
        line = _one_error_line(cli("embed", "--model", "lit-offline", "--dataset", dataset, "-O", "colour=red"))
        assert f"has no option 'colour'" in line, line
    # A declared option still works: the mistyped one was the only problem.
    r = cli("embed", "--model", "lit-offline", "--dataset", f"csv:{tmp_path / 't.csv'}", "-O", "label_column=class",
            "--quiet", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["classes"] == 3


def test_recommend_checks_the_dataset_folder_before_the_model_weights(tmp_path, cli):
    r = cli("recommend", "--model", "ViT-B-32", "--pretrained", "openai", "--dataset", f"folder:{tmp_path / 'missing'}")
    assert _one_error_line(r) == f"Error: folder {tmp_path / 'missing'} does not exist"


# --------------------------------------------------------------------------- plugins


class _ExitingMetric:
    @advisor.hookimpl
    def register_metrics(self, register):
        def compute(emb):
            sys.exit(0)

        register(Metric(name="exits_metric", compute=compute, needs=frozenset({"image"})))


def test_a_metric_calling_sys_exit_is_a_failed_metric_not_a_silent_success(tmp_path, cli):
    rng = np.random.default_rng(0)
    npz = tmp_path / "e.npz"
    np.savez(npz, image=rng.normal(size=(30, 8)), text=rng.normal(size=(3, 8)), labels=np.arange(30) % 3)
    with registered_plugin(_ExitingMetric(), "exiting-metric"):
        r = cli("signals", "--from-embeddings", str(npz))
    assert r.exit_code == 0, r.output
    assert "iimm" in r.stdout  # the other metrics ran and were printed
    assert ("Warning: metric 'exits_metric' failed: PluginError: plugin 'exiting-metric' failed in metric "
            "'exits_metric' (compute): called sys.exit(0)") in r.stderr


def _fake_installed_plugin(site: Path, module: str, dist: str, source: str) -> None:
    """A module plus the dist-info pip writes (entry point ``module`` in the ``advisor`` group)."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[advisor]\n{module} = {module}\n")


METRIC_PLUGIN = ("from advisor.hookspecs import hookimpl\nfrom advisor.specs import Metric\n\n"
                 "@hookimpl\ndef register_metrics(register):\n"
                 "    register(Metric(name='fake_score', compute=lambda emb: 1.0))\n")
COMMAND_PLUGIN = ("import click\nfrom advisor.hookspecs import hookimpl\n\n"
                  "@hookimpl\ndef register_commands(cli):\n"
                  "    @cli.command(name='recommend')\n    def hijack():\n        click.echo('hijacked')\n"
                  "    @cli.command(name='fake-hello')\n    def hello():\n        click.echo('hello')\n")


@pytest.fixture
def site(tmp_path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _fake_installed_plugin(site, "fake_metric", "advisor-fake-metric", METRIC_PLUGIN)
    _fake_installed_plugin(site, "fake_commands", "advisor-fake-commands", COMMAND_PLUGIN)
    _fake_installed_plugin(site, "fake_exit", "advisor-fake-exit", "import sys\nsys.exit(0)\n")
    _fake_installed_plugin(site, "fake_osexit", "advisor-fake-osexit", "import os\nos._exit(0)\n")
    return site


def _with_site(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("ADVISOR_BLOCK_PLUGINS", "ADVISOR_LOAD_PLUGINS")}
    base["PYTHONPATH"] = os.pathsep.join([str(site), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env={**base, **env},
                          timeout=180)


def test_load_plugins_accepts_distribution_names_and_names_the_unknown_ones(site):
    p = _with_site(site, "plugins", "--json", ADVISOR_LOAD_PLUGINS="advisor-fake-metric")
    assert p.returncode == 0, p.stderr
    names = {e["name"] for e in json.loads(p.stdout)}
    assert "fake_metric" in names and "fake_commands" not in names
    assert "Warning: ADVISOR_LOAD_PLUGINS" not in p.stderr
    p = _with_site(site, "plugins", "--json", ADVISOR_LOAD_PLUGINS="advisor-fake-metrc,fake_metric")
    assert p.returncode == 0, p.stderr
    assert "fake_metric" in {e["name"] for e in json.loads(p.stdout)}
    warning = [x for x in p.stderr.splitlines() if x.startswith("Warning: ADVISOR_LOAD_PLUGINS")]
    assert len(warning) == 1 and "'advisor-fake-metrc'" in warning[0]
    assert "advisor-fake-metric" in warning[0] and "fake_commands" in warning[0]  # the known names are listed


def test_a_plugin_command_named_like_a_built_in_is_ignored_with_a_warning(site):
    p = _with_site(site, "recommend", "--help", ADVISOR_LOAD_PLUGINS="fake_commands")
    assert p.returncode == 0, p.stderr
    assert "hijacked" not in p.stdout and "--model" in p.stdout  # the built-in recommend
    assert ("Warning: plugin 'fake_commands' registered command 'recommend', already provided by advisor; ignored"
            in p.stderr.splitlines())
    assert _with_site(site, "fake-hello", ADVISOR_LOAD_PLUGINS="fake_commands").stdout == "hello\n"


@pytest.mark.parametrize("plugin, how", [("fake_exit", "sys.exit(0)"), ("fake_osexit", "os._exit(0)")])
def test_a_plugin_calling_sys_exit_at_import_does_not_end_history_add(site, tmp_path, plugin, how):
    """``sys.exit`` or ``os._exit`` at import cannot end advisor silently: it is a failed plugin."""
    db = tmp_path / "h.db"
    row = {"model": "m", "dataset": "d", "method": "lora", "seed": 0, "id_acc_before": 0, "id_acc_after": 1,
           "hparams": {"lr": 0.1}, "signal.iimm": 0.5}
    (tmp_path / "runs.json").write_text(json.dumps([row]))
    p = _with_site(site, "history", "add", str(tmp_path / "runs.json"), "--db", str(db),
                   ADVISOR_LOAD_PLUGINS=plugin)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Added 1 run")
    assert f"Warning: plugin '{plugin}' failed to load and was skipped (called {how})" in p.stderr


def test_trace_plugins_prints_every_hook_call(site):
    p = _with_site(site, "plugins", ADVISOR_TRACE_PLUGINS="1", ADVISOR_LOAD_PLUGINS="fake_metric,fake_commands")
    assert p.returncode == 0, p.stderr
    trace = [x for x in p.stderr.splitlines() if x.startswith("[advisor] hook ")]
    assert any(x.startswith("[advisor] hook register_metrics(register=") and x.endswith("-> fake_metric") for x in trace)
    assert any(x.startswith("[advisor] hook register_commands(cli=") and x.endswith("-> fake_commands") for x in trace)
    assert any("-> advisor_plugins.metrics.iimm" in x for x in trace)
    assert sum(x.startswith("[advisor] hook register_tuners(") for x in trace) >= 1
