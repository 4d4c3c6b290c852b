"""What the image catalog needs from a container engine, without importing one.

``spawner.imageengine.DockerImageEngine`` implements it on Docker; the hub only sees
this interface, so the web app and the worker never import docker themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hub.settings import Settings


class EngineUnavailable(Exception):
    """No engine answered; nothing about the image can be known now."""


class BuildFailed(Exception):
    """A build or an inspection failed; the message is the engine's own reason."""


@dataclass(frozen=True)
class ImageFacts:
    reference: str
    image_id: str
    # The registry digest when the image came from a registry, else the image id.
    digest: str
    size_bytes: int
    created: str


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

    def inspect(self, reference: str) -> dict[str, Any]: ...

    def running_notebook_images(self, name_prefix: str) -> dict[str, list[str]] | None: ...


def image_engine(settings: Settings) -> ImageEngine:
    """The engine images are registered on, built on and inspected on."""
    from spawner.imageengine import DockerImageEngine

    return DockerImageEngine(
        inspect_timeout=settings.image_inspect_timeout_seconds, build_ca=settings.build_ca
    )


def image_engine_for_usage() -> ImageEngine:
    from spawner.imageengine import DockerImageEngine

    return DockerImageEngine(timeout=10)
