"""One plugin manager; built-in plugins load through the same path as third-party ones.

- ``DEFAULT_PLUGINS`` are the modules of ``advisor_plugins`` (metrics, tuners, datasets, models).
- Third-party plugins come from the ``advisor`` entry-point group.
- ``ADVISOR_BLOCK_PLUGINS=1`` (set by the test suite) skips third-party entry points.
- ``ADVISOR_LOAD_PLUGINS=a,b`` loads only the named plugins: entry-point names or distribution
  names (``advisor-example-metric``; ``-``, ``_`` and ``.`` alike, any case); an empty string
  loads none. A name that matches no installed plugin is one warning line listing the known ones.
- ``ADVISOR_TRACE_PLUGINS=1`` prints every hook call to stderr: every call goes through the
  plugin manager (one plugin at a time: ``pm.subset_hook_caller``), so pluggy's hook-call
  monitoring sees it.

A plugin that raises (or calls ``sys.exit``) while importing, registering or adding commands is
reported by name in one warning line and skipped. A third-party tuner, dataset loader, model
loader/matcher or metric that raises (or calls ``sys.exit``) later is a one-line ``PluginError``
naming the plugin (a failing metric becomes an entry in the signal set's errors). A command a
plugin adds under the name of an existing one is ignored with a warning: the built-in stays.
``os._exit`` would end the process without unwinding, so while plugin code runs (importing,
registering, adding commands, and every guarded call of a third-party plugin's code) it is
replaced by a function that raises ``PluginExit``, a ``SystemExit`` that reads "called
os._exit(N)": such a plugin is reported and skipped like one that calls ``sys.exit``
(``exit_guard``).

Public accessors (open_clip style): ``list_tuners()`` / ``get_tuner(name)`` return ``Tuner``
registrations in their declared order, and likewise ``list_metrics``, ``list_datasets``,
``list_models``; ``sort_methods(names)`` orders any method names (registered first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, cast

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import AdvisorError, UnknownNameError
from .specs import DatasetSource, Metric, ModelSource, Tuner

if TYPE_CHECKING:  # a floor above: only for the annotations
    import click

    from .specs.executors import Executor


class PluginError(AdvisorError):
    """A third-party plugin's code raised: reported in one line naming the plugin."""


DEFAULT_PLUGINS: tuple[str, ...] = (
    "advisor_plugins.metrics.iimm",
    "advisor_plugins.metrics.modality_gap",
    "advisor_plugins.metrics.mir",
    "advisor_plugins.metrics.mds",
    "advisor_plugins.metrics.zero_shot",
    "advisor_plugins.metrics.transferability",
    "advisor_plugins.metrics.anchors",  # few-shot probe, prototype, kNN at 1-64 shots (the predictor's anchors)
    "advisor_plugins.tuners.builtin",  # registrations only; each tuner's torch module loads on first use
    "advisor_plugins.datasets.offline",
    "advisor_plugins.datasets.assets",  # font glyphs, icons, sprites, clip art from Debian packages
    "advisor_plugins.datasets.derived",  # class subsets and corruptions of the offline sources
    "advisor_plugins.datasets.folder",
    "advisor_plugins.datasets.csv",
    "advisor_plugins.datasets.torchvision",
    "advisor_plugins.models.open_clip",
    "advisor_plugins.models.lit_offline",
    "advisor_plugins.tracking.mlflow",  # opt-in: ADVISOR_MLFLOW=1 logs recorded runs to MLflow
    "advisor_plugins.executors.submitit",  # local and slurm executors for advisor sweep
)

KINDS = ("metrics", "tuners", "datasets", "models", "executors")

pm = pluggy.PluginManager("advisor")
pm.add_hookspecs(hookspecs)

#: Plugins that failed to load or register: name -> one-line reason.
load_errors: dict[str, str] = {}
_loaded = False


def is_builtin(plugin: str) -> bool:
    """Whether ``plugin`` (a plugin name, as ``provider_of`` gives it) is one of advisor's own,
    ``DEFAULT_PLUGINS``: trusted as the core is (no failure guard) and versioned with advisor."""
    return plugin in DEFAULT_PLUGINS


class PluginExit(SystemExit):
    """What ``os._exit(code)`` raises while plugin code runs (``exit_guard``)."""


