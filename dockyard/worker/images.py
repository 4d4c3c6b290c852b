"""The worker's image duty: the image catalog's builds and inspections, which admins queue
and the worker process runs between its runs (``dockyard.images.builds`` does the work)."""

from __future__ import annotations

from dockyard.images.builds import ImageWorkRunner
from dockyard.settings import Settings
from dockyard.worker.loop import Worker


class ImageDuty:
    """The image catalog's builds and inspections, queued by admins, run by the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runner: ImageWorkRunner | None = None

    def runner(self, worker: Worker) -> ImageWorkRunner:
        if self._runner is None:
            # The worker's identity goes on its inspection containers, so that its next
            # start knows which of them it left (and another installation's stay).
            self._runner = ImageWorkRunner(namespace=worker.namespace, worker_name=worker.name)
        return self._runner

    def reconcile(self, worker: Worker) -> None:
        self.runner(worker).reconcile(worker.writes, self.settings)

    def __call__(self, worker: Worker) -> object:
        return self.runner(worker).tick(worker.writes, self.settings)
