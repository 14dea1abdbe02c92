"""advisor: recommends how to fine-tune a vision-language model before you pay for the run.

Public API (imported lazily so ``import advisor`` stays fast)::

    advisor.compute_signals(model_spec, dataset_spec)  -> SignalSet (values, versions, seconds, errors)
    advisor.recommend(model_spec, dataset_spec)        -> Recommendation
    advisor.record_run(run_result, db=None)            -> run id
    advisor.get_plugins()                              -> list of plugin descriptions
    advisor.list_tuners() / advisor.get_tuner(name)    -> Tuner registrations (order, family, hparams ...)
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .hookspecs import hookimpl

__all__ = ["hookimpl", "__version__", "compute_signals", "recommend", "record_run", "get_plugins", "list_tuners",
           "get_tuner"]


def get_plugins() -> list[dict[str, Any]]:
    from .plugins import plugin_info

    return plugin_info()


def list_tuners() -> list[Any]:
    from .plugins import list_tuners as _list

    return _list()


def get_tuner(name: str) -> Any:
    from .plugins import get_tuner as _get

    return _get(name)


def compute_signals(*args: Any, **kwargs: Any) -> Any:
    from .signals import compute_signals as _compute

    return _compute(*args, **kwargs)


def recommend(*args: Any, **kwargs: Any) -> Any:
    from .recommendation import recommend as _recommend

    return _recommend(*args, **kwargs)


def record_run(*args: Any, **kwargs: Any) -> Any:
    from .history import record_run as _record

    return _record(*args, **kwargs)
