"""The cluster a run drives: its row made when the run starts, the cluster started on the
run's pool and looked at until it is ready (the run stays PENDING meanwhile, saying how
far it got), then how the run's job joins it; removed when the run ends, whatever the
outcome. Also the ``ClusterSpec`` every cluster, a run's or a notebook's, starts from."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from dockyard.clusters import states
from dockyard.clusters.service import (
    ENGINE_NAMES,
    cluster_for_run,
    dashboard_path,
    workers_in_use,
)
from dockyard.db import transaction
from dockyard.models import Cluster, ClusterKind, ClusterState, Run, utcnow
from dockyard.worker.backends import JobPool
from dockyard.worker.context import WorkerContext
from spawner.clusters import driver_env
from spawner.clusters.base import (
    DRIVER_ALIAS,
    ClusterBackend,
    ClusterPhase,
    ClusterSpec,
    ClusterStartError,
    ClusterStatus,
)
from spawner.jobs.base import JobStartError

log = logging.getLogger(__name__)

#: How often a starting cluster's status is asked for (the loop offers more often).
LOOK_SECONDS = 1.0


def cluster_spec(cluster: Cluster, pool: JobPool) -> ClusterSpec:
    """What the pool's engine starts for ``cluster``: its image as the pool names it, and
    the storage settings the pool's jobs get (so executors read what drivers read)."""
    return ClusterSpec(
        cluster_id=cluster.id, owner=cluster.owner, kind=cluster.kind.value,
        image=pool.image_for(cluster.image), workers=cluster.workers,
        worker_cpu=cluster.worker_cpu, worker_memory_mb=cluster.worker_memory_mb,
        head_cpu=cluster.head_cpu, head_memory_mb=cluster.head_memory_mb,
        env=pool.cluster_env, run_id=cluster.run_id, dashboard_path=dashboard_path(cluster.id),
    )


def engine_name(kind: ClusterKind | str) -> str:
    return ENGINE_NAMES[ClusterKind(kind)]


def progress(status: ClusterStatus) -> str:
    """How far a starting cluster got, in words."""
    if status.phase == ClusterPhase.MISSING:
        return "its containers are not there"
    wanted = status.workers_wanted
    return f"{status.workers_ready} of {wanted} worker{'s' if wanted != 1 else ''}"


def running_values(status: ClusterStatus, backend: ClusterBackend) -> dict[str, object]:
    """The row's columns once the cluster is ready."""
    return {"address": status.address, "dashboard_url": status.dashboard_url,
            "network": status.network or backend.driver_network(status.cluster_id),
            "reason": ""}


def start_cut_short(status: ClusterStatus) -> bool:
    """A starting cluster the engine has nothing of, or only its network (no head: the
    backend reports that as failed, without an address): its start was cut short (the
    worker stopped between the network and the head) and may simply be made again, as
    starting is idempotent per cluster. The start timeout bounds how often."""
    return status.phase == ClusterPhase.MISSING or (
        status.phase == ClusterPhase.FAILED and not status.address)


@dataclass(frozen=True)
class DriverSetup:
    """How a run's job joins its cluster: the networks it joins (with its alias there) and
    the environment that points Spark or Ray at the head."""

    networks: tuple[tuple[str, str], ...]
    env: dict[str, str]


