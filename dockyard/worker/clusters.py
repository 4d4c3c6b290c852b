"""The worker's cluster duty: users' own (notebook) clusters from queued to stopped —
started, marked running or failed, scaled, stopped on request or when idle, the owner's
notebook servers attached to their network — and reconcile, at start and every 30 s, of
every cluster of the installation: engine clusters whose row has ended (or whose run has)
are removed, this worker's rows whose engine cluster is gone fail.

A notebook cluster is looked after by the worker that claimed it, by name
(DOCKYARD_WORKER_NAME): keep that name stable. A worker that is renamed leaves its
clusters to reconcile, which stops those asked to stop wherever it finds them (and their
run's end removes the clusters of runs); the others stay until that name returns.

Engine calls happen in the duty's own small thread pool, one task per cluster at a time,
so a slow engine never holds up the worker's loop. The clusters of runs are the run
lifecycle's (``run_clusters.py``); reconcile only cleans up after them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update

from dockyard.clusters import states
from dockyard.db import transaction
from dockyard.models import Cluster, ClusterState, Run, utcnow
from dockyard.settings import Settings
from dockyard.worker.backends import JobPool
from dockyard.worker.loop import Worker
from dockyard.worker.run_clusters import (
    cluster_spec,
    engine_name,
    progress,
    running_values,
    start_cut_short,
)
from spawner.clusters.base import (
    LABEL_CLUSTER_ID,
    ClusterBackend,
    ClusterPhase,
    ClusterStartError,
    ClusterStatus,
)
from spawner.notebooks.docker import SERVER_LABEL

log = logging.getLogger(__name__)

#: How often every cluster on the engines is compared with the database.
RECONCILE_SECONDS = 30.0
#: A connected driver counts as use; recorded at most this often.
BUSY_TOUCH_SECONDS = 30.0
#: How often a running cluster looks for its owner's notebook servers to attach.
ATTACH_SECONDS = 5.0
#: How often a running cluster's status is asked of the engine (a starting one: every
#: turn of the loop); a stop request is seen at once all the same (it is in the row).
RUNNING_LOOK_SECONDS = 5.0


class ClusterDuty:
    """Users' clusters, looked after by the worker between its runs."""

    def __init__(self, settings: Settings, *, threads: int = 2) -> None:
        self.settings = settings
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cluster")
        self._lock = threading.Lock()
        self._busy: set[Hashable] = set()
        self._last_reconcile = time.monotonic()
        self._last_attach: dict[int, float] = {}
        self._next_look: dict[int, float] = {}

    # -- the WorkerDuty protocol -----------------------------------------------------------
    def reconcile(self, worker: Worker) -> None:
        self.reconcile_engines(worker)
        self._last_reconcile = time.monotonic()

    def __call__(self, worker: Worker) -> object:
        if time.monotonic() - self._last_reconcile >= RECONCILE_SECONDS:
            self._last_reconcile = time.monotonic()
            self._submit("reconcile", self.reconcile_engines, worker)
        with worker.reads() as session:
            ids = list(session.scalars(
                select(Cluster.id).where(
                    Cluster.run_id.is_(None), Cluster.status.in_(states.LIVE_STATES),
                    or_(Cluster.worker == worker.name, Cluster.worker.is_(None)))
                .order_by(Cluster.id)))
        for cluster_id in ids:
            self._submit(cluster_id, self.look_after, worker, cluster_id)
        return len(ids)

    def close(self) -> None:
        """Drop what has not begun; what is in flight ends on its own (its next step is
        in the database for the next start)."""
        self.threads.shutdown(wait=False, cancel_futures=True)

    def drain(self, timeout: float = 60) -> None:
        """Wait until no task is in the threads (tests, --once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.05)

    def _submit(self, key: Hashable, task: Callable[..., object], *args: Any) -> None:
        with self._lock:
            if key in self._busy:
                return
            self._busy.add(key)

        def work() -> None:
            try:
                task(*args)
            except Exception:
                log.exception("Cluster work (%s) failed; will look again", key)
            finally:
                with self._lock:
                    self._busy.discard(key)

        try:
            self.threads.submit(work)
        except RuntimeError:  # shut down: the worker is stopping
            with self._lock:
                self._busy.discard(key)

    # -- one user's cluster ----------------------------------------------------------------
    def look_after(self, worker: Worker, cluster_id: int) -> None:
        """Give one notebook cluster its next step."""
        with worker.reads() as session:
            cluster = session.get(Cluster, cluster_id)
        if cluster is None or cluster.status.is_final or cluster.run_id is not None:
            return
        pool = worker.pools.find(cluster.pool)
        backend = pool.clusters if pool is not None else None
        if pool is None or backend is None:
            self._fail_without_pool(worker, pool, cluster)
            return
        if cluster.status == ClusterState.QUEUED:
            self._start(worker, pool, backend, cluster)
        elif cluster.stop_requested or cluster.status == ClusterState.STOPPING:
            self._end(worker, backend, cluster, ClusterState.STOPPED, "stopped on request")
        elif cluster.status == ClusterState.RUNNING \
                and time.monotonic() < self._next_look.get(cluster.id, 0.0):
            return  # looked at a moment ago; the engine is not asked every second
        else:
            self._follow(worker, pool, backend, cluster)

    def _fail_without_pool(self, worker: Worker, pool: JobPool | None,
                           cluster: Cluster) -> None:
        """The cluster's pool is gone from the settings (or no longer hosts clusters): no
        backend is there to look after or remove it, so it fails, and any of its
        containers another pool's engine still has are named in the log for an admin."""
        if pool is not None:
            why = (f"pool '{cluster.pool}' now runs on {pool.backend.name}, which cannot "
                   "host a cluster")
        else:
            why = f"pool '{cluster.pool}' is no longer configured"
        for other in worker.pools:
            if other.clusters is None:
                continue
            try:
                found = other.clusters.status(cluster.id)
            except Exception:  # only a hint for the log: an engine down says nothing
                continue
            if found.phase != ClusterPhase.MISSING:
                log.warning("Cluster %s of %s failed (%s) but pool %s's engine still has "
                            "its containers and network %s (label %s=%s): remove them by "
                            "hand", cluster.id, cluster.owner, why, other.name,
                            found.network, LABEL_CLUSTER_ID, cluster.id)
        if cluster.status == ClusterState.QUEUED:
            reason = f"could not start: {why}"
        else:
            reason = (f"{why}; Dockyard can no longer reach its containers (an admin may "
                      "have to remove them)")
        self._end(worker, None, cluster, ClusterState.FAILED, reason)

    def _start(self, worker: Worker, pool: JobPool, backend: ClusterBackend,
               cluster: Cluster) -> None:
        with transaction(worker.writes) as session:
            # started_at marks the claim while it starts (its start timeout counts from
            # here, not from when it was queued); it becomes the running time once ready.
            claimed = states.move(session, cluster.id, ClusterState.STARTING,
                                  expected=(ClusterState.QUEUED,), worker=worker.name,
                                  backend=pool.backend.name, started_at=utcnow())
        if not claimed:
            return  # stopped meanwhile, or another worker's now
        # The row as claimed: a scale between the read and the claim must be started with.
        with worker.reads() as session:
            claimed_row = session.get(Cluster, cluster.id)
        if claimed_row is None:
            return
        cluster = claimed_row
        self._start_on_engine(worker, pool, backend, cluster)

    def _start_on_engine(self, worker: Worker, pool: JobPool, backend: ClusterBackend,
                         cluster: Cluster) -> bool:
        """Start (or start again: idempotent) the cluster on its engine; False when the
        engine refused, the cluster then failed with its words."""
        try:
            status = backend.start(cluster_spec(cluster, pool))
        except ClusterStartError as exc:
            self._end(worker, backend, cluster, ClusterState.FAILED,
                      f"the {engine_name(cluster.kind)} cluster could not start: {exc}")
            return False
        with transaction(worker.writes) as session:
            session.execute(update(Cluster).where(Cluster.id == cluster.id)
                            .values(network=status.network)
                            .execution_options(synchronize_session=False))
        log.info("Cluster %s of %s: starting on pool %s", cluster.id, cluster.owner, pool.name)
        return True

    def _follow(self, worker: Worker, pool: JobPool, backend: ClusterBackend,
                cluster: Cluster) -> None:
        """A started cluster: ready yet, failed, to scale, idle, notebooks to attach."""
        engine = engine_name(cluster.kind)
        status = backend.status(cluster.id)
        if cluster.status == ClusterState.STARTING:
            if status.phase == ClusterPhase.READY:
                with transaction(worker.writes) as session:
                    states.move(session, cluster.id, ClusterState.RUNNING,
                                **running_values(status, backend))
                log.info("Cluster %s of %s is running at %s", cluster.id, cluster.owner,
                         status.address)
                return
            timeout = self.settings.cluster_start_timeout
            claimed_at = cluster.started_at or cluster.created_at
            if utcnow() - claimed_at >= timedelta(seconds=timeout):
                self._end(worker, backend, cluster, ClusterState.FAILED,
                          f"the {engine} cluster did not become ready in {timeout} s: "
                          f"{status.reason or progress(status) + ' registered'}")
                return
            if start_cut_short(status):
                # Claimed, then the worker stopped before the engine had all of it (the
                # network made, no head yet): start again.
                self._start_on_engine(worker, pool, backend, cluster)
                return
        if status.phase == ClusterPhase.FAILED:
            self._end(worker, backend, cluster, ClusterState.FAILED,
                      f"the {engine} cluster failed: {status.reason or 'its head stopped'}")
            return
        if cluster.status != ClusterState.RUNNING:
            return
        if status.phase == ClusterPhase.MISSING:
            self._end(worker, backend, cluster, ClusterState.FAILED,
                      f"the {engine} cluster's containers are gone (removed outside "
                      "Dockyard, or the engine restarted)")
            return
        self._next_look[cluster.id] = time.monotonic() + RUNNING_LOOK_SECONDS
        # Scaled only once running: the head's readiness probe counts the workers it was
        # made with, so a scale asked for while it starts waits for it (the row keeps it).
        if status.workers_wanted != cluster.workers:
            self._scale(worker, pool, backend, cluster)
        self._running(worker, backend, cluster, status)

    def _scale(self, worker: Worker, pool: JobPool, backend: ClusterBackend,
               cluster: Cluster) -> None:
        try:
            backend.scale(cluster.id, cluster_spec(cluster, pool))
        except ClusterStartError as exc:
            with transaction(worker.writes) as session:
                session.execute(update(Cluster).where(Cluster.id == cluster.id).values(
                    reason=f"could not scale to {cluster.workers} workers: {exc}")
                    .execution_options(synchronize_session=False))
            return
        log.info("Cluster %s of %s: scaled to %d workers", cluster.id, cluster.owner,
                 cluster.workers)

    def _running(self, worker: Worker, backend: ClusterBackend, cluster: Cluster,
                 status: ClusterStatus) -> None:
        now = utcnow()
        changed: dict[str, Any] = {}
        if status.address and (status.address, status.dashboard_url) != (
                cluster.address, cluster.dashboard_url):
            changed.update(address=status.address, dashboard_url=status.dashboard_url)
        if status.busy and now - cluster.last_activity_at >= timedelta(
                seconds=BUSY_TOUCH_SECONDS):
            changed["last_activity_at"] = now
        if changed:
            with transaction(worker.writes) as session:
                session.execute(update(Cluster).where(
                    Cluster.id == cluster.id, Cluster.status == ClusterState.RUNNING)
                    .values(**changed).execution_options(synchronize_session=False))
        idle = cluster.idle_timeout_seconds
        # Unknown (a swarm head on another node, whose probe this engine cannot read) is
        # never idle: stopping a cluster in use costs more than one left running.
        if idle and status.busy is False and "last_activity_at" not in changed \
                and now - cluster.last_activity_at >= timedelta(seconds=idle):
            with transaction(worker.writes) as session:
                # Only if still unused: a page view since this look wins over the stop.
                idle_stop = states.stop_if_idle(session, cluster.id,
                                                now - timedelta(seconds=idle))
            if idle_stop:
                self._end(worker, backend, cluster, ClusterState.STOPPED,
                          f"idle for {idle} s: no driver connected and nobody looked at it")
                return
        if time.monotonic() - self._last_attach.get(cluster.id, 0.0) >= ATTACH_SECONDS:
            self._last_attach[cluster.id] = time.monotonic()
            attached = backend.attach(cluster.id, self.notebook_labels(cluster.owner))
            if attached:
                log.info("Cluster %s: attached %s's notebook servers %s", cluster.id,
                         cluster.owner, ", ".join(attached))

    def notebook_labels(self, owner: str) -> dict[str, str]:
        """The labels of ``owner``'s notebook server containers on this installation."""
        return {SERVER_LABEL: "true", "dockyard.prefix": self.settings.docker_name_prefix,
                "dockyard.user": owner}

    def _end(self, worker: Worker, backend: ClusterBackend | None, cluster: Cluster,
             final: ClusterState, reason: str) -> None:
        """Remove the cluster from its engine, then record how it ended (stopping first,
        so the pages show it; a removal that fails is tried again on the next turn)."""
        if final == ClusterState.STOPPED:
            with transaction(worker.writes) as session:
                states.move(session, cluster.id, ClusterState.STOPPING)
        if backend is not None:
            backend.remove(cluster.id)
        with transaction(worker.writes) as session:
            moved = states.move(session, cluster.id, final, reason=reason)
        self._last_attach.pop(cluster.id, None)
        self._next_look.pop(cluster.id, None)
        if moved:
            log.info("Cluster %s of %s %s: %s", cluster.id, cluster.owner, final.value, reason)

    # -- reconcile -------------------------------------------------------------------------
    def reconcile_engines(self, worker: Worker) -> None:
        """Compare every pool's clusters on the engine with the database."""
        for pool in worker.pools:
            if pool.clusters is None:
                continue
            try:
                self._reconcile_pool(worker, pool, pool.clusters)
            except Exception as exc:  # the next reconcile tries again
                log.warning("Reconcile: the clusters of pool %s: %s", pool.name, exc)

    def _reconcile_pool(self, worker: Worker, pool: JobPool, backend: ClusterBackend) -> None:
        found = backend.list_clusters()
        with worker.reads() as session:
            rows = {cluster.id: cluster for cluster in session.scalars(
                select(Cluster).where(or_(
                    Cluster.id.in_(list(found)),
                    (Cluster.pool == pool.name) & Cluster.status.in_(states.LIVE_STATES))))}
            run_ids = {c.run_id for c in rows.values() if c.run_id is not None}
            run_states = dict(session.execute(
                select(Run.id, Run.status).where(Run.id.in_(run_ids))).all())
        for cluster_id in found:
            cluster = rows.get(cluster_id)
            if cluster is None or cluster.status.is_final:
                log.info("Reconcile: removing cluster %s (%s)", cluster_id,
                         "no such cluster in the database" if cluster is None
                         else f"it has {cluster.status.value}")
                backend.remove(cluster_id)
            elif cluster.stop_requested and cluster.run_id is None \
                    and cluster.worker != worker.name:
                # Its worker is another (or was renamed, and is never coming back): whoever
                # finds the cluster on its engine honours the stop.
                self._end(worker, backend, cluster, ClusterState.STOPPED,
                          "stopped on request")
        for cluster in rows.values():
            if cluster.status.is_final:
                continue
            if cluster.run_id is not None:
                run_state = run_states.get(cluster.run_id)
                if run_state is None or run_state.is_final:
                    # Its run ended while no worker was there to remove it.
                    ended = run_state.value if run_state is not None else "deleted"
                    self._end(worker, backend, cluster, ClusterState.STOPPED,
                              f"its run ended ({ended})")
            # Only this worker's: several workers may share a pool's name, each on an
            # engine of its own, and a cluster is missing only from the engine it is on.
            elif cluster.id not in found and cluster.status == ClusterState.RUNNING \
                    and cluster.worker == worker.name:
                with transaction(worker.writes) as session:
                    gone = states.move(
                        session, cluster.id, ClusterState.FAILED,
                        expected=(ClusterState.RUNNING,),
                        reason=f"the {engine_name(cluster.kind)} cluster's containers were "
                               "gone (removed outside Dockyard, or the engine restarted)")
                if gone:
                    log.info("Reconcile: cluster %s of %s is gone from the engine",
                             cluster.id, cluster.owner)
