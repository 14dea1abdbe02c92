"""``advisor history import-mlflow``: a team's finished MLflow runs become history rows.

Each finished run of one experiment is mapped to a flat history row (``mlflow_fields``: the
default mapping is what the MLflow plugin writes, so out -> in is exact; ``--map`` rules adapt
other teams' names), validated with the same rules as ``history add``, and added through
``History.add_records``: every new row in one transaction, or none. A run that lacks a required
field, or whose values do not validate, is listed with the reason and skipped. A run already in
the history (same configuration hash and seed, the history's unique key) is counted, not added
again, so importing twice adds nothing. MLflow itself is only read: before MLflow opens a store,
``check_store`` makes sure the URI names an existing MLflow store (a database with MLflow's
tables, not an advisor history; an existing ``file:`` store; a scheme MLflow knows), because
MLflow would otherwise create its tables, or a store, where the URI points.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import AdvisorError, InputFileError
from .errors import one_line as _one_line
from .history import io as hio
from .history.keys import config_hash, dataset_desc_of, dataset_key, default_run_id, model_desc_of, model_key
from .history.mlflow_fields import MappedRow, RowProblem, Rule, from_mlflow, parse_rules, sources_of

#: search_runs page size (MLflow's own maximum per page is larger; this keeps pages small).
PAGE_SIZE = 500


class MlflowImportError(AdvisorError):
    """MLflow is missing, unreachable, or has no such experiment."""


@dataclass
class FoundRun:
    """One finished MLflow run, as read (MLflow ids and values only)."""

    mlflow_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    metric_history: Callable[[str], list[float]]
    metric_steps: Callable[[str], list[tuple[int, float]]] | None = None

    @property
    def label(self) -> str:
        return f"MLflow run {self.mlflow_id}" + (f" ({self.name})" if self.name else "")


@dataclass
class Planned:
    """A run that maps to a valid history row."""

    found: FoundRun
    record: hio.ImportRecord
    run_id: str
    config_hash: str
    unmapped: list[str]


@dataclass
class ImportPlan:
    experiment: str
    tracking_uri: str
    new: list[Planned] = field(default_factory=list)
    present: list[Planned] = field(default_factory=list)
    skipped: list[tuple[FoundRun, str]] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)  # per pair: computed or why not
    added: int = 0
    history: str = ""  # where the rows went (for messages)

    def to_json(self, dry_run: bool) -> dict[str, Any]:
        def row(p: Planned) -> dict[str, Any]:
            r = p.record.run
            return {"mlflow_run_id": p.found.mlflow_id, "run_id": p.run_id, "model": r.model,
                    "pretrained": r.pretrained, "dataset": r.dataset, "method": r.method, "shots": r.shots,
                    "seed": r.seed, "id_acc_before": r.id_acc_before, "id_acc_after": r.id_acc_after,
                    "signals": len(r.signals or {}), "unmapped": p.unmapped}

        return {
            "experiment": self.experiment, "tracking_uri": self.tracking_uri, "dry_run": dry_run,
            "added": self.added, "new": [row(p) for p in self.new],
            "already_present": [{"mlflow_run_id": p.found.mlflow_id, "run_id": p.run_id} for p in self.present],
            "skipped": [{"mlflow_run_id": f.mlflow_id, "name": f.name, "reason": why} for f, why in self.skipped],
            "signals": self.signals,
        }


# ------------------------------------------------------------------------------- reading MLflow


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's and alembic's INFO lines ("Creating initial MLflow database tables...") kept off
    stderr while advisor talks to MLflow; warnings and errors still pass."""
    saved = []
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


#: Tables every MLflow tracking database has (and the advisor history has not).
MLFLOW_TABLES = ("experiments", "alembic_version")
#: Tables of an advisor history (MLflow has none of them).
ADVISOR_TABLES = ("schema_migrations", "signal_sets")


def _safe(uri: str) -> str:
    import re

    return re.sub(r"//[^/@]*@", "//", uri)


def _check_tables(tables: set[str], where: str) -> None:
    if all(t in tables for t in ADVISOR_TABLES):
        raise MlflowImportError(f"{where} is an advisor history, not an MLflow tracking store "
                                "(give --tracking-uri the MLflow store, --db the history)")
    missing = [t for t in MLFLOW_TABLES if t not in tables]
    if missing:
        raise MlflowImportError(f"{where} is not an MLflow tracking store (no {' or '.join(missing)} table)")
    try:  # a store of an older MLflow lacks tables that MLflow would create (write) on opening it
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - registers the tables the store expects
        from mlflow.store.db.base_sql_model import Base

        expected = set(Base.metadata.tables)
    except Exception:  # noqa: BLE001 - internal API: without it, MLflow's own check decides
        return
    absent = sorted(expected - tables)
    if absent:
        raise MlflowImportError(f"{where} is an MLflow store of another MLflow version (no {', '.join(absent[:3])}"
                                f"{' ...' if len(absent) > 3 else ''} table); upgrade it with `mlflow db upgrade` "
                                "or import with the MLflow version that wrote it")


