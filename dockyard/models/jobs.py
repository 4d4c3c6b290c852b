"""Job definitions, runs and the audit trail of every run's state changes."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql import false

from dockyard.models.base import Base, utcnow


class RunState(enum.StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


class RunKind(enum.StrEnum):
    COMMAND = "command"
    NOTEBOOK = "notebook"


FINAL_STATES = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
)


class JobDefinition(Base):
    __tablename__ = "job_definitions"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    image: Mapped[str] = mapped_column(String(255))
    # An argv list or a shell string, stored exactly as the user gave it.
    command: Mapped[Any] = mapped_column(JSON)
    cpu: Mapped[float] = mapped_column(default=1.0)
    memory_mb: Mapped[int] = mapped_column(default=1024)
    gpu: Mapped[int] = mapped_column(default=0)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    timeout_seconds: Mapped[int | None]
    max_retries: Mapped[int] = mapped_column(default=0)
    pool: Mapped[str] = mapped_column(String(64), default="default")
    #: "command" or "notebook"; runs made from the definition copy it with ``notebook``.
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.COMMAND,
                                      server_default=RunKind.COMMAND.value)
    #: The notebook snapshot taken when the definition was saved (the same record as
    #: ``Run.notebook``); NULL for a command definition.
    notebook: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    #: {"kind", "workers", "worker_cpu", "worker_memory_mb"}: its runs drive a cluster of
    #: this size; NULL: they run alone.
    cluster: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    #: {"cron", "timezone", "concurrency", "missed"}; NULL: not scheduled.
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    paused: Mapped[bool] = mapped_column(default=False, server_default=false())
    #: The next tick in UTC, kept by the service on save/pause/resume and by the worker
    #: after each firing; NULL without a schedule or while paused. Indexed: the worker's
    #: scan for due schedules reads it.
    next_fire_at: Mapped[datetime | None] = mapped_column(index=True)
    #: {"definition_id", "on"}: run after a run of another definition ends.
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    #: The same id as ``after["definition_id"]``, as a column so "who follows this
    #: definition" is an indexed lookup.
    after_definition_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_definitions.id", ondelete="SET NULL"), index=True
    )
    #: {"namespace", "table", "partition"}: run on each new batch of a table.
    on_batch: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    on_batch_table_id: Mapped[int | None] = mapped_column(
        ForeignKey("tables.id", ondelete="SET NULL"), index=True
    )
    #: When ``after`` or ``on_batch`` last changed: they answer to runs that end and
    #: batches committed from then on, never to earlier ones. NULL without either.
    triggers_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_owner_id", "owner", "id"),
        Index("ix_runs_status_id", "status", "id"),
        # A user's runs sorted by start or finish page by keyset without a sort.
        Index("ix_runs_owner_started_at", "owner", "started_at"),
        Index("ix_runs_owner_finished_at", "owner", "finished_at"),
        # A user's notebook runs, newest first (JupyterLab's Notebook Jobs panel).
        Index("ix_runs_owner_kind_id", "owner", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    definition_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_definitions.id", ondelete="SET NULL"), index=True
    )
    owner: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(255), index=True)
    command: Mapped[Any] = mapped_column(JSON)
    #: "command", or "notebook": the command runs the snapshot in ``notebook`` with papermill.
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.COMMAND,
                                      server_default=RunKind.COMMAND.value)
    #: For a notebook run: its name, source, parameters, kernel and the snapshot's sha256
    #: (shared by its retries). NULL for a command run.
    notebook: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    cpu: Mapped[float]
    memory_mb: Mapped[int]
    gpu: Mapped[int] = mapped_column(default=0)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    timeout_seconds: Mapped[int | None]
    max_retries: Mapped[int] = mapped_column(default=0)
    #: {"kind", "workers", "worker_cpu", "worker_memory_mb"}: the cluster the worker starts
    #: for the run (its job is the driver) and removes when it ends; NULL: none.
    cluster: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    #: What fired the run (a schedule tick, an upstream run, a batch, a backfill item);
    #: NULL for a run someone started by hand.
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    attempt: Mapped[int] = mapped_column(default=1)
    # The first attempt of a retried run; every attempt keeps its own row.
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    pool: Mapped[str] = mapped_column(String(64), default="default")
    backend: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[RunState] = mapped_column(
        Enum(RunState, native_enum=False, length=16), default=RunState.QUEUED
    )
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    exit_code: Mapped[int | None]
    reason: Mapped[str] = mapped_column(Text, default="")
    engine_handle: Mapped[str | None] = mapped_column(String(255))
    node: Mapped[str | None] = mapped_column(String(255))
    # The worker that claimed the run and watches it; a restarted worker takes back its own.
    worker: Mapped[str | None] = mapped_column(String(128))
    log_location: Mapped[str | None] = mapped_column(String(512))
    token_hash: Mapped[str | None] = mapped_column(String(128))
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Indexed so that the runs list sorted by start or finish pages by keyset quickly.
    started_at: Mapped[datetime | None] = mapped_column(index=True)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)

    definition: Mapped[JobDefinition | None] = relationship()
    tags: Mapped[list[RunTag]] = relationship(cascade="all, delete-orphan")
    events: Mapped[list[RunEvent]] = relationship(
        back_populates="run", order_by="RunEvent.id", cascade="all, delete-orphan"
    )


class RunTag(Base):
    """One row per tag, so the runs list can filter by tag with an index."""

    __tablename__ = "run_tags"
    # (tag, run_id): the runs with a tag, newest first, straight from the index.
    __table_args__ = (Index("ix_run_tags_tag_run_id", "tag", "run_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class RunEvent(Base):
    """One state change of a run, with who caused it and why: the audit trail."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    #: Indexed: the worker's trigger thread looks again at the last minute of events.
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")

    run: Mapped[Run] = relationship(back_populates="events")


class TriggerFire(Base):
    """One firing of a definition's trigger: the unique (definition, key) makes each tick,
    upstream run, batch or backfill item start at most one run, whoever fires it."""

    __tablename__ = "trigger_fires"
    __table_args__ = (
        UniqueConstraint("definition_id", "key"),
        # A definition's fires, newest first.
        Index("ix_trigger_fires_definition_id_id", "definition_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    definition_id: Mapped[int] = mapped_column(
        ForeignKey("job_definitions.id", ondelete="CASCADE")
    )
    #: schedule:<tick>, after:<run id>, batch:<batch id>, backfill:<backfill id>:<index>.
    key: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    #: "started", or "skipped: <why>".
    outcome: Mapped[str] = mapped_column(String(255), default="started")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Backfill(Base):
    """Runs of a definition for a list of past partitions or days, a few at a time."""

    __tablename__ = "backfills"

    id: Mapped[int] = mapped_column(primary_key=True)
    definition_id: Mapped[int] = mapped_column(
        ForeignKey("job_definitions.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(64))
    #: One dict per run to make: a batch's {"namespace", "table", "partition", "batch_id"}
    #: or a day's {"tick"}.
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: The index of the first item not started yet.
    next_index: Mapped[int] = mapped_column(default=0)
    max_parallel: Mapped[int] = mapped_column(default=2)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class TriggerCursor(Base):
    """How far the worker has scanned an append-only table for triggers ("after" over
    run_events, "batches" over pointer_history)."""

    __tablename__ = "trigger_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
