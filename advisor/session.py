"""A ``Session`` owns what a process has loaded, so each thing is resolved once and no module
keeps a cache of its own.

What it holds, by kind: ``model_source`` (the model source a model name resolves to, the one
resolution the weights check, the cache key and the load use), ``model`` (the loaded
VisionLanguageModel per (spec, device)), ``dataset`` (a loaded DatasetBundle per spec, its
prompts checked), ``ood`` (the OOD reference bundles per source and names), ``eval_set`` (a
preprocessed test sample per model identity, dataset and size), ``zero_shot`` and
``base_features`` (the untouched model's measurement and image features per eval set), ``pair``
(a prepared pair with its signals) and the learning curve's sets (``curve_*``). ``advisor run``
makes one per run; a sweep worker keeps one for all its runs, so a pair's model, test sets and
signals are loaded and measured once.

``loads`` counts how often each kind was really resolved (tests and benchmarks read it).
Functions that take a session default to a fresh one per call, so a caller that passes none
behaves as before, without sharing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")


class Session:
    """What is loaded, by kind and key; see the module docstring."""

    def __init__(self) -> None:
        self._held: dict[str, dict[Hashable, Any]] = {}
        self.loads: Counter[str] = Counter()

    def get(self, kind: str, key: Hashable, make: Callable[[], T]) -> T:
        """The ``kind`` thing under ``key``, made by ``make()`` the first time only."""
        held = self._held.setdefault(kind, {})
        if key not in held:
            held[key] = make()
            self.loads[kind] += 1
        return held[key]

    def peek(self, kind: str, key: Hashable) -> Any:
        """The ``kind`` thing under ``key`` when it is held, else None (nothing is made)."""
        return self._held.get(kind, {}).get(key)

    def put(self, kind: str, key: Hashable, value: Any) -> None:
        self._held.setdefault(kind, {})[key] = value

    def forget(self, kind: str | None = None) -> None:
        """Drop one kind (or everything): frees memory between pairs."""
        if kind is None:
            self._held.clear()
        else:
            self._held.pop(kind, None)


def session_or_new(session: Session | None) -> Session:
    """``session``, or a fresh one for a caller that passes none."""
    return session if session is not None else Session()
