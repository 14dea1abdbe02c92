"""Which (model, dataset) pairs of the history have runs but no signals yet.

Runs imported from elsewhere (MLflow, CSV) often come without the pre-fine-tuning signals the
predictor needs; ``advisor history list`` names these pairs so they can be filled later. A pair
has signals when any of its runs carries a signal set or one was stored for the pair.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import io as hio
from .keys import dataset_key, model_key


def pairs_without_signals(history: Any, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """For the flat rows given (``History.runs()``): one entry per pair without signals, with
    its model, pretrained tag, dataset, number of runs and whether the runs carry the full pair
    key (model image size and dataset fingerprint), in first-seen order."""
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        md = {"name": r.get("model"), "pretrained": r.get("pretrained"), "image_size": r.get("model.image_size")}
        dd = {"name": r.get("dataset"), "fingerprint": r.get("dataset.fingerprint")}
        key = (model_key(md), dataset_key(dd))
        entry = pairs.setdefault(key, {"model": md["name"], "pretrained": md["pretrained"], "dataset": dd["name"],
                                       "runs": 0, "has_signals": False,
                                       # `advisor signals` stores under the loaded pair's full key, so
                                       # it reaches these runs only when they carry that key
                                       "full_key": md["image_size"] is not None and dd["fingerprint"] is not None})
        entry["runs"] += 1
        if any(k.startswith(hio.SIGNAL_PREFIX) and v is not None for k, v in r.items()):
            entry["has_signals"] = True
    out = []
    for (mk, dk), entry in pairs.items():
        if entry.pop("has_signals") or history.latest_signals(mk, dk) is not None:
            continue
        out.append(entry)
    return out
