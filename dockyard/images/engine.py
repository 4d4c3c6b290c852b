"""What the image catalog needs from a container engine, without importing one.

``spawner.images.engine.DockerImageEngine`` implements it on Docker; the service only sees
this interface and the plain values of ``spawner.images.facts``, so the web app and the
worker never import docker themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dockyard.settings import Settings
from spawner.images.facts import ImageFacts

if TYPE_CHECKING:  # the web app never imports docker
    from spawner.images.inspect import LeftoverInspection


class ImageEngine(Protocol):
    def facts(self, reference: str) -> ImageFacts | None:
        """The image's id, digest and size, or None when the engine has no such image."""
        ...

    def build_archive(
        self, archive: Path, reference: str, on_line: Callable[[str], None], *,
        labels: dict[str, str],
    ) -> str: ...

    def buildable_directories(self) -> dict[str, str]:
        """Names of the project's images (images/NAME) and what each is."""
        ...

    def build_directory(
        self, name: str, reference: str, on_line: Callable[[str], None], *,
        labels: dict[str, str],
    ) -> str: ...

    def inspect(self, reference: str, *, catalog_id: int | None = None) -> dict[str, Any]: ...

    def remove_leftover_inspections(self, abandoned_after: timedelta) -> list[LeftoverInspection]:
        """Remove the inspection containers that stopped workers of this installation left
        (all of this worker's: it calls this as it starts) and say which they were."""
        ...

    def running_notebook_images(self, name_prefix: str) -> dict[str, list[str]] | None: ...


def image_engine(settings: Settings, *, namespace: str = "", worker: str = "") -> ImageEngine:
    """The engine images are registered on, built on and inspected on; a worker names
    itself and its installation's namespace, which its inspection containers carry."""
    from spawner.images.engine import DockerImageEngine

    return DockerImageEngine(
        inspect_timeout=settings.image_inspect_timeout_seconds, build_ca=settings.build_ca,
        namespace=namespace, worker=worker,
    )


def image_engine_for_usage() -> ImageEngine:
    from spawner.images.engine import DockerImageEngine

    return DockerImageEngine(timeout=10)
