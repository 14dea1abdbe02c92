"""The run history: SQLAlchemy models, named migrations, the ``History`` store, import/export.

``open_history(db)`` opens (creating and migrating) a history: ``db`` is a SQLite path, any
SQLAlchemy URL, or None for the user-data copy of the shipped ``registry.db``.
``open_reader(db)`` is the read path of ``advisor recommend``: plain ``sqlite3`` for a current
SQLite history, the full ``History`` for everything else.

Layers, lowest first: ``schema`` (tables) and ``keys`` (what identifies a model, dataset, run);
``rows`` (the flat row shape) and ``validate`` (what may enter); ``io`` (files), ``location``
(paths and URLs) and ``database`` (engines, errors); ``store`` (the ``History`` class);
``reader`` (reads without SQLAlchemy); ``registry`` (the shipped single-file copy).

The names below are imported on first use, so ``from advisor.history import model_key`` (or
``open_reader``) does not import SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import Any

from .keys import config_hash, dataset_key, default_run_id, model_key
from .location import default_path, ensure_default_db, location, resolve_url  # the function, not the module
from .version import SCHEMA_VERSION

#: public name -> the module that defines it, imported on first use (SQLAlchemy and the ORM)
_LAZY = {
    "History": "store", "open_history": "store", "record_run": "store", "ImportRecord": "rows",
    "MIGRATIONS": "migrations", "compact": "registry", "create_registry": "registry", "open_reader": "reader",
    "update_from_shipped": "registry",
}

__all__ = [
    "History", "ImportRecord", "MIGRATIONS", "SCHEMA_VERSION", "compact", "config_hash", "create_registry",
    "dataset_key", "default_path", "default_run_id", "ensure_default_db", "location", "model_key", "open_history",
    "open_reader", "record_run", "resolve_url", "update_from_shipped",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
