"""``advisor plugins`` and the plugin manager: what is installed, what each plugin provides,
and broken plugins reported by name instead of taking the tool down."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

import advisor
from advisor import plugins
from advisor.testing import registered_plugin
from advisor.specs import Metric, Tuner

#: Tables wrap to the terminal width; a wide one keeps each plugin on one line.
WIDE = {"COLUMNS": "400"}


class _ExtraPlugin:
    """An in-process plugin (as a test or a notebook would register one)."""

    @advisor.hookimpl
    def register_metrics(self, register):
        register(Metric(name="test_only_metric", compute=lambda emb: 0.0, needs=frozenset({"image"})))

    @advisor.hookimpl
    def register_tuners(self, register):
        register(Tuner(name="test_only_tuner", train=lambda ctx: None))


class _BrokenPlugin:
    @advisor.hookimpl
    def register_metrics(self, register):
        raise RuntimeError("cannot import my_missing_dependency")


def _registered(plugin, name):
    with registered_plugin(plugin, name):
        yield


@pytest.fixture
def extra_plugin():
    yield from _registered(_ExtraPlugin(), "extra-plugin")


@pytest.fixture
def broken_plugin():
    yield from _registered(_BrokenPlugin(), "broken-plugin")


def _entries(result) -> dict[str, dict]:
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return {e["name"]: e for e in data}


def test_plugins_json_describes_every_plugin(cli):
    entries = _entries(cli("plugins", "--json"))
    loaded = [e for e in entries.values() if "error" not in e]
    assert loaded, "no plugin loaded at all"
    for e in loaded:
        assert set(e) == {"name", "package", "version", "hooks", "reconstructed", *plugins.KINDS}
        assert e["hooks"] and all(h in set(plugins.iter_hook_names()) for h in e["hooks"])
        # Built-ins come through the same path as third-party plugins, from advisor_plugins.
        assert e["name"].startswith("advisor_plugins."), "a third-party plugin leaked past ADVISOR_BLOCK_PLUGINS"
        assert e["package"] == "advisor" and e["version"] == advisor.__version__
        assert e["name"] in plugins.DEFAULT_PLUGINS
    for kind in plugins.KINDS:
        listed = [name for e in loaded for name in e[kind]]
        assert sorted(listed) == sorted(plugins.get_registered(kind)), kind
        for e in loaded:
            if e[kind]:
                assert f"register_{kind}" in e["hooks"]
    for e in entries.values():
        if "error" in e:
            assert e["name"] in plugins.DEFAULT_PLUGINS and e["error"]


def test_in_process_plugin_is_listed_with_what_it_provides(cli, extra_plugin):
    entry = _entries(cli("plugins", "--json"))["extra-plugin"]
    assert entry["hooks"] == ["register_metrics", "register_tuners"]
    assert entry["metrics"] == ["test_only_metric"] and entry["tuners"] == ["test_only_tuner"]
    assert entry["datasets"] == [] and entry["models"] == []
    assert plugins.provider_of("metrics", "test_only_metric") == "extra-plugin"
    assert plugins.get_metric("test_only_metric").needs == frozenset({"image"})
    text = cli("plugins", env=WIDE).stdout.splitlines()
    assert text[0].split() == ["plugin", "version", "provides"]
    assert any(line.startswith("extra-plugin") and "metrics: test_only_metric; tuners: test_only_tuner" in line
               for line in text)


def test_plugin_failing_at_registration_is_reported_and_skipped(cli, broken_plugin, extra_plugin):
    result = cli("plugins", "--json")
    entries = _entries(result)
    assert entries["broken-plugin"]["error"] == "RuntimeError: cannot import my_missing_dependency"
    assert "Warning: plugin 'broken-plugin' failed to load and was skipped" in result.stderr
    assert entries["extra-plugin"]["metrics"] == ["test_only_metric"]  # the others still load
    text = cli("plugins", env=WIDE).stdout
    assert "FAILED: RuntimeError: cannot import my_missing_dependency" in text


def test_unknown_names_are_one_line_errors(extra_plugin):
    from advisor.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown metric 'nope' .*test_only_metric"):
        plugins.get_metric("nope")
    with pytest.raises(UnknownNameError, match="unknown tuner 'nope'"):
        plugins.get_tuner("nope")


@pytest.mark.parametrize("env, expected", [
    ({"ADVISOR_BLOCK_PLUGINS": "1"}, (False, None)),
    ({"ADVISOR_LOAD_PLUGINS": "a, b"}, (True, {"a", "b"})),
    ({"ADVISOR_LOAD_PLUGINS": ""}, (True, set())),
    ({}, (True, None)),
])
def test_environment_controls_third_party_plugins(monkeypatch, env, expected):
    monkeypatch.delenv("ADVISOR_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv("ADVISOR_LOAD_PLUGINS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert plugins._third_party_allowed() == expected


def test_every_hookspec_is_known():
    from advisor import hookspecs

    names = set(plugins.iter_hook_names())
    assert names == {"register_metrics", "register_tuners", "register_datasets", "register_models",
                     "register_commands", "register_executors", "on_run_recorded"}
    for name in names:
        assert getattr(hookspecs, name).__doc__, name


def test_misspelt_hook_disables_only_that_plugin(capsys):
    class Typo:
        @advisor.hookimpl
        def register_metric(self, register):  # should be register_metrics
            register(Metric(name="never", compute=lambda emb: 0.0))

    pm = plugins.load_plugins()
    pm.register(Typo(), name="typo-plugin")
    try:
        plugins._drop_misspelt_hooks()
        assert not pm.has_plugin("typo-plugin")
        assert plugins.load_errors["typo-plugin"] == "ValueError: unknown hook 'register_metric' (see docs/plugins.md for the hooks)"
        assert "plugin 'typo-plugin' failed to load" in capsys.readouterr().err
        pm.check_pending()  # nothing unknown is left behind
    finally:
        if pm.has_plugin("typo-plugin"):
            pm.unregister(name="typo-plugin")
        plugins.load_errors.pop("typo-plugin", None)


# ------------------------------------------------------------------ registrations describe the plugin


def test_reconstructions_are_shown_by_advisor_plugins(cli):
    entries = _entries(cli("plugins", "--json"))
    recon = {name for e in entries.values() if "error" not in e for name in e["reconstructed"]}
    assert recon == {"contcoop", "tpc_cma", "mds", "modality_gap"}
    assert entries["advisor_plugins.tuners.builtin"]["reconstructed"] == ["contcoop", "tpc_cma"]
    text = cli("plugins", env=WIDE).stdout
    assert "tuners: contcoop*, coop, full, lora, tpc_cma*" in text
    lines = [line.rstrip() for line in text.splitlines()]
    assert any(line.endswith("metrics: mds*") for line in lines)
    assert any(line.endswith("metrics: iimm") for line in lines)  # the official formula: no mark
    assert "* our reconstruction of a paper's method, not its official code" in text


def test_tuner_registrations_carry_order_colour_family_and_hparams():
    tuners = plugins.list_tuners()
    assert [t.name for t in tuners] == ["full", "lora", "coop", "contcoop", "tpc_cma"]
    assert all(t.colour and t.colour.startswith("#") for t in tuners)
    assert len({t.colour for t in tuners}) == len(tuners)
    from advisor.specs import TUNER_FAMILIES

    assert {t.name: t.family for t in tuners} == {"full": "full", "lora": "low-rank", "coop": "prompt",
                                                  "contcoop": "prompt", "tpc_cma": "output-map"}
    assert all(t.family in TUNER_FAMILIES for t in tuners)
    tpc = plugins.get_tuner("tpc_cma")
    assert tpc.declared_defaults()["alpha_target"] == 0.05 == tpc.defaults(16)["alpha_target"]
    # Every default a built-in uses is a declared or shared-loop hyper-parameter: --hparam can set it.
    for t in tuners:
        assert set(t.defaults(16)) <= set(t.hparam_specs()), t.name
    assert plugins.sort_methods(["zzz", "tpc_cma", "aaa", "full"]) == ["full", "tpc_cma", "aaa", "zzz"]
    assert plugins.find_tuner("not-installed") is None
    assert advisor.list_tuners() == tuners and advisor.get_tuner("lora") is plugins.get_tuner("lora")


def test_dataset_and_model_registrations_say_where_they_come_from():
    ood = [d.name for d in plugins.list_datasets(ood_reference=True)]
    assert ood == sorted(["fashion-mnist", "mnist-5k", "digits", "textile", "faces"])
    assert all(d.offline for d in plugins.list_datasets(ood_reference=True))
    assert "torchvision" in [d.name for d in plugins.list_datasets(offline=False)]
    assert all(d.origin for d in plugins.list_datasets() if d.name in ood + ["folder", "csv", "torchvision"])
    assert plugins.get_model_source("tiny-vit").family == "open_clip"
    assert plugins.get_model_source("lit-offline").family == "lit-offline"
    assert plugins.get_model_source("lit2-offline-mix").family == "lit-offline-lite2"
    from advisor.embed import load_model
    from advisor.specs import ModelSpec

    # One definition: the loaded model describes itself with its registration's family.
    assert load_model(ModelSpec("tiny-vit"), "cpu").describe()["family"] == plugins.get_model_source("tiny-vit").family


@pytest.mark.parametrize("values, message", [
    ({"epochs": float("inf")}, "tpc_cma: epochs must be a finite number"),
    ({"batch_size": "1e999"}, "tpc_cma: batch_size must be a finite number"),
    ({"epochs": 2.5}, "tpc_cma: epochs must be an integer"),
    ({"lr": 0}, "tpc_cma: lr must be positive"),
    ({"alpha_target": -1}, "tpc_cma: alpha_target must be at least 0"),
    ({"warmup_frac": 2}, "tpc_cma: warmup_frac must be at most 1"),
    ({"optimizer": "adam"}, "tpc_cma: optimizer must be one of adamw, sgd"),
    ({"alpah_target": 0.5}, "unknown hyper-parameter(s) for tpc_cma: alpah_target (known: alpha_target, "),
])
def test_hparams_are_checked_against_the_registration(values, message):
    from advisor.errors import TrainingError

    with pytest.raises(TrainingError) as exc:
        plugins.get_tuner("tpc_cma").check_hparams(values)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_hparam_values_are_parsed_to_their_declared_types():
    lora = plugins.get_tuner("lora")
    assert lora.check_hparams({"rank": "8", "targets": "q_proj, v_proj", "optimizer": "SGD", "epochs": 3.0}) == {
        "rank": 8, "targets": ["q_proj", "v_proj"], "optimizer": "sgd", "epochs": 3}
    assert type(lora.check_hparams({"rank": 8.0})["rank"]) is int
    assert plugins.get_tuner("coop").check_hparams({"ctx_init": None, "n_ctx": 4}) == {"ctx_init": None, "n_ctx": 4}


def test_run_refuses_bad_hparams_before_loading_anything(cli):
    result = CliRunner().invoke(_advisor_cli(), ["run", "--method", "lora", "--hparam", "alpha_target=0.5"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown hyper-parameter(s) for lora: alpha_target (known: ")
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(_advisor_cli(), ["run", "--method", "tpc_cma", "--hparam", "epochs=Infinity"])
    assert result.exit_code == 1 and result.output.strip() == "Error: tpc_cma: epochs must be a finite number (got inf)"
    # The deprecated alias still reaches the tuner's own check (no method name in the core).
    result = CliRunner().invoke(_advisor_cli(), ["run", "--method", "coop", "--alpha-target", "0.5"])
    assert result.exit_code == 1 and "unknown hyper-parameter(s) for coop: alpha_target" in result.output
    assert "Warning: --alpha-target is deprecated; use --hparam alpha_target=X" in result.stderr


def _advisor_cli():
    from advisor.cli import cli as advisor_cli

    return advisor_cli


def test_run_help_lists_each_tuners_own_hparams(cli, extra_plugin):
    text = cli("run", "--help").stdout
    assert "tpc_cma [our reconstruction]:" in text and "contcoop [our reconstruction]:" in text
    assert re.search(r"^ *coop: CoOp", text, re.MULTILINE) and not re.search(r"^ *coop \[our", text, re.MULTILINE)
    flat = " ".join(text.split())
    assert "alpha_target float, default 0.05: target weight of the alignment loss" in flat
    assert "rank int, default 4: LoRA rank r" in flat
    assert "test_only_tuner: - only the shared loop's" in flat  # a plugin's tuner is listed too
    assert "--alpha-target" not in text  # deprecated alias: works, not advertised
    assert "full, lora, coop" not in text  # no hard-coded list of method names


# ------------------------------------------------------------------ broken plugins: one line, named


class _RaisingCodePlugin:
    """Registers a tuner, a dataset and a model whose code raises plain exceptions."""

    @advisor.hookimpl
    def register_tuners(self, register):
        register(Tuner(name="boom_tuner", train=lambda ctx: 1 / 0, defaults=lambda shots: {}))

    @advisor.hookimpl
    def register_datasets(self, register):
        from advisor.specs import DatasetSource

        def load(spec):
            raise KeyError("labels.csv")

        register(DatasetSource(name="boom-data", load=load))

    @advisor.hookimpl
    def register_models(self, register):
        from advisor.specs import ModelSource

        def matches(name):
            raise RuntimeError("matcher bug")

        register(ModelSource(name="boom-model", load=lambda spec, device: None, matches=matches))


@pytest.fixture
def raising_code_plugin():
    yield from _registered(_RaisingCodePlugin(), "raising-code")


def test_plugin_code_that_raises_is_a_one_line_error_naming_the_plugin(raising_code_plugin, cli):
    from advisor.data import load_dataset
    from advisor.specs import DatasetSpec

    with pytest.raises(plugins.PluginError, match=r"^plugin 'raising-code' failed in tuner 'boom_tuner' \(train\): "
                                                  r"ZeroDivisionError: division by zero$"):
        plugins.get_tuner("boom_tuner").train(None)
    with pytest.raises(plugins.PluginError, match=r"^plugin 'raising-code' failed in dataset 'boom-data' \(load\): "
                                                  r"KeyError: 'labels.csv'$"):
        load_dataset(DatasetSpec("boom-data"))
    with pytest.raises(plugins.PluginError, match=r"^plugin 'raising-code' failed in model 'boom-model' \(matches\): "
                                                  r"RuntimeError: matcher bug$"):
        plugins.get_model_source("some-unregistered-model")
    # Through the CLI: exit 1, one "Error:" line, no traceback.
    result = CliRunner().invoke(_advisor_cli(), ["signals", "--dataset", "boom-data", "--model", "lit-offline"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: plugin 'raising-code' failed in dataset 'boom-data' (load): KeyError: 'labels.csv'")
    assert "Traceback" not in result.output
    # Built-ins are not wrapped: their bugs keep their tracebacks.
    assert plugins.get_tuner("lora") is next(t for t in plugins.list_tuners() if t.name == "lora")
    from advisor_plugins.tuners.builtin import LORA

    assert plugins.get_tuner("lora") is LORA


def _fake_installed_plugin(site, name: str, source: str) -> None:
    """A module plus the dist-info an installer writes (entry point in the ``advisor`` group),
    so a fresh process finds it through importlib.metadata exactly like a pip-installed plugin."""
    (site / f"{name}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[advisor]\n{name} = {name}\n")


def _run_with_site(site, *args):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ADVISOR_BLOCK_PLUGINS", "ADVISOR_LOAD_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ADVISOR_LOAD_PLUGINS"] = "exits_at_import,broken_commands"  # only these third-party plugins
    code = "import sys; from advisor.cli import cli; sys.exit(cli())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=180,
                          check=False)


def test_plugin_calling_sys_exit_or_failing_to_add_commands_does_not_silence_advisor(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _fake_installed_plugin(site, "exits_at_import", "import sys\nsys.exit(3)\n")
    _fake_installed_plugin(site, "broken_commands", (
        "import click\nfrom advisor.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command(name='half-added')\n    def half_added():\n        pass\n"
        "    raise RuntimeError('cannot build my commands')\n"))
    for args in (["--help"], ["plugins", "--json"]):
        p = _run_with_site(site, *args)
        assert p.returncode == 0, p.stderr
        warnings = [line for line in p.stderr.splitlines() if line.startswith("Warning: plugin")]
        assert warnings == [
            "Warning: plugin 'exits_at_import' failed to load and was skipped (called sys.exit(3))",
            "Warning: plugin 'broken_commands' failed to load and was skipped (RuntimeError: cannot build my commands)",
        ]
    help_text = _run_with_site(site, "--help").stdout
    assert "plugins" in help_text and "recommend" in help_text
    assert "half-added" not in help_text  # what the failing hook added is removed again
    entries = {e["name"]: e for e in json.loads(_run_with_site(site, "plugins", "--json").stdout)}
    assert entries["exits_at_import"] == {"name": "exits_at_import", "error": "called sys.exit(3)"}
    assert entries["broken_commands"]["error"] == "RuntimeError: cannot build my commands"


class _WrongKindPlugin:
    @advisor.hookimpl
    def register_tuners(self, register):
        register(Tuner(name="fine_tuner", train=lambda ctx: None))
        register(Metric(name="not_a_tuner", compute=lambda emb: 0.0))


def test_registering_the_wrong_kind_skips_the_whole_plugin_with_one_line(capsys):
    with registered_plugin(_WrongKindPlugin(), "wrong-kind"):
        tuners = plugins.get_tuners()
        assert "not_a_tuner" not in tuners and "fine_tuner" not in tuners  # nothing half-registered
        assert plugins.load_errors["wrong-kind"] == (
            "TypeError: register_tuners got a Metric for 'not_a_tuner', not an advisor.specs.Tuner")
        assert "Warning: plugin 'wrong-kind' failed to load and was skipped" in capsys.readouterr().err
        assert {"full", "lora", "coop", "contcoop", "tpc_cma"} <= set(tuners)


class _OddNamePlugin:
    @advisor.hookimpl
    def register_tuners(self, register):
        register(Tuner(name="My $\\alpha$ Tuner", train=lambda ctx: None))


def test_tuner_names_must_be_plain_lowercase():
    with registered_plugin(_OddNamePlugin(), "odd-name"):
        assert "My $\\alpha$ Tuner" not in plugins.get_tuners()
        assert plugins.load_errors["odd-name"] == (
            "ValueError: tuner name 'My $\\\\alpha$ Tuner' must be lowercase letters, digits, '_' or '-'")
