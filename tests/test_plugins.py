"""``advisor plugins`` and the plugin manager: what is installed, what each plugin provides,
and broken plugins reported by name instead of taking the tool down."""

from __future__ import annotations

import json

import pytest

import advisor
from advisor import plugins
from advisor.specs import Metric, Tuner


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


@pytest.fixture
def extra_plugin():
    pm = plugins.load_plugins()
    pm.register(_ExtraPlugin(), name="extra-plugin")
    plugins.reset_cache()
    yield
    pm.unregister(name="extra-plugin")
    plugins.reset_cache()


@pytest.fixture
def broken_plugin():
    pm = plugins.load_plugins()
    pm.register(_BrokenPlugin(), name="broken-plugin")
    plugins.reset_cache()
    yield
    pm.unregister(name="broken-plugin")
    plugins.load_errors.pop("broken-plugin", None)
    plugins.reset_cache()


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
        assert set(e) == {"name", "package", "version", "hooks", "metrics", "tuners", "datasets", "models"}
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
    text = cli("plugins").stdout.splitlines()
    assert text[0].split() == ["plugin", "version", "provides"]
    assert any(line.startswith("extra-plugin") and "metrics: test_only_metric; tuners: test_only_tuner" in line
               for line in text)


def test_plugin_failing_at_registration_is_reported_and_skipped(cli, broken_plugin, extra_plugin):
    result = cli("plugins", "--json")
    entries = _entries(result)
    assert entries["broken-plugin"]["error"] == "RuntimeError: cannot import my_missing_dependency"
    assert "Warning: plugin 'broken-plugin' failed to load and was skipped" in result.stderr
    assert entries["extra-plugin"]["metrics"] == ["test_only_metric"]  # the others still load
    text = cli("plugins").stdout
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
                     "register_commands", "on_run_recorded"}
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
