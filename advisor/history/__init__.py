"""The run history: SQLAlchemy models, named migrations, the ``History`` store, import/export.

``open_history(db)`` opens (creating and migrating) a history: ``db`` is a SQLite path, any
SQLAlchemy URL, or None for the user-data copy of the shipped ``registry.db``.
"""

from __future__ import annotations

from .migrations import MIGRATIONS, SCHEMA_VERSION
from .store import (
    History,
    compact,
    create_registry,
    dataset_key,
    default_path,
    ensure_default_db,
    model_key,
    open_history,
    record_run,
    resolve_url,
)

__all__ = [
    "History",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "compact",
    "create_registry",
    "dataset_key",
    "default_path",
    "ensure_default_db",
    "model_key",
    "open_history",
    "record_run",
    "resolve_url",
]
