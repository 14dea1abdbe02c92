"""What identifies a model, a dataset and a run in the history.

One definition each, used by the store (unique keys in the tables), by imports (duplicate checks
within a file) and by the rest of the package (looking up the signals of a pair). Pure
functions of descriptors and ``RunResult`` fields: no database, no files.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..specs import RunResult, stable_hash


def model_key(desc: Mapping[str, Any]) -> str:
    """``name|pretrained|image_size``: the same model at another resolution is another model."""
    return f"{desc.get('name') or ''}|{desc.get('pretrained') or ''}|{desc.get('image_size') or ''}"


def dataset_key(desc: Mapping[str, Any]) -> str:
    """``name|fingerprint``: changed data is another dataset."""
    return f"{desc.get('name') or ''}|{desc.get('fingerprint') or ''}"


def model_desc_of(run: RunResult) -> dict[str, Any]:
    """The run's model descriptors; the run's own ``model`` and ``pretrained`` win."""
    desc = {k: v for k, v in (run.model_desc or {}).items() if k not in ("name", "pretrained")}
    return {"name": run.model, "pretrained": run.pretrained or None, **desc}


def dataset_desc_of(run: RunResult) -> dict[str, Any]:
    """The run's dataset descriptors; the run's own ``dataset`` name wins."""
    desc = {k: v for k, v in (run.dataset_desc or {}).items() if k != "name"}
    return {"name": run.dataset, **desc}


def config_hash(run: RunResult, model_desc: Mapping[str, Any] | None = None,
                dataset_desc: Mapping[str, Any] | None = None) -> str:
    """What makes two runs "the same run": with the seed, unique in the ``runs`` table."""
    md = model_desc if model_desc is not None else model_desc_of(run)
    dd = dataset_desc if dataset_desc is not None else dataset_desc_of(run)
    return stable_hash(
        {
            "model": model_key(md),
            "dataset": dataset_key(dd),
            "method": run.method,
            "shots": run.shots,
            "hparams": run.hparams or {},
            "split_hash": run.split_hash or None,
        },
        32,
    )


def default_run_id(run: RunResult, cfg: str | None = None) -> str:
    """Deterministic, so a retried run gets the id of its first attempt."""
    cfg = cfg if cfg is not None else config_hash(run)
    slug = re.sub(r"[^a-z0-9]+", "-", run.method.lower()).strip("-") or "run"
    return f"{slug}-{stable_hash([cfg, run.seed], 12)}"


def run_id_of(run: RunResult, cfg: str | None = None) -> str:
    """The id a run is stored under: its own, or the deterministic default."""
    return run.run_id or default_run_id(run, cfg)


def signal_content_hash(values: Mapping[str, float], versions: Mapping[str, str],
                        seconds: Mapping[str, float]) -> str:
    """Identical signal sets of a pair are stored once: this is what "identical" means."""
    return stable_hash({"values": dict(values), "versions": dict(versions), "seconds": dict(seconds)}, 32)
