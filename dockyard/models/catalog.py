"""The data catalog: tables, their batches, partition pointers and the pointer history."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dockyard.models.base import Base, utcnow


class Namespace(Base):
    """A namespace has an owner; others may read it, owners and admins write."""

    __tablename__ = "namespaces"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DataTable(Base):
    __tablename__ = "tables"
    __table_args__ = (UniqueConstraint("namespace", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(ForeignKey("namespaces.name"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(default="")
    partition_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    schema: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BatchState(enum.StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"), index=True)
    # Canonical "key=value/key=value" form of the partition values; "" for unpartitioned.
    partition: Mapped[str] = mapped_column(String(512))
    partition_values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    batch_id: Mapped[str] = mapped_column(String(40), unique=True)
    location: Mapped[str] = mapped_column(String(1024))
    state: Mapped[BatchState] = mapped_column(
        Enum(BatchState, native_enum=False, length=12), default=BatchState.PENDING
    )
    rows: Mapped[int | None] = mapped_column(BigInteger)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    files: Mapped[list[str]] = mapped_column(JSON, default=list)
    schema: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    committed_at: Mapped[datetime | None]


class PartitionPointer(Base):
    """Which batch of a partition readers see now. ``version`` makes the switch a
    compare-and-swap: ``UPDATE … WHERE version = :seen``."""

    __tablename__ = "partition_pointers"
    __table_args__ = (UniqueConstraint("table_id", "partition"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"))
    partition: Mapped[str] = mapped_column(String(512))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PointerAction(enum.StrEnum):
    COMMIT = "commit"
    ROLLBACK = "rollback"


class PointerHistory(Base):
    __tablename__ = "pointer_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"), index=True)
    partition: Mapped[str] = mapped_column(String(512))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    previous_batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    action: Mapped[PointerAction] = mapped_column(Enum(PointerAction, native_enum=False, length=12))
    actor: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    #: Indexed: the worker's trigger thread looks again at the last minute of commits.
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class BatchRead(Base):
    """Lineage: a run read a batch."""

    __tablename__ = "batch_reads"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