class RunClusters:
    """The clusters of one worker's runs. Each method works on one run and is called from
    the worker's threads, never two at once for the same run."""

    def __init__(self, context: WorkerContext, *,
                 note_waiting: Callable[[int, str], None]) -> None:
        self.context = context
        #: Says on the run why it is still PENDING (once per reason).
        self.note_waiting = note_waiting
        self._next_look: dict[int, float] = {}
        #: Runs waiting for room under the per-user worker limit: since when (this
        #: process; a restarted worker gives them the whole timeout again).
        self._waiting_since: dict[int, float] = {}
        self._lock = threading.Lock()

    def driver_for(self, run: Run, pool: JobPool) -> DriverSetup | None:
        """Start the run's cluster, or look at it: how the run's job joins it once the
        cluster is ready; None while it starts (the loop asks again). JobStartError when
        it cannot be (the pool hosts no clusters, the engine refused, it failed or did not
        become ready in DOCKYARD_CLUSTER_START_TIMEOUT)."""
        backend = pool.clusters
        if backend is None:
            raise JobStartError(f"pool '{pool.name}' runs on {pool.backend.name}, which "
                                "cannot host a cluster; choose a pool on Docker or Swarm")
        with self._lock:
            if time.monotonic() < self._next_look.get(run.id, 0.0):
                return None
            self._next_look[run.id] = time.monotonic() + LOOK_SECONDS
        cluster = self._cluster_of(run, pool)
        if cluster is None:
            return None  # waiting for the owner's other clusters to leave room
        engine = engine_name(cluster.kind)
        if cluster.status.is_final:
            raise JobStartError(cluster.reason or f"its {engine} cluster has ended")
        status = self._start_or_look(cluster, pool, backend)
        if status.phase == ClusterPhase.READY:
            with transaction(self.context.writes) as session:
                states.move(session, cluster.id, ClusterState.RUNNING,
                            **running_values(status, backend))
            self.forget(run.id)
            return DriverSetup(
                networks=((backend.driver_network(cluster.id), DRIVER_ALIAS),),
                env=driver_env(cluster.kind.value, cluster.id,
                               worker_memory_mb=cluster.worker_memory_mb))
        if status.phase == ClusterPhase.FAILED:
            self._fail(cluster, f"the {engine} cluster failed: "
                                f"{status.reason or 'the engine gave no reason'}")
        timeout = self.context.settings.cluster_start_timeout
        if utcnow() - cluster.created_at >= timedelta(seconds=timeout):
            self._fail(cluster, f"the {engine} cluster did not become ready in {timeout} s: "
                                f"{status.reason or progress(status) + ' registered'}")
        self.note_waiting(run.id, f"the {engine} cluster is starting ({progress(status)})")
        return None

    def _cluster_of(self, run: Run, pool: JobPool) -> Cluster | None:
        """The run's cluster row, made on the first start (a restarted worker finds it);
        None while the owner's other clusters leave no room for it. Read first: a run
        waiting for its cluster looks every second, and only the first look writes."""
        context = self.context
        with context.reads() as session:
            cluster = self._latest(session, run.id)
        if cluster is not None:
            return cluster
        with transaction(context.writes) as session:
            cluster = self._latest(session, run.id)  # another look may have made it
            if cluster is not None:
                return cluster
            cluster = cluster_for_run(run)
            if not self._room_for(session, run, cluster):
                return None
            cluster.backend, cluster.worker = pool.backend.name, context.name
            session.add(cluster)
            session.flush()
        with self._lock:
            self._waiting_since.pop(run.id, None)
        return cluster

    @staticmethod
    def _latest(session: Session, run_id: int) -> Cluster | None:
        return session.scalar(select(Cluster).where(Cluster.run_id == run_id)
                              .order_by(Cluster.id.desc()).limit(1))

    def _room_for(self, session: Session, run: Run, cluster: Cluster) -> bool:
        """Whether the owner has room for the run's cluster now. A run fired by a trigger,
        a backfill or a retry was not counted at submit: it waits (saying so) while the
        owner's other clusters hold the workers, up to DOCKYARD_CLUSTER_START_TIMEOUT;
        only a cluster larger than the whole per-user limit fails at once (JobStartError)."""
        settings = self.context.settings
        most = settings.max_cluster_workers_per_user
        if cluster.workers > most:
            raise JobStartError(f"cluster.workers: the run asks for {cluster.workers} "
                                f"cluster workers and {cluster.owner} may have at most "
                                f"{most} at once")
        used = workers_in_use(session, cluster.owner, asked_by_runs=False)
        if used + cluster.workers <= most:
            return True
        with self._lock:
            since = self._waiting_since.setdefault(run.id, time.monotonic())
        timeout = settings.cluster_start_timeout
        if time.monotonic() - since >= timeout:
            with self._lock:
                self._waiting_since.pop(run.id, None)
            raise JobStartError(f"cluster.workers: waited {timeout} s for cluster workers: "
                                f"{used} of {most} stayed in use by {cluster.owner}'s other "
                                f"clusters and the run asks for {cluster.workers}")
        self.note_waiting(run.id, f"waiting for cluster workers: {used} of {most} in use, "
                                  f"the run asks for {cluster.workers}")
        return False

    def _start_or_look(self, cluster: Cluster, pool: JobPool,
                       backend: ClusterBackend) -> ClusterStatus:
        engine = engine_name(cluster.kind)
        if cluster.status == ClusterState.QUEUED:
            try:
                status = backend.start(cluster_spec(cluster, pool))
            except ClusterStartError as exc:
                self._fail(cluster, f"the {engine} cluster could not start: {exc}")
            with transaction(self.context.writes) as session:
                states.move(session, cluster.id, ClusterState.STARTING,
                            network=status.network)
            return status
        status = backend.status(cluster.id)
        if start_cut_short(status):
            # Started, yet not (all) there: a start cut short (the worker stopped); starting
            # is idempotent per cluster.
            log.info("Cluster %s of run %s is not (all) on the engine; starting it again",
                     cluster.id, cluster.run_id)
            try:
                status = backend.start(cluster_spec(cluster, pool))
            except ClusterStartError as exc:
                self._fail(cluster, f"the {engine} cluster could not start: {exc}")
        return status

    def _fail(self, cluster: Cluster, reason: str) -> NoReturn:
        """Mark the cluster failed and fail the run's start with the same words (settle
        removes whatever of it is on the engine)."""
        with transaction(self.context.writes) as session:
            states.move(session, cluster.id, ClusterState.FAILED, reason=reason)
        if cluster.run_id is not None:
            self.forget(cluster.run_id)
        raise JobStartError(reason)

    def forget(self, run_id: int) -> None:
        with self._lock:
            self._next_look.pop(run_id, None)
            self._waiting_since.pop(run_id, None)

    def remove_for_run(self, run_id: int, pool: JobPool, outcome: str) -> None:
        """Remove every container and the network of the run's cluster, and end its row
        (stopped; a failed one stays failed)."""
        self.forget(run_id)
        with self.context.reads() as session:
            ids = list(session.scalars(select(Cluster.id).where(Cluster.run_id == run_id)))
        for cluster_id in ids:
            try:
                if pool.clusters is not None:  # else the pool never could have started it
                    pool.clusters.remove(cluster_id)
            except Exception as exc:  # the duty's reconcile removes what is left
                log.warning("Could not remove cluster %s of run %s: %s", cluster_id, run_id,
                            exc)
                continue
            with transaction(self.context.writes) as session:
                states.move(session, cluster_id, ClusterState.STOPPED,
                            reason=f"its run ended ({outcome})")
