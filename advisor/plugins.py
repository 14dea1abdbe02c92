"""One plugin manager; built-in plugins load through the same path as third-party ones.

- ``DEFAULT_PLUGINS`` are the modules of ``advisor_plugins`` (metrics, tuners, datasets, models).
- Third-party plugins come from the ``advisor`` entry-point group.
- ``ADVISOR_BLOCK_PLUGINS=1`` (set by the test suite) skips third-party entry points.
- ``ADVISOR_LOAD_PLUGINS=a,b`` loads only the named entry points (empty string: none).
- ``ADVISOR_TRACE_PLUGINS=1`` prints every hook call to stderr.
A plugin that raises while importing or registering is reported by name and skipped.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .errors import UnknownNameError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "advisor_plugins.metrics.iimm",
    "advisor_plugins.metrics.modality_gap",
    "advisor_plugins.metrics.mir",
    "advisor_plugins.metrics.mds",
    "advisor_plugins.metrics.zero_shot",
    "advisor_plugins.metrics.transferability",
    "advisor_plugins.tuners.builtin",  # full, lora, coop, contcoop, tpc_cma (imported on first use)
    "advisor_plugins.datasets.offline",
    "advisor_plugins.datasets.derived",  # class subsets and corruptions of the offline sources
    "advisor_plugins.datasets.folder",
    "advisor_plugins.datasets.csv",
    "advisor_plugins.datasets.torchvision",
    "advisor_plugins.models.open_clip",
    "advisor_plugins.models.lit_offline",
)

KINDS = ("metrics", "tuners", "datasets", "models")

pm = pluggy.PluginManager("advisor")
pm.add_hookspecs(hookspecs)

#: Plugins that failed to load or register: name -> one-line reason.
load_errors: dict[str, str] = {}
_loaded = False


def _report(name: str, exc: BaseException) -> None:
    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    load_errors[name] = msg
    print(f"Warning: plugin {name!r} failed to load and was skipped ({msg})", file=sys.stderr)


def _register_module(modname: str, plugin_name: str | None = None) -> None:
    try:
        mod = importlib.import_module(modname)
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the tool down
        _report(plugin_name or modname, exc)
        return
    if pm.is_registered(mod):
        return
    pm.register(mod, name=plugin_name or modname)


def _third_party_allowed() -> tuple[bool, set[str] | None]:
    if os.environ.get("ADVISOR_BLOCK_PLUGINS"):
        return False, None
    allow = os.environ.get("ADVISOR_LOAD_PLUGINS")
    if allow is None:
        return True, None
    return True, {a.strip() for a in allow.split(",") if a.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Register built-ins and (unless blocked) entry-point plugins. Idempotent."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for modname in DEFAULT_PLUGINS:
        _register_module(modname)
    allowed, allow_list = _third_party_allowed()
    if allowed:
        for ep in metadata.entry_points(group="advisor"):
            if allow_list is not None and ep.name not in allow_list:
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                obj = ep.load()
                pm.register(obj, name=ep.name)
                dist = getattr(ep, "dist", None)
                if dist is not None:
                    _distinfo[ep.name] = (dist.metadata["Name"], dist.version)
            except Exception as exc:  # noqa: BLE001
                _report(ep.name, exc)
    if os.environ.get("ADVISOR_TRACE_PLUGINS"):
        def before(hook_name: str, methods: Any, kwargs: dict) -> None:
            print(f"[advisor] hook {hook_name} -> {[m.plugin_name for m in methods]}", file=sys.stderr)

        def after(outcome: Any, hook_name: str, methods: Any, kwargs: dict) -> None:
            print(f"[advisor] hook {hook_name} done", file=sys.stderr)

        pm.add_hookcall_monitoring(before, after)
    _drop_misspelt_hooks()
    return pm


def _drop_misspelt_hooks() -> None:
    """Like ``pm.check_pending()``, but a plugin with a hook name no hookspec knows (a typo such
    as ``register_metric``) is reported by name and unregistered instead of crashing every
    command."""
    for hook_name, caller in list(vars(pm.hook).items()):
        if hook_name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            if pm.has_plugin(impl.plugin_name):
                _report(impl.plugin_name, ValueError(f"unknown hook {hook_name!r} (see docs/plugins.md for the hooks)"))
                pm.unregister(name=impl.plugin_name)


_distinfo: dict[str, tuple[str, str]] = {}


@dataclass
class Registry:
    """Everything the plugins registered, by kind, with the plugin that provided each."""

    items: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KINDS})
    provider: dict[tuple[str, str], str] = field(default_factory=dict)


def _collect(kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    load_plugins()
    found: dict[str, Any] = {}
    providers: dict[str, str] = {}
    hook = getattr(pm.hook, f"register_{kind}")
    for impl in hook.get_hookimpls():  # registration order: built-ins first
        plugin_name = impl.plugin_name

        def register(obj: Any, _plugin: str = plugin_name) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"plugin {_plugin!r} registered a {kind[:-1]} without a name")
            if name in found and providers[name] != _plugin:
                # First registration wins: a plugin cannot silently replace a built-in.
                print(f"Warning: plugin {_plugin!r} registered {kind[:-1]} {name!r}, already provided by "
                      f"{providers[name]!r}; ignored", file=sys.stderr)
                return
            found[name] = obj
            providers[name] = _plugin

        try:
            impl.function(register=register)
        except Exception as exc:  # noqa: BLE001 - skip the broken plugin, keep the rest
            _report(plugin_name, exc)
    return found, providers


_cache: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}


def get_registered(kind: str) -> dict[str, Any]:
    """name -> registered object for one kind ("metrics", "tuners", "datasets", "models")."""
    if kind not in _cache:
        _cache[kind] = _collect(kind)
    return _cache[kind][0]


def provider_of(kind: str, name: str) -> str:
    get_registered(kind)
    return _cache[kind][1].get(name, "?")


def reset_cache() -> None:
    """Forget collected registrations (after registering or unregistering a plugin in tests)."""
    _cache.clear()


def get_metrics() -> dict[str, Any]:
    return get_registered("metrics")


def get_tuners() -> dict[str, Any]:
    return get_registered("tuners")


def get_datasets() -> dict[str, Any]:
    return get_registered("datasets")


def get_models() -> dict[str, Any]:
    return get_registered("models")


def _lookup(kind: str, name: str, hint: str) -> Any:
    items = get_registered(kind)
    if name in items:
        return items[name]
    known = ", ".join(sorted(items)) or "none"
    raise UnknownNameError(f"unknown {kind[:-1]} {name!r} (known: {known}){hint}")


def get_metric(name: str) -> Any:
    return _lookup("metrics", name, "")


def get_tuner(name: str) -> Any:
    return _lookup("tuners", name, "; see `advisor plugins`")


def get_dataset_source(name: str) -> Any:
    """Resolve a dataset name: an exact registered name, or ``prefix:argument``."""
    items = get_datasets()
    if name in items and not getattr(items[name], "prefix", False):
        return items[name]
    if ":" in name:
        prefix = name.split(":", 1)[0]
        src = items.get(prefix)
        if src is not None and getattr(src, "prefix", False):
            return src
    known = ", ".join(sorted(n + (":PATH" if getattr(s, "prefix", False) else "") for n, s in items.items()))
    raise UnknownNameError(f"unknown dataset {name!r} (known: {known or 'none'})")


def get_model_source(name: str) -> Any:
    """Resolve a model name: an exact registered name first, then sources whose ``matches``
    accepts it (open_clip architectures, ``hf-hub:`` ids, checkpoint paths)."""
    items = get_models()
    if name in items:
        return items[name]
    for src in items.values():
        matches: Callable[[str], bool] | None = getattr(src, "matches", None)
        if matches is not None and matches(name):
            return src
    known = ", ".join(sorted(items)) or "none"
    raise UnknownNameError(
        f"unknown model {name!r} (registered: {known}; also any open_clip architecture, hf-hub:ORG/REPO or a checkpoint path)"
    )


def plugin_info() -> list[dict[str, Any]]:
    """One entry per plugin: name, version, hooks, and what it provides (for ``advisor plugins``)."""
    load_plugins()
    provided: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        get_registered(kind)
        for name, plugin in _cache[kind][1].items():
            provided.setdefault(plugin, {k: [] for k in KINDS})[kind].append(name)
    from . import __version__

    out = []
    for name, plugin in pm.list_name_plugin():  # registration order (get_plugins() is a set)
        if plugin is None:  # blocked
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        if name.startswith("advisor_plugins."):
            version = __version__
            package = "advisor"
        else:
            package, version = _distinfo.get(name, (name, getattr(plugin, "__version__", None) or "unknown"))
        entry = {"name": name, "package": package, "version": version, "hooks": hooks}
        entry.update({k: sorted(v) for k, v in provided.get(name, {k: [] for k in KINDS}).items()})
        out.append(entry)
    for name, reason in sorted(load_errors.items()):
        out.append({"name": name, "error": reason})
    return out


def iter_hook_names() -> Iterable[str]:
    return [name for name in dir(hookspecs) if name.startswith(("register_", "on_"))]