def _sqlite_tables(path: Path) -> set[str]:
    """Table names of a SQLite file, read through a read-only connection."""
    from urllib.parse import quote

    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise MlflowImportError(f"cannot open {path}: {exc}") from None
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise MlflowImportError(f"{path} is not an MLflow tracking store ({exc})") from None
    finally:
        con.close()


def _supported_schemes() -> list[str]:
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return sorted(s for s in _tracking_store_registry._registry if s)
    except Exception:  # noqa: BLE001 - internal API
        return []


def check_store(uri: str) -> None:
    """Refuse, in one line and before MLflow opens it, a tracking URI that does not name an
    existing MLflow store. Nothing is opened for writing here."""
    from urllib.parse import unquote, urlsplit

    scheme = urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith("file:") else ""
    if scheme in ("", "file"):
        path = Path(unquote(urlsplit(uri).path) if scheme else uri).expanduser()
        if not path.exists():
            raise MlflowImportError(f"no MLflow store at {path} (--tracking-uri or MLFLOW_TRACKING_URI)")
        if not path.is_dir() or not ((path / ".trash").is_dir() or any(path.glob("*/meta.yaml"))):
            raise MlflowImportError(f"{path} is not an MLflow file store (no experiment folders)")
        return
    base = scheme.split("+", 1)[0]
    supported = _supported_schemes()
    if supported and scheme not in supported and base not in supported:
        raise MlflowImportError(f"unsupported MLflow tracking URI scheme {scheme!r} in {_safe(uri)} "
                                f"(MLflow knows: {', '.join(supported)})")
    if base == "sqlite":
        raw = uri.split("://", 1)[1].split("?", 1)[0]
        path = Path(raw[1:] if raw.startswith("/") else raw)  # sqlite:///rel, sqlite:////abs
        if not path.is_file():  # MLflow would create a missing database: refuse instead
            raise MlflowImportError(f"no MLflow tracking database at {path} (--tracking-uri or MLFLOW_TRACKING_URI)")
        _check_tables(_sqlite_tables(path), str(path))
    elif base in ("postgresql", "mysql", "mssql"):
        from sqlalchemy import create_engine, inspect

        try:
            engine = create_engine(uri)
            try:
                tables = set(inspect(engine).get_table_names())
            finally:
                engine.dispose()
        except Exception as exc:  # noqa: BLE001 - driver or connection: one line
            raise MlflowImportError(f"cannot read MLflow at {_safe(uri)}: {_one_line(exc)}") from None
        _check_tables(tables, _safe(uri))


def _client(tracking_uri: str | None) -> tuple[Any, str]:
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowImportError("MLflow is not installed (pip install 'advisor[mlflow]')") from None
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    check_store(uri)
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as exc:  # noqa: BLE001 - MLflow refusing the URI: one line
        raise MlflowImportError(f"cannot read MLflow at {_safe(uri)}: {_one_line(exc)}") from None


def read_finished_runs(experiment: str, tracking_uri: str | None = None) -> tuple[list[FoundRun], str]:
    """Every FINISHED run of ``experiment`` (oldest first) and the tracking URI read."""
    with quiet_mlflow():
        return _read_finished_runs(experiment, tracking_uri)


def _read_finished_runs(experiment: str, tracking_uri: str | None) -> tuple[list[FoundRun], str]:
    client, uri = _client(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - any transport or store error is one line
        raise MlflowImportError(f"cannot read MLflow at {uri}: {_one_line(exc)}") from None
    if exp is None:
        raise MlflowImportError(f"no MLflow experiment named {experiment!r} at {uri}")
    found: list[FoundRun] = []
    token = None
    try:
        while True:
            page = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                      max_results=PAGE_SIZE, order_by=["attributes.start_time ASC"],
                                      page_token=token)
            for r in page:
                found.append(FoundRun(
                    mlflow_id=r.info.run_id, name=r.info.run_name or "",
                    params=dict(r.data.params), metrics=dict(r.data.metrics), tags=dict(r.data.tags),
                    metric_history=_history_reader(client, r.info.run_id),
                    metric_steps=_steps_reader(client, r.info.run_id),
                ))
            token = page.token
            if not token:
                break
    except Exception as exc:  # noqa: BLE001
        raise MlflowImportError(f"cannot read runs of experiment {experiment!r} at {uri}: {_one_line(exc)}") from None
    return found, uri


