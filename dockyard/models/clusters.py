"""Spark and Ray clusters: a head and its workers on a job pool, owned by a user (a
notebook's cluster) or by a run (the cluster its job drives)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import false

from dockyard.models.base import Base, utcnow


class ClusterKind(enum.StrEnum):
    RAY = "ray"
    SPARK = "spark"


class ClusterState(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_CLUSTER_STATES


FINAL_CLUSTER_STATES = frozenset({ClusterState.STOPPED, ClusterState.FAILED})
#: The partial index's condition, in plain SQL both SQLite and PostgreSQL read (the
#: columns store the enums' values, as the API shows them).
LIVE_CLUSTER_SQL = "status NOT IN ('stopped', 'failed')"


def _values(kind: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in kind]


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (
        # A user's live clusters have distinct names (the data client finds one by name);
        # an ended cluster's name may be used again.
        Index("ix_clusters_owner_name_live", "owner", "name", unique=True,
              sqlite_where=text(LIVE_CLUSTER_SQL), postgresql_where=text(LIVE_CLUSTER_SQL)),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: "run-<id>" for a run's cluster.
    name: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[ClusterKind] = mapped_column(
        Enum(ClusterKind, native_enum=False, length=16, values_callable=_values))
    image: Mapped[str] = mapped_column(String(255))
    pool: Mapped[str] = mapped_column(String(64), default="default")
    #: The pool's backend when the cluster was made (docker, swarm).
    backend: Mapped[str | None] = mapped_column(String(32))
    workers: Mapped[int] = mapped_column(default=2)
    worker_cpu: Mapped[float] = mapped_column(default=1.0)
    worker_memory_mb: Mapped[int] = mapped_column(default=2048)
    head_cpu: Mapped[float] = mapped_column(default=1.0)
    head_memory_mb: Mapped[int] = mapped_column(default=2048)
    status: Mapped[ClusterState] = mapped_column(
        Enum(ClusterState, native_enum=False, length=16, values_callable=_values),
        default=ClusterState.QUEUED,
        index=True,
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    #: The run whose job drives the cluster; NULL for a user's (notebook's) cluster.
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"),
                                               index=True)
    #: The worker process that looks after it (starts, scales, stops it).
    worker: Mapped[str | None] = mapped_column(String(128))
    network: Mapped[str | None] = mapped_column(String(255))
    #: The engine's address by the head's own name (ray://<head>:10001, spark://<head>:7077).
    address: Mapped[str] = mapped_column(String(255), default="")
    #: Where this machine reaches the head's web UI (the dashboard proxy's target).
    dashboard_url: Mapped[str | None] = mapped_column(String(255))
    stop_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    #: Stopped after this long without use (0: never): DOCKYARD_CLUSTER_IDLE_TIMEOUT when
    #: it was made; 0 for a run's cluster, which ends with its run.
    idle_timeout_seconds: Mapped[int] = mapped_column(default=0)
    #: Last sign of use (an API read, a dashboard page, a connected driver): the idle
    #: timeout counts from here.
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
