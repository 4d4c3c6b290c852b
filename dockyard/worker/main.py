"""The worker process (``dockyard worker``): one Worker with its image and cluster
duties, its health server, and the signals that stop it."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from dockyard.images.curated import seed_at_start
from dockyard.settings import Settings
from dockyard.worker.clusters import ClusterDuty
from dockyard.worker.health import start_health_server
from dockyard.worker.images import ImageDuty
from dockyard.worker.loop import Worker

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, once: bool = False) -> None:
    stop = threading.Event()
    clusters = ClusterDuty(settings)
    worker = Worker(settings, duties=[ImageDuty(settings), clusters])
    health = start_health_server(settings, worker.db_engine)  # /health and /metrics, if a port
    worker.heartbeat = health.beat

    def _stop(*_: Any) -> None:
        stop.set()
        worker.wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    log.info("Worker %s started: pools %s, namespace %s, at most %d runs (%d per user)",
             worker.name, worker.pools.describe(), worker.namespace,
             settings.max_concurrent_runs, settings.max_runs_per_user)
    try:
        # Here rather than in `dockyard up`: the worker runs in every installation (compose
        # too), has the Docker socket there, and is what inspects the images it registers.
        seed_at_start(worker.writes, settings, [pool.backend.name for pool in worker.pools])
        if once:
            worker.reconcile()
            worker.drain()
            worker.triggers.pass_once()
            worker.tick()
            worker.drain()
            clusters.drain()
        else:
            worker.run(stop)
    finally:
        health.stop()
        clusters.close()
        worker.close(wait=once)
    log.info("Worker stopped")