def _history_reader(client: Any, run_id: str) -> Callable[[str], list[float]]:
    def read(key: str) -> list[float]:
        return [value for _, value in _steps_reader(client, run_id)(key)]

    return read


def _steps_reader(client: Any, run_id: str) -> Callable[[str], list[tuple[int, float]]]:
    def read(key: str) -> list[tuple[int, float]]:
        points = client.get_metric_history(run_id, key)
        return [(int(m.step), float(m.value)) for m in sorted(points, key=lambda m: (m.step, m.timestamp))]

    return read


# ------------------------------------------------------------------------------- planning


def existing_keys(rows: list[dict[str, Any]]) -> tuple[set[tuple[str, int]], dict[str, tuple[str, int]]]:
    """The (configuration hash, seed) pairs of stored rows (``History.runs()``), and run id -> pair."""
    keys: set[tuple[str, int]] = set()
    ids: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows, start=1):
        rec = hio.parse_row(row, False, f"stored run {i}")
        cfg = config_hash(rec.run, model_desc_of(rec.run), dataset_desc_of(rec.run))
        keys.add((cfg, rec.run.seed))
        ids[str(row["run_id"])] = (cfg, rec.run.seed)
    return keys, ids


def _missing(cells: dict[str, str], rules: list[Rule]) -> str | None:
    absent = [c for c in hio.REQUIRED if not str(cells.get(c, "")).strip()]
    if not absent:
        return None
    parts = []
    for c in absent:
        keys = sources_of(c, rules)
        parts.append(f"{c} (no {' or '.join(keys)})" if keys else c)
    return "missing " + ", ".join(parts)


def plan_import(found: list[FoundRun], rules: list[Rule], stored: list[dict[str, Any]], experiment: str,
                uri: str, known: Sequence[tuple[str, str, int]] | None = None) -> ImportPlan:
    """Map, validate and classify every run against the stored rows (or ``known``: their
    (run id, configuration hash, seed), ``History.run_keys``, which reads three columns instead
    of every run); nothing is written."""
    plan = ImportPlan(experiment, uri)
    if known is not None:
        ids = {str(rid): (cfg, int(seed)) for rid, cfg, seed in known}
        keys = set(ids.values())
    else:
        keys, ids = existing_keys(stored)
    batch: dict[tuple[str, int], FoundRun] = {}
    batch_ids: dict[str, FoundRun] = {}
    for f in found:
        try:
            mapped: MappedRow = from_mlflow(f.params, f.metrics, f.tags, f.metric_history, rules,
                                                  metric_steps=f.metric_steps)
        except RowProblem as exc:
            plan.skipped.append((f, str(exc)))
            continue
        missing = _missing(mapped.cells, rules)
        if missing:
            plan.skipped.append((f, missing))
            continue
        try:
            rec = hio.parse_row(mapped.cells, True, f.label)
        except InputFileError as exc:
            plan.skipped.append((f, str(exc).removeprefix(f.label).lstrip(", :")))
            continue
        run = rec.run
        cfg = config_hash(run, model_desc_of(run), dataset_desc_of(run))
        rid = run.run_id or default_run_id(run, cfg)
        planned = Planned(f, rec, rid, cfg, mapped.unmapped)
        key = (cfg, run.seed)
        if key in keys:
            plan.present.append(planned)
        elif rid in ids:
            plan.skipped.append((f, f"run id {rid!r} is already in the history for another configuration"))
        elif key in batch:
            plan.skipped.append((f, f"same configuration and seed as {batch[key].label}"))
        elif rid in batch_ids:
            plan.skipped.append((f, f"run id {rid!r} also comes from {batch_ids[rid].label}"))
        else:
            batch[key] = f
            batch_ids[rid] = f
            plan.new.append(planned)
    return plan


# ------------------------------------------------------------------------------- signals


def _pair_of(run: Any) -> tuple[str, str]:
    return model_key(model_desc_of(run)), dataset_key(dataset_desc_of(run))