@contextlib.contextmanager
def exit_guard() -> Iterator[None]:
    """While plugin code runs, ``os._exit`` raises ``PluginExit`` instead of ending the process
    silently (nested guards restore the outer one's function)."""
    original = os._exit

    def refuse(code: int) -> None:
        raise PluginExit(code)

    os._exit = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = original  # type: ignore[assignment]


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, PluginExit):
        return f"called os._exit({exc.code!r})"
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _report(name: str, exc: BaseException) -> None:
    msg = _describe_exception(exc)
    load_errors[name] = msg
    print(f"Warning: plugin {name!r} failed to load and was skipped ({msg})", file=sys.stderr)


def _register_module(modname: str, plugin_name: str | None = None) -> None:
    try:
        with exit_guard():
            mod = importlib.import_module(modname)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not take the tool down
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


def _normalize(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503): case and ``-_.`` runs alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(ep: Any) -> str | None:
    dist = getattr(ep, "dist", None)
    try:
        return dist.metadata["Name"] if dist is not None else None
    except (KeyError, AttributeError):
        return None


def _selected(eps: list[Any], allow_list: set[str] | None) -> list[Any]:
    """The entry points ``ADVISOR_LOAD_PLUGINS`` picks (all of them when it is unset), matched
    by entry-point name or distribution name; names that match nothing are one warning line."""
    if allow_list is None:
        return eps
    wanted = {_normalize(a) for a in allow_list}
    picked, matched = [], set()
    for ep in eps:
        names = {ep.name, _normalize(ep.name)} | ({_normalize(d)} if (d := _dist_name(ep)) else set())
        hits = (names & allow_list) | (names & wanted)
        if hits:
            picked.append(ep)
            matched |= {_normalize(h) for h in hits}
    unknown = sorted(a for a in allow_list if _normalize(a) not in matched and a not in matched)
    if unknown:
        known = sorted({ep.name for ep in eps} | {d for ep in eps if (d := _dist_name(ep))})
        print(f"Warning: ADVISOR_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed plugin has "
              f"(installed: {', '.join(known) or 'none'})", file=sys.stderr)
    return picked


def load_plugins() -> pluggy.PluginManager:
    """Register built-ins and (unless blocked) entry-point plugins. Idempotent."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for modname in DEFAULT_PLUGINS:
        _register_module(modname)
    if os.environ.get("ADVISOR_TRACE_PLUGINS"):
        pm.add_hookcall_monitoring(_trace_before, _trace_after)
    allowed, allow_list = _third_party_allowed()
    if allowed:
        for ep in _selected(list(metadata.entry_points(group="advisor")), allow_list):
            if pm.has_plugin(ep.name):
                continue
            try:
                with exit_guard():
                    obj = ep.load()
                pm.register(obj, name=ep.name)
                dist = getattr(ep, "dist", None)
                if dist is not None:
                    _distinfo[ep.name] = (dist.metadata["Name"], dist.version)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - sys.exit at import must not silence advisor
                _report(ep.name, exc)
    _drop_misspelt_hooks()
    return pm


# ------------------------------------------------------------------------------ hook calls


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _trace_before(hook_name: str, methods: Any, kwargs: Any) -> None:
    args = ", ".join(f"{k}={_short(v, 60)}" for k, v in kwargs.items())
    print(f"[advisor] hook {hook_name}({args}) -> {', '.join(m.plugin_name for m in methods) or 'no plugin'}",
          file=sys.stderr)


def _trace_after(outcome: Any, hook_name: str, methods: Any, kwargs: Any) -> None:
    exc = getattr(outcome, "exception", None)
    plugins = ", ".join(m.plugin_name for m in methods)
    if exc is not None:
        print(f"[advisor] hook {hook_name} [{plugins}] raised {_describe_exception(exc)}", file=sys.stderr)
    else:
        print(f"[advisor] hook {hook_name} [{plugins}] returned {_short(outcome.get_result())}", file=sys.stderr)


def call_one(hook_name: str, impl: Any, **kwargs: Any) -> Any:
    """Call one plugin's implementation of a hook through the plugin manager (not as
    ``impl.function``), so hook-call monitoring (``ADVISOR_TRACE_PLUGINS``) sees every call
    while each plugin still fails on its own. Returns the plugin's result."""
    others = [p for p in pm.get_plugins() if p is not impl.plugin]
    try:
        caller = pm.subset_hook_caller(hook_name, others)
    except TypeError:  # an unhashable plugin object: trace the call here instead
        caller = None
    with exit_guard():
        if caller is None or [i.plugin_name for i in caller.get_hookimpls()] != [impl.plugin_name]:
            if os.environ.get("ADVISOR_TRACE_PLUGINS"):
                _trace_before(hook_name, [impl], kwargs)
            return impl.function(**kwargs)
        results = caller(**kwargs)
    return results[0] if results else None


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
            expected = _REGISTRATION_TYPES.get(kind)
            if expected is not None and not isinstance(obj, expected):
                raise TypeError(f"register_{kind} got a {type(obj).__name__} for {name!r}, "
                                f"not an advisor.specs.{expected.__name__}")
            if kind in ("metrics", "tuners") and not _PLAIN_NAME.fullmatch(name):
                # Method and signal names end up in tables, plots, feature names and history rows (peft
                # likewise insists on plain lowercase method names).
                raise ValueError(f"{kind[:-1]} name {name!r} must be lowercase letters, digits, '_' or '-'")
            if name in found and providers[name] != _plugin:
                # First registration wins: a plugin cannot silently replace a built-in.
                print(f"Warning: plugin {_plugin!r} registered {kind[:-1]} {name!r}, already provided by "
                      f"{providers[name]!r}; ignored", file=sys.stderr)
                return
            found[name] = obj if is_builtin(_plugin) else _guarded(obj, _plugin, kind)
            providers[name] = _plugin

        try:
            call_one(f"register_{kind}", impl, register=register)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - skip the broken plugin, keep the rest
            _report(plugin_name, exc)
            for name in [n for n, p in providers.items() if p == plugin_name]:  # skipped means skipped
                del found[name], providers[name]
    return found, providers


