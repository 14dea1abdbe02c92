"""The run history: SQLAlchemy models, named migrations, the ``History`` store, import/export.

``open_history(db)`` opens (creating and migrating) a history: ``db`` is a SQLite path, any
SQLAlchemy URL, or None for the user-data copy of the shipped ``registry.db``.

Layers, lowest first: ``schema`` (tables) and ``keys`` (what identifies a model, dataset, run);
``rows`` (the flat row shape) and ``validate`` (what may enter); ``io`` (files), ``location``
(paths and URLs) and ``database`` (engines, errors); ``store`` (the ``History`` class);
``registry`` (the shipped single-file copy).
"""

from __future__ import annotations

from .keys import config_hash, dataset_key, default_run_id, model_key
from .location import default_path, ensure_default_db, location, resolve_url
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .rows import ImportRecord
from .registry import compact, create_registry
from .store import History, open_history, record_run

__all__ = [
    "History",
    "ImportRecord",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "compact",
    "config_hash",
    "create_registry",
    "dataset_key",
    "default_path",
    "default_run_id",
    "ensure_default_db",
    "location",
    "model_key",
    "open_history",
    "record_run",
    "resolve_url",
]
