"""One CLI, one set of conventions (issue 16): one name per thing, one default per meaning,
``--json`` everywhere with the same keys, every environment variable documented, notes on
stderr, tables that fit the terminal, ``| head`` ending quietly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

import advisor

from conftest import REPO


def _commands():
    from advisor.cli import cli

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd

    return dict(walk(cli, []))


def _option(cmd: click.Command, name: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and name in p.opts), None)


@pytest.fixture
def emb_npz(tmp_path: Path) -> str:
    """Embeddings a user brought: 3 classes x 20 images in 16 dimensions (seeded)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    path = tmp_path / "emb.npz"
    np.savez(path, image=rng.normal(size=(60, 16)) + 2.0 * np.eye(16)[labels], text=rng.normal(size=(3, 16)),
             labels=labels)
    return str(path)


@pytest.fixture
def shipped_copy(tmp_path: Path) -> str:
    """A copy of the shipped history (real runs only): the README's commands run on it."""
    path = tmp_path / "registry.db"
    shutil.copy(REPO / "registry.db", path)
    return str(path)


# ------------------------------------------------------------------------- one name per thing


@pytest.mark.parametrize("command", ["run", "signals", "embed", "recommend"])
def test_image_caps_weights_and_device_have_one_name_and_one_default(command):
    cmd = _commands()[command]
    names = {o for p in cmd.params for o in getattr(p, "opts", [])}
    assert "--max-images" in names and "--max-test" not in names
    assert "--weights-dir" in names and "--cache-dir" not in names
    device = _option(cmd, "--device")
    assert device.default == "auto" and device.show_default and device.envvar == "ADVISOR_DEVICE"


def test_sweep_device_has_the_same_default_and_leaves_auto_to_each_worker():
    from advisor.cli import cli

    device = _option(cli.commands["sweep"], "--device")
    assert device.default == "auto" and device.show_default and device.envvar == "ADVISOR_DEVICE"


def test_shots_default_is_one_shown_value_where_it_means_the_fine_tuning_run():
    from advisor.cli import DEFAULT_SHOTS

    for command in ("run", "recommend"):
        shots = _option(_commands()[command], "--shots")
        assert shots.default == DEFAULT_SHOTS == 16 and shots.show_default
    for command in ("signals", "embed"):  # a sample cut, not a training set: no default, and it says so
        shots = _option(_commands()[command], "--shots")
        assert shots.default is None and "default: no few-shot cut" in shots.help


def test_recommend_refuses_a_seed_it_would_ignore(cli):
    result = cli("recommend", "--seed", "3")
    assert result.exit_code == 2
    assert "No such option '--seed'" in result.stderr


def test_old_option_names_are_usage_errors(cli):
    assert "No such option '--max-test'" in cli("run", "--method", "lora", "--max-test", "5").stderr
    assert "No such option '--cache-dir'" in cli("signals", "--cache-dir", "/tmp").stderr


def _empty_history(tmp_path: Path) -> str:
    """A new, empty history file (recommend refuses a --db that does not exist)."""
    from advisor.history import open_history

    open_history(str(tmp_path / "h.db")).close()
    return str(tmp_path / "h.db")


def test_recommend_passes_auto_device_as_no_preference(cli, emb_npz, tmp_path):
    """``--device auto`` (the shown default) must mean what no --device meant: cost predicted for
    the device the history used, not a device kind called 'auto'."""
    out = json.loads(cli("recommend", "--from-embeddings", emb_npz, "--db", _empty_history(tmp_path), "--json").stdout)
    assert out["device"] != "auto"


class _TemplatePlugin:
    """A third-party dataset whose prompt template uses another placeholder spelling."""

    template = "a photo of a {}."

    @advisor.hookimpl
    def register_datasets(self, register):
        from advisor.specs import DatasetBundle, DatasetSource, ImageSet

        def images(first: int) -> ImageSet:
            return ImageSet(images=np.zeros((4, 8, 8, 3), dtype=np.uint8), labels=np.array([0, 1, 0, 1]),
                            ids=[f"img{first + i}" for i in range(4)])

        def load(spec):
            return DatasetBundle(name="plugin-data", class_names=["cat", "dog"], templates=[self.template],
                                 train=images(0), test=images(4), fingerprint="fp")

        register(DatasetSource(name="plugin-data", load=load))