#: What each register_* callback accepts (executors: ``advisor.sweep.executor.Executor``, not checked here).
_REGISTRATION_TYPES: dict[str, type] = {"metrics": Metric, "tuners": Tuner, "datasets": DatasetSource,
                                        "models": ModelSource}

_PLAIN_NAME = re.compile(r"[a-z][a-z0-9_\-]*")

#: The callables of a registration that run plugin code after loading, per kind.
_PLUGIN_CODE = {"tuners": ("train", "defaults"), "datasets": ("load", "check"), "models": ("load", "matches"),
                "metrics": ("compute",)}


def _guard(fn: Callable[..., Any], plugin: str, what: str, exits_only: bool = False) -> Callable[..., Any]:
    """``fn`` with any exception other than an AdvisorError turned into a one-line PluginError
    naming the plugin (a third-party bug should say whose it is, not print a bare traceback).
    ``exits_only``: only ``sys.exit`` is turned (a metric's exceptions are already reported under
    the metric's name by ``advisor.signals``; a ``SystemExit`` would end the command)."""
    catch: tuple[type[BaseException], ...] = (SystemExit,) if exits_only else (Exception, SystemExit)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with exit_guard():
                return fn(*args, **kwargs)
        except AdvisorError:
            raise
        except catch as exc:  # noqa: BLE001
            raise PluginError(f"plugin {plugin!r} failed in {what}: {_describe_exception(exc)}") from exc

    for attr, value in vars(fn).items():  # e.g. a model loader's ``fingerprint``
        if callable(value):
            setattr(call, attr, _guard(value, plugin, f"{what}.{attr}", exits_only))
    return call


def _guarded(obj: Any, plugin: str, kind: str) -> Any:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes = {}
    for attr in _PLUGIN_CODE.get(kind, ()):
        fn = getattr(obj, attr, None)
        if callable(fn):
            changes[attr] = _guard(fn, plugin, f"{kind[:-1]} {obj.name!r} ({attr})", exits_only=kind == "metrics")
    return dataclasses.replace(obj, **changes) if changes else obj


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


def get_metrics() -> dict[str, Metric]:
    return cast("dict[str, Metric]", get_registered("metrics"))


def get_tuners() -> dict[str, Tuner]:
    return cast("dict[str, Tuner]", get_registered("tuners"))


def get_executors() -> dict[str, Executor]:
    """name -> ``advisor.sweep.executor.Executor`` (``local`` and ``slurm`` are built-ins)."""
    return cast("dict[str, Executor]", get_registered("executors"))


def get_executor(name: str) -> Executor:
    executors = get_executors()
    if name not in executors:
        raise UnknownNameError(f"unknown executor {name!r} (available: {', '.join(sorted(executors))})")
    return executors[name]


def get_datasets() -> dict[str, DatasetSource]:
    return cast("dict[str, DatasetSource]", get_registered("datasets"))


def get_models() -> dict[str, ModelSource]:
    return cast("dict[str, ModelSource]", get_registered("models"))


def _lookup(kind: str, name: str, hint: str) -> Any:
    items = get_registered(kind)
    if name in items:
        return items[name]
    known = ", ".join(sorted(items)) or "none"
    raise UnknownNameError(f"unknown {kind[:-1]} {name!r} (known: {known}){hint}")


