"""The history tables as SQLAlchemy 2.0 ORM models.

Normalised the way the predictor reads them: a run points at its model and dataset rows (whose
descriptors become predictor features) and at the signal set measured for that pair. JSON
columns hold what has no fixed shape (hyper-parameters, OOD accuracies per reference set,
provenance, losses). The tables are *created* by the frozen migrations in ``migrations.py``;
a test checks that migrating an empty database gives exactly these models.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, str: Text}


class SchemaMigration(Base):
    """One applied migration; the highest ``version`` is the database's schema version."""

    __tablename__ = "schema_migrations"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(unique=True)
    applied_at: Mapped[str]


class Model(Base):
    """A model at one working resolution: ``key`` is ``name|pretrained|image_size``."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str]
    pretrained: Mapped[str | None]
    image_size: Mapped[int | None]
    family: Mapped[str | None]
    architecture: Mapped[str | None]
    params: Mapped[int | None] = mapped_column(BigInteger)
    embed_dim: Mapped[int | None]
    source: Mapped[str | None]
    extra: Mapped[dict[str, Any]]  # descriptors without a column of their own
    created_at: Mapped[str]


class Dataset(Base):
    """A dataset as it was when measured: ``key`` is ``name|fingerprint``."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str]
    fingerprint: Mapped[str | None]
    n_classes: Mapped[int | None]
    n_train: Mapped[int | None]
    n_test: Mapped[int | None]
    domain: Mapped[list[Any] | None]
    mean_side_px: Mapped[float | None] = mapped_column(Float)
    is_grayscale: Mapped[bool | None] = mapped_column(Boolean)
    extra: Mapped[dict[str, Any]]
    created_at: Mapped[str]


class SignalSetRow(Base):
    """The signals measured for one (model, dataset split); identical sets are stored once."""

    __tablename__ = "signal_sets"
    __table_args__ = (Index("ix_signal_sets_pair", "model_id", "dataset_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    split_hash: Mapped[str | None]
    content_hash: Mapped[str]
    created_at: Mapped[str]

    model: Mapped[Model] = relationship()
    dataset: Mapped[Dataset] = relationship()
    values: Mapped[list["SignalValue"]] = relationship(
        back_populates="signal_set", cascade="all, delete-orphan", order_by="SignalValue.name"
    )


class SignalValue(Base):
    """One metric's value in a signal set, with the metric version and the time it took."""

    __tablename__ = "signal_values"
    __table_args__ = (UniqueConstraint("signal_set_id", "name", name="uq_signal_values_set_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    signal_set_id: Mapped[int] = mapped_column(ForeignKey("signal_sets.id", ondelete="CASCADE"))
    name: Mapped[str]
    value: Mapped[float] = mapped_column(Float)
    version: Mapped[str | None]
    seconds: Mapped[float | None] = mapped_column(Float)

    signal_set: Mapped[SignalSetRow] = relationship(back_populates="values")


class Run(Base):
    """One fine-tuning run: every ``advisor.specs.RunResult`` field.

    ``model``/``pretrained`` live in the model row, ``dataset`` in the dataset row, ``signals``
    and ``signal_versions`` in the signal set. ``(config_hash, seed)`` is unique so a retried
    run is recorded once.
    """

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("config_hash", "seed", name="uq_runs_config_seed"),
        Index("ix_runs_method", "method"),
        Index("ix_runs_created", "created_at", "id"),
        Index("ix_runs_method_created", "method", "created_at", "id"),
        Index("ix_runs_group", "model_id", "dataset_id", "method", "shots", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(unique=True)
    config_hash: Mapped[str]
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    signal_set_id: Mapped[int | None] = mapped_column(ForeignKey("signal_sets.id"))
    method: Mapped[str]
    shots: Mapped[int | None]
    seed: Mapped[int]
    hparams: Mapped[dict[str, Any]]
    split_hash: Mapped[str | None]
    id_acc_before: Mapped[float] = mapped_column(Float)
    id_acc_after: Mapped[float] = mapped_column(Float)
    ood_before: Mapped[dict[str, Any]]
    ood_after: Mapped[dict[str, Any]]
    gap_before: Mapped[float | None] = mapped_column(Float)
    gap_after: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    train_images_per_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    device: Mapped[str | None]
    provenance: Mapped[dict[str, Any]]
    losses: Mapped[list[Any]]
    curve: Mapped[list[Any] | None]
    adapter_path: Mapped[str | None]
    created_at: Mapped[str]

    model: Mapped[Model] = relationship()
    dataset: Mapped[Dataset] = relationship()
    signal_set: Mapped[SignalSetRow | None] = relationship()


class Predictor(Base):
    """A trained predictor: the serialised model, its feature list, and how it scored."""

    __tablename__ = "predictors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(index=True)
    blob: Mapped[str]
    features: Mapped[list[Any]]
    training_hash: Mapped[str]
    scores: Mapped[dict[str, Any]]
    created_at: Mapped[str]
    #: What a recommendation needs from the whole history, computed once at training
    #: (``advisor.predictor.summary``); NULL for predictors stored before schema version 5.
    summary: Mapped[dict[str, Any] | None]


class Sweep(Base):
    """One sweep grid (``advisor sweep``): ``sweep_id`` is the hash of the expanded grid, so the
    same grid started again resumes this record instead of creating another."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str | None]
    spec: Mapped[dict[str, Any]]
    executor: Mapped[str | None]
    n_jobs: Mapped[int]
    created_at: Mapped[str]
    updated_at: Mapped[str]


class SweepJob(Base):
    """One run of a sweep and its state: queued -> running (with a heartbeat) -> done | failed.

    The ``runs`` table only ever holds complete runs; this table is where unfinished work lives.
    Times are POSIX seconds so staleness is one comparison on every backend.
    """

    __tablename__ = "sweep_jobs"
    __table_args__ = (
        UniqueConstraint("sweep_id", "job_key", name="uq_sweep_jobs_key"),
        Index("ix_sweep_jobs_status", "sweep_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[str]
    job_key: Mapped[str]
    position: Mapped[int]
    stage: Mapped[int]  # the sweep block: earlier blocks are claimed first
    pair: Mapped[str]  # model|dataset: a worker prefers jobs of the pair it has loaded
    config: Mapped[dict[str, Any]]
    status: Mapped[str]
    attempts: Mapped[int]
    worker: Mapped[str | None]
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    run_id: Mapped[str | None]
    log_path: Mapped[str | None]
    error: Mapped[str | None]