@pytest.fixture
def template_plugin():
    from advisor import plugins

    plugin = _TemplatePlugin()
    pm = plugins.load_plugins()
    pm.register(plugin, name="template-plugin")
    plugins.reset_cache()
    yield plugin
    pm.unregister(name="template-plugin")
    plugins.reset_cache()


@pytest.mark.parametrize("placeholder", ["{}", "{c}", "{class}", "{classname}", "{class_name}"])
def test_one_placeholder_rule_for_templates_from_options_plugins_and_prompts(placeholder, template_plugin):
    """Every spelling the prompt formatter fills is accepted where templates are read from an
    option and where every dataset is loaded (the one gate of `run`, `signals`, `recommend`)."""
    from advisor.data import PLACEHOLDERS, load_dataset, read_templates
    from advisor.embed import format_prompt

    assert placeholder in PLACEHOLDERS
    template = f"a photo of a {placeholder}."
    assert read_templates(template) == ["a photo of a {}."]
    assert format_prompt(template, "cat") == "a photo of a cat."
    template_plugin.template = template
    assert load_dataset("plugin-data").templates == ["a photo of a {}."]


def test_a_template_without_exactly_one_placeholder_is_refused_with_the_rule():
    from advisor.data import read_templates
    from advisor.errors import DatasetError

    for bad in ("a {} and a {class}", "a photo of a {CLASS}."):
        with pytest.raises(DatasetError, match=re.escape("{classname}")):
            read_templates(bad)


# ------------------------------------------------------------------------- --json, same keys


def test_every_command_that_prints_has_json():
    missing = [name for name, cmd in _commands().items() if _option(cmd, "--json") is None]
    assert missing == []


def test_history_add_export_path_print_json(cli, shipped_copy, tmp_path):
    runs = tmp_path / "runs.jsonl"
    exported = json.loads(cli("history", "export", "-o", str(runs), "--db", shipped_copy, "--json").stdout)
    n = len(runs.read_text(encoding="utf-8").splitlines())
    assert exported == {"exported": n, "path": str(runs), "format": "jsonl"} and n >= 250
    db = str(tmp_path / "h.db")
    added = json.loads(cli("history", "add", str(runs), "--db", db, "--json").stdout)
    assert added == {"added": n, "history": db}
    assert json.loads(cli("history", "path", "--db", db, "--json").stdout) == {"path": db}
    # without -o the export itself is the output: --json there would be two documents in one
    assert cli("history", "export", "--db", db, "--json").exit_code == 2


def test_cache_path_and_clear_print_json(cli):
    path = json.loads(cli("cache", "path", "--json").stdout)["path"]
    cleared = json.loads(cli("cache", "clear", "--older-than", "3650d", "--json").stdout)
    assert cleared["path"] == path and cleared["removed"] == 0


def test_signals_json_uses_the_key_recommend_and_history_use(cli, emb_npz, tmp_path):
    signals = json.loads(cli("signals", "--from-embeddings", emb_npz, "--json").stdout)
    rec = json.loads(cli("recommend", "--from-embeddings", emb_npz, "--db", _empty_history(tmp_path), "--json").stdout)
    assert "metrics" not in signals and "metrics" not in rec
    assert signals["signals"]["iimm"] == pytest.approx(rec["signals"]["iimm"], rel=1e-9)


# ------------------------------------------------------------------------- environment


