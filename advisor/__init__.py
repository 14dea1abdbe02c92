"""advisor: recommends how to fine-tune a vision-language model before you pay for the run.

Public API (imported lazily so ``import advisor`` stays fast)::

    advisor.compute_signals(model_spec, dataset_spec)  -> SignalSet (values, versions, seconds, errors)
    advisor.recommend(model_spec, dataset_spec)        -> Recommendation
    advisor.record_run(run_result, db=None)            -> run id
    advisor.get_plugins()                              -> list of plugin descriptions
    advisor.list_tuners() / advisor.get_tuner(name)    -> Tuner registrations (order, family, hparams ...)

``compute_signals``, ``recommend`` and ``record_run`` are the functions themselves, loaded on
first use (``help(advisor.recommend)`` shows their parameters).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

from ._version import __version__
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .history import record_run
    from .recommendation import recommend
    from .signals import compute_signals
    from .specs import Tuner

__all__ = ["hookimpl", "__version__", "compute_signals", "recommend", "record_run", "get_plugins", "list_tuners",
           "get_tuner"]

#: The public functions loaded on first use: name -> the module that defines it.
_LAZY = {"compute_signals": ".signals", "recommend": ".recommendation", "record_run": ".history"}


def __getattr__(name: str) -> Callable[..., Any]:
    if name not in _LAZY:
        raise AttributeError(f"module 'advisor' has no attribute {name!r}")
    fn = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = fn
    return fn


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def get_plugins() -> list[dict[str, Any]]:
    """One description per plugin: name, package, version, hooks and what it provides."""
    from .plugins import plugin_info

    return plugin_info()


def list_tuners() -> list[Tuner]:
    """Every registered tuner, in its declared order."""
    from .plugins import list_tuners as _list

    return _list()


def get_tuner(name: str) -> Tuner:
    """The ``Tuner`` registration of a method; an unknown name is a one-line UnknownNameError."""
    from .plugins import get_tuner as _get

    return _get(name)