def attach_signals(plan: ImportPlan, history: Any, device: str | None = None) -> list[tuple[dict, dict, str, Any]]:
    """``--compute-signals``: for each (model, dataset) pair of the plan that has no signals
    (neither its imported rows nor the history), compute them with the normal signal path.
    New rows get them as their signal set; for pairs whose runs are all in the history already,
    returns (model_desc, dataset_desc, split_hash, SignalSet) to store after the import.
    A pair whose model or data cannot be loaded keeps its rows without signals (noted)."""
    from .signals import compute_signals, describe_pair
    from .specs import DatasetSpec, ModelSpec

    pairs: dict[tuple[str, str], list[Planned]] = {}
    for p in plan.new + plan.present:
        pairs.setdefault(_pair_of(p.record.run), []).append(p)
    later: list[tuple[dict, dict, str, Any]] = []
    for (mk, dk), members in pairs.items():
        if any(p.record.run.signals for p in members) or history.latest_signals(mk, dk) is not None:
            continue
        run = members[0].record.run
        md_row, dd_row = model_desc_of(run), dataset_desc_of(run)
        note: dict[str, Any] = {"model": run.model, "pretrained": run.pretrained, "dataset": run.dataset,
                                "runs": len(members)}
        plan.signals.append(note)
        spec = ModelSpec(run.model, run.pretrained, md_row.get("image_size"))
        dspec = DatasetSpec(run.dataset)
        try:
            sig = compute_signals(spec, dspec, seed=0, device=device, quiet=True)
            md, dd = describe_pair(spec, dspec, sig.meta, device)
        except (AdvisorError, OSError) as exc:
            note["status"] = f"not computed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            continue
        clash = _key_clash(md_row, dd_row, md, dd)
        if clash or not sig.values:
            note["status"] = f"not computed: {clash or 'no metric produced a value'}"
            continue
        note["status"] = f"computed {len(sig.values)} signals"
        new_ids = {id(p) for p in plan.new}
        new_members = [p for p in members if id(p) in new_ids]
        for p in new_members:
            r = p.record.run
            r.signals = dict(sig.values)
            r.signal_versions = dict(sig.versions)
            p.record.signal_seconds = dict(sig.seconds)
            _fill_descriptors(r.model_desc, md, hio.MODEL_FIELDS, "image_size")
            _fill_descriptors(r.dataset_desc, dd, hio.DATASET_FIELDS, "fingerprint")
        if not new_members:
            later.append((md_row, dd_row, str(sig.meta.get("split_hash") or ""), sig))
    return later


def _key_clash(md_row: dict, dd_row: dict, md: dict, dd: dict) -> str | None:
    """Signals belong to the runs' pair only if what the runs recorded matches what was loaded."""
    if md_row.get("image_size") not in (None, md.get("image_size")):
        return f"the model loads at {md.get('image_size')} px, the runs say {md_row.get('image_size')} px"
    if dd_row.get("fingerprint") not in (None, dd.get("fingerprint")):
        return "the dataset's data differs from the runs' (another fingerprint)"
    return None


def _fill_descriptors(target: dict, loaded: dict, fields: tuple[str, ...], key_field: str) -> None:
    """Add descriptors the run lacks (they become predictor features); never the key field,
    which would change the run's identity between an import with and without signals."""
    for f in fields:
        if f != key_field and target.get(f) is None and loaded.get(f) is not None:
            target[f] = loaded[f]


# ------------------------------------------------------------------------------- the command


def _missing_file(db: str | None) -> bool:
    """``db`` names a SQLite file that does not exist (yet)."""
    return db is not None and "://" not in str(db) and not Path(str(db)).expanduser().exists()


def import_mlflow(db: str | None, experiment: str, *, tracking_uri: str | None = None,
                  maps: tuple[str, ...] | list[str] = (), dry_run: bool = False,
                  compute: bool = False) -> ImportPlan:
    """Read, map, validate; unless ``dry_run``, add every new row in one transaction."""
    from .history import open_history

    rules = parse_rules(maps)  # a bad --map is refused before MLflow is contacted
    found, uri = read_finished_runs(experiment, tracking_uri)
    if dry_run and _missing_file(db):  # a dry run creates no database
        plan = plan_import(found, rules, [], experiment, uri)
        plan.history = str(db)
        return plan
    with open_history(db) as history:
        plan = plan_import(found, rules, [], experiment, uri, known=history.run_keys())
        plan.history = history.display
        if dry_run:
            return plan
        later = attach_signals(plan, history) if compute else []
        if plan.new:
            plan.added = history.add_records([p.record for p in plan.new])
        for md, dd, split_hash, sig in later:
            history.store_signal_set(md, dd, split_hash or None, dict(sig.values), dict(sig.versions),
                                     dict(sig.seconds))
    return plan
