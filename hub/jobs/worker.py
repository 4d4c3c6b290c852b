"""The worker: the only process that moves runs forward."""

from __future__ import annotations

import logging
import signal
import threading

from hub.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, once: bool = False) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("Worker started (backend %s)", settings.job_backend)
    while not stop.is_set():
        if once:
            break
        stop.wait(settings.worker_poll_seconds)
    log.info("Worker stopped")