def _environment_reads() -> set[str]:
    """Every environment variable the code names: ADVISOR_* literals anywhere (constants such as
    TIMEOUT_ENV, click envvar=), and any other name read through os.environ / os.getenv."""
    found: set[str] = set()
    read = re.compile(r"""(?:environ\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']|environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\](?!\s*=[^=])""")
    for folder in ("advisor", "plugins"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            found |= set(re.findall(r"""["'](ADVISOR_[A-Z0-9_]+)["']""", text))
            for a, b in read.findall(text):
                found.add(a or b)
    return found


def test_every_environment_variable_read_is_in_help_and_docs(cli):
    from advisor.cli import ENVIRONMENT

    reads = _environment_reads()
    assert {"ADVISOR_HOME", "ADVISOR_CACHE", "ADVISOR_DB_TIMEOUT", "ADVISOR_ONLINE", "HF_HUB_OFFLINE"} <= reads
    assert reads - set(ENVIRONMENT) == set(), "add them to advisor.cli.ENVIRONMENT"
    assert set(ENVIRONMENT) - reads == set(), "ENVIRONMENT lists variables nothing reads"
    help_text = cli("--help", env={"COLUMNS": "200"}).stdout
    docs = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in reads:
        assert re.search(rf"^\s+{name}\s", help_text, re.M), f"{name} missing from advisor --help"
        assert f"| `{name}` |" in docs, f"{name} missing from the docs/cli.md table"


def test_options_with_an_environment_variable_show_it_in_help():
    for name, cmd in _commands().items():
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.envvar, str) and not p.hidden:
                assert p.show_envvar, f"advisor {name} {p.opts[0]}: envvar {p.envvar} not shown in --help"


# ------------------------------------------------------------------------- stderr, width, pipes


def test_recommend_prints_notes_and_warnings_on_stderr(cli, emb_npz, tmp_path):
    result = cli("recommend", "--from-embeddings", emb_npz, "--db", _empty_history(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "Note: cold start" in result.stderr
    assert not re.search(r"^(Note|Warning):", result.stdout, re.M)
    assert "Use " in result.stdout  # the answer itself stays on stdout


def test_no_command_echoes_a_warning_or_note_to_stdout():
    """A static check of every CLI module: click.echo of a Warning/Note/Skipped line has err=True."""
    for path in [*(REPO / "advisor" / "cli").glob("*.py"), *(REPO / "advisor").glob("*/cli.py")]:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"click\.echo\(\s*f?[\"'](Warning|Note|Skipped)\b", text):
            call = text[m.start(): text.find("\n\n", m.start())]
            depth, end = 0, 0
            for i, ch in enumerate(call):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and ch == ")":
                    end = i
                    break
            assert "err=True" in call[:end], f"{path.name}: {call[:80]!r} goes to stdout"


def test_table_cells_wrap_to_the_width_and_numbers_never_break():
    from advisor.terminal import format_table

    columns = ["method", "note", "gain"]
    cells = [["lora", "a long explanation of why this method was excluded from the ranking", "-0.02333"],
             ["coop", "", "0.125"]]
    lines = format_table(cells, columns, width=40)
    assert max(len(line) for line in lines) <= 40
    assert len(lines) > 4  # header, rule, and the long note on several lines
    body = [line.split() for line in lines[2:]]
    assert body[0][0] == "lora" and body[0][-1] == "-0.02333"  # a number stays whole, on its row
    assert ["coop", "0.125"] in body
    words = [w for row in body for w in row if w not in ("lora", "coop", "-0.02333", "0.125")]
    assert " ".join(words) == cells[0][1]  # wrapping loses nothing


@pytest.mark.parametrize("columns", ["80", "100"])
def test_history_list_fits_the_terminal(cli, shipped_copy, columns):
    result = cli("history", "list", "--db", shipped_copy, env={"COLUMNS": columns})
    assert result.exit_code == 0, result.stderr
    widths = [len(line) for line in result.stdout.splitlines()]
    assert len(widths) > 250 and max(widths) <= int(columns)


def test_history_list_into_a_closed_pipe_exits_0_without_a_traceback(shipped_copy):
    """`advisor history list | head -1` where head has already gone: the reader got what it
    wanted, so nothing on stderr and exit code 0 (click's own handling exits 1)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    proc = subprocess.run([sys.executable, "-c", code, "history", "list", "--db", shipped_copy],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_history_list_piped_into_head_exits_0(shipped_copy):
    script = f"set -o pipefail; {sys.executable} -c 'import sys; from advisor.cli import cli; sys.exit(cli())' " \
             f"history list --db {shipped_copy} | head -1"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("run_id") and proc.stderr == ""