def get_metric(name: str) -> Metric:
    return cast(Metric, _lookup("metrics", name, ""))


def get_tuner(name: str) -> Tuner:
    """The ``Tuner`` registration of a method: train/defaults, order, colour, family,
    reconstructed, declared hyper-parameters. Unknown name: a one-line UnknownNameError."""
    return cast(Tuner, _lookup("tuners", name, "; see `advisor plugins`"))


def find_tuner(name: str) -> Tuner | None:
    """The registration, or None for a method whose plugin is not installed (history rows)."""
    return get_tuners().get(name)


def list_tuners() -> list[Tuner]:
    """Every registered tuner, in the declared ``order`` (then by name): the order of tables,
    plots and tie-breaks everywhere."""
    return sorted(get_tuners().values(), key=lambda t: (getattr(t, "order", 100), t.name))


def sort_methods(names: Iterable[str]) -> list[str]:
    """Method names in registration order; names no installed tuner registers come last, sorted."""
    rank = {t.name: i for i, t in enumerate(list_tuners())}
    return sorted(set(names), key=lambda m: (rank.get(m, len(rank)), m))


def list_metrics() -> list[Metric]:
    """Every registered metric, by name."""
    return [get_metrics()[n] for n in sorted(get_metrics())]


def list_datasets(*, offline: bool | None = None, ood_reference: bool | None = None) -> list[DatasetSource]:
    """Registered dataset sources by name, optionally only those with the given ``offline`` /
    ``ood_reference`` flags (``advisor run``'s default OOD sets: ``ood_reference=True``)."""
    out: list[DatasetSource] = []
    for name in sorted(get_datasets()):
        src = get_datasets()[name]
        if offline is not None and bool(getattr(src, "offline", True)) != offline:
            continue
        if ood_reference is not None and bool(getattr(src, "ood_reference", False)) != ood_reference:
            continue
        out.append(src)
    return out


def list_models() -> list[ModelSource]:
    """Every registered model source, by name."""
    return [get_models()[n] for n in sorted(get_models())]


def get_dataset_source(name: str) -> DatasetSource:
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


def get_model_source(name: str) -> ModelSource:
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
    reconstructed = {plugin: [] for plugin in provided}
    for kind in ("metrics", "tuners"):
        for name, obj in get_registered(kind).items():
            if getattr(obj, "reconstructed", False):
                reconstructed[_cache[kind][1][name]].append(name)

    out = []
    for name, plugin in pm.list_name_plugin():  # registration order (get_plugins() is a set)
        if plugin is None:  # blocked
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        if is_builtin(name):
            version = __version__
            package = "advisor"
        else:
            package, version = _distinfo.get(name, (name, getattr(plugin, "__version__", None) or "unknown"))
        entry = {"name": name, "package": package, "version": version, "hooks": hooks}
        entry.update({k: sorted(v) for k, v in provided.get(name, {k: [] for k in KINDS}).items()})
        entry["reconstructed"] = sorted(reconstructed.get(name, []))  # our reconstructions, not official code
        out.append(entry)
    for name, reason in sorted(load_errors.items()):
        out.append({"name": name, "error": reason})
    return out


def register_commands(cli: click.Group) -> None:
    """Let each plugin add its click commands. One that raises (or calls ``sys.exit``) is
    reported by name and skipped, and the commands it half-added are removed, so ``--help``
    and every other command keep working. A command named like one already there (a built-in
    ``recommend``, another plugin's) is ignored with a warning, as metric and tuner name
    collisions are: the first stays."""
    load_plugins()
    for impl in pm.hook.register_commands.get_hookimpls():
        before = dict(getattr(cli, "commands", {}))
        try:
            call_one("register_commands", impl, cli=cli)
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            if hasattr(cli, "commands"):
                cli.commands.clear()
                cli.commands.update(before)
            _report(impl.plugin_name, exc)
            continue
        commands = getattr(cli, "commands", None)
        if commands is None:
            continue
        for name, command in before.items():
            if commands.get(name) is not command:
                commands[name] = command
                print(f"Warning: plugin {impl.plugin_name!r} registered command {name!r}, already provided by "
                      f"{_command_owner(command)}; ignored", file=sys.stderr)


def _command_owner(command: Any) -> str:
    module = getattr(getattr(command, "callback", None), "__module__", "") or ""
    if module.startswith("advisor.") or module == "advisor":
        return "advisor"
    return repr(module.split(".")[0]) if module else "another plugin"


def iter_hook_names() -> Iterable[str]:
    return [name for name in dir(hookspecs) if name.startswith(("register_", "on_"))]
