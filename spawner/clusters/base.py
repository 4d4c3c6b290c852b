"""The one small interface every cluster backend implements, and the engine-neutral values it
takes and gives (``ClusterSpec`` in, ``ClusterStatus`` out).

A cluster is one head and N workers of Spark's or Ray's own engine, on a network of its
own. A backend places, wires, probes, scales and removes their containers on one kind of
engine; it never touches Dockyard's database. Like the job backends, every call is
idempotent by names and labels: ``start`` twice finds the first cluster, ``remove`` of a
cluster that is half made or already gone removes what is there and succeeds.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

from spawner.jobs.base import LABEL_NAMESPACE, LABEL_OWNER, LABEL_ROLE, LABEL_RUN_ID
from spawner.jobs.config import BackendConfig

LABEL_CLUSTER_ID = "dockyard.cluster-id"
ROLE_HEAD, ROLE_WORKER, ROLE_NETWORK = "cluster-head", "cluster-worker", "cluster-network"
CLUSTER_ROLES = (ROLE_HEAD, ROLE_WORKER, ROLE_NETWORK)
#: The names the head and a job's driver answer to on the cluster's network.
DRIVER_ALIAS = "driver"
HEAD_ALIAS = "head"
KINDS = ("ray", "spark")


@dataclass(frozen=True)
class ClusterSpec:
    """Everything an engine needs to place one cluster; built by the worker."""

    cluster_id: int
    owner: str
    kind: str  # "ray" | "spark"
    image: str
    workers: int
    worker_cpu: float
    worker_memory_mb: int
    head_cpu: float
    head_memory_mb: int
    #: Storage settings for the head and the workers (what jobs get too).
    env: Mapping[str, str] = field(default_factory=dict)
    run_id: int | None = None
    #: The public path Dockyard proxies the dashboard under (Spark's reverseProxyUrl).
    dashboard_path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown cluster kind {self.kind!r}; choose one of "
                             f"{', '.join(KINDS)}")

    def labels(self, namespace: str, role: str) -> dict[str, str]:
        labels = {
            LABEL_NAMESPACE: namespace,
            LABEL_ROLE: role,
            LABEL_CLUSTER_ID: str(self.cluster_id),
            LABEL_OWNER: self.owner,
        }
        if self.run_id is not None:
            labels[LABEL_RUN_ID] = str(self.run_id)
        return labels


class ClusterPhase(enum.StrEnum):
    STARTING = "starting"  # placed; the head has not seen its workers register yet
    READY = "ready"  # the head serves and its workers registered at least once
    FAILED = "failed"  # the head ended or stopped answering; ``reason`` says how
    MISSING = "missing"  # the engine knows nothing (more) of this cluster


@dataclass(frozen=True)
class ClusterStatus:
    """What the engine says about one cluster, in engine-neutral terms."""

    phase: ClusterPhase
    cluster_id: int
    network: str | None = None
    #: "ray://<head>:10001" | "spark://<head>:7077", <head> the head's own name (its
    #: container's on a Docker engine, its service's on a swarm): what a container joined
    #: to the networks of several clusters reaches this one's head at.
    address: str = ""
    #: http://<head ip>:<port>, reachable from this machine (Docker engine); None when not.
    dashboard_url: str | None = None
    workers_ready: int = 0
    workers_wanted: int = 0
    #: A driver / application is connected (None: unknown, e.g. the head's probe output
    #: is on another swarm node).
    busy: bool | None = None
    reason: str = ""
    run_id: int | None = None
    owner: str | None = None


class ClusterStartError(Exception):
    """The engine refused the cluster (image missing, impossible resources); the message
    says what to fix. Raised by ``start`` and ``scale``."""


def cluster_address(kind: str, head: str = HEAD_ALIAS) -> str:
    """Where a driver reaches the head's engine by the head's name ``head``: the alias
    ``head`` for a job's driver, which joins this cluster's network only; the head's own
    name for the API, since a notebook server joined to the networks of several clusters
    finds a ``head`` on each."""
    return f"ray://{head}:10001" if kind == "ray" else f"spark://{head}:7077"


def cluster_id_of(labels: Mapping[str, str] | None) -> int | None:
    try:
        return int((labels or {}).get(LABEL_CLUSTER_ID, ""))
    except ValueError:
        return None


class ClusterBackend(ABC):
    """Place, probe, scale and remove clusters on one kind of engine."""

    name: ClassVar[str]

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    @classmethod
    @abstractmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        """The backend for ``namespace`` from the same values as the pool's job backend."""

    @abstractmethod
    def start(self, spec: ClusterSpec) -> ClusterStatus:
        """Create the network, the head and the workers, and return at once (STARTING);
        readiness is ``status``'s to report. Idempotent per cluster id: what exists is
        kept, what is missing is made. Raise ClusterStartError when the engine refuses."""

    @abstractmethod
    def status(self, cluster_id: int) -> ClusterStatus:
        """The cluster's phase, its registered workers and whether a driver is connected,
        as the head's own probe last reported them; MISSING when nothing of it exists."""

    @abstractmethod
    def scale(self, cluster_id: int, spec: ClusterSpec) -> ClusterStatus:
        """Add or remove workers until there are ``spec.workers``."""

    @abstractmethod
    def remove(self, cluster_id: int) -> None:
        """Remove every container / service of the cluster and its network, also of a
        half-made cluster; no error when it is gone."""

    @abstractmethod
    def list_clusters(self) -> dict[int, ClusterStatus]:
        """Every cluster of this namespace on the engine (also a lone network): what
        reconcile compares with the database."""

    @abstractmethod
    def attach(self, cluster_id: int, labels: Mapping[str, str]) -> list[str]:
        """Connect every running container on this engine that carries all ``labels``
        (a user's notebook servers) to the cluster's network. Idempotent; returns the
        names of the containers attached by this call."""

    @abstractmethod
    def driver_network(self, cluster_id: int) -> str:
        """The network a job's driver joins (with the alias ``driver``)."""

    def close(self) -> None:
        """Release connections."""
        return None
