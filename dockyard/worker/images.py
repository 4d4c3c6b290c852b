"""The worker's image duty: the image catalog's builds and inspections, which admins queue
and the worker process runs between its runs (``dockyard.images.builds`` does the work)."""

from __future__ import annotations

import time

from sqlalchemy import select

from dockyard.images.builds import ImageWorkRunner
from dockyard.models import Image
from dockyard.settings import Settings
from dockyard.worker.loop import DUTY_SECONDS, Worker


class ImageDuty:
    """The image catalog's builds and inspections, queued by admins, run by the worker."""

    #: Asked on every pass of the loop, as queued runs are: an admin waits for a queued
    #: build to start. A pass with nothing queued costs one read (no write lock on
    #: SQLite); the full turn (claims, heartbeats) comes when work is queued, and every
    #: DUTY_SECONDS.
    turn_seconds = 0.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runner: ImageWorkRunner | None = None
        self._last_full_turn = -DUTY_SECONDS

    def runner(self, worker: Worker) -> ImageWorkRunner:
        if self._runner is None:
            # The worker's identity goes on its inspection containers, so that its next
            # start knows which of them it left (and another installation's stay).
            self._runner = ImageWorkRunner(namespace=worker.namespace, worker_name=worker.name)
        return self._runner

    def reconcile(self, worker: Worker) -> None:
        self.runner(worker).reconcile(worker.writes, self.settings)

    def __call__(self, worker: Worker) -> object:
        now = time.monotonic()
        if now - self._last_full_turn < DUTY_SECONDS and not self._work_queued(worker):
            return []
        self._last_full_turn = now
        return self.runner(worker).tick(worker.writes, self.settings)

    @staticmethod
    def _work_queued(worker: Worker) -> bool:
        with worker.reads() as session:
            return session.scalar(
                select(Image.id).where(Image.work_queued.is_not(None)).limit(1)) is not None
