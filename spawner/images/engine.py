"""The image catalog's engine operations on one Docker engine.

The service decides which images exist in the catalog and what happens to them; this
adapter only answers questions about the engine (is the image there, how big, which
digest), builds an uploaded context, and runs the one-off inspection. The service reaches
it through its ``ImageEngine`` interface and never imports docker itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound
from requests.exceptions import RequestException

from spawner.engine import docker_client
from spawner.images.build import BuildError, BuildStream, available_images, build_image
from spawner.images.facts import BuildFailed, EngineUnavailable, ImageFacts
from spawner.images.inspect import (
    InspectionFailed,
    InspectionOwner,
    LeftoverInspection,
    inspect_image,
    remove_leftover_inspections,
)

LineSink = Callable[[str], None]


class DockerImageEngine:
    """ImageEngine on the Docker engine named by DOCKER_HOST (or the local socket)."""

    def __init__(
        self, *, timeout: int = 30, inspect_timeout: float = 60, build_ca: Path | None = None,
        namespace: str = "", worker: str = "",
    ) -> None:
        self.timeout = timeout
        self.inspect_timeout = inspect_timeout
        self.build_ca = build_ca
        # Who inspects: the installation's namespace and the worker, put on inspection
        # containers so that a leftover is found by its own installation only.
        self.namespace = namespace
        self.worker = worker

    def _client(self, timeout: int | None = None) -> Any:
        try:
            client = docker_client(timeout=timeout or self.timeout)
            client.ping()
        except (DockerException, RequestException, OSError) as exc:
            where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise EngineUnavailable(f"no Docker engine answered at {where} ({exc})") from None
        return client

    def facts(self, reference: str) -> ImageFacts | None:
        client = self._client()
        try:
            image = client.images.get(reference)
        except ImageNotFound:
            return None
        except APIError as exc:
            raise EngineUnavailable(f"the Docker engine refused: {exc.explanation}") from None
        finally:
            client.close()
        attrs = image.attrs
        repo_digests = [d for d in attrs.get("RepoDigests") or [] if "@" in d]
        digest = repo_digests[0].split("@", 1)[1] if repo_digests else image.id
        return ImageFacts(
            reference=reference,
            image_id=image.id,
            digest=digest,
            size_bytes=int(attrs.get("Size") or 0),
            created=str(attrs.get("Created") or ""),
        )

    def build_archive(
        self, archive: Path, reference: str, on_line: LineSink, *, labels: dict[str, str]
    ) -> str:
        """Build a tar context (Dockerfile at its root) and tag it ``reference``."""
        client = self._client(timeout=3600)
        try:
            with open(archive, "rb") as context:
                stream = client.api.build(
                    fileobj=context,
                    custom_context=True,
                    tag=reference,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                    labels=labels,
                )
                image_id = _follow_build(stream, on_line)
        except DockerException as exc:
            raise BuildFailed(f"Docker engine error: {exc}") from None
        finally:
            client.close()
        return image_id

    def buildable_directories(self) -> dict[str, str]:
        """The project's images this checkout can build (images/NAME), with descriptions."""
        return {name: spec.description for name, spec in available_images().items()}

    def build_directory(
        self, name: str, reference: str, on_line: LineSink, *, labels: dict[str, str]
    ) -> str:
        """Build one of the project's images exactly as ``dockyard images build`` does
        (its confined context, the build CA, its content-derived VERSION and latest
        tags), then tag the result ``reference`` as well for the catalog."""
        try:
            result = build_image(
                name, on_line=lambda line: on_line(line + "\n"), build_ca=self.build_ca
            )
        except BuildError as exc:
            raise BuildFailed(str(exc)) from None
        if reference not in result.tags:
            client = self._client()
            try:
                repository, _, tag = reference.rpartition(":")
                client.api.tag(result.image_id, repository, tag, force=True)
            except APIError as exc:
                raise BuildFailed(f"tagging {reference} failed: {exc.explanation}") from None
            finally:
                client.close()
            on_line(f"tagged {reference}\n")
        return result.image_id

    def inspect(self, reference: str, *, catalog_id: int | None = None) -> dict[str, Any]:
        owner = InspectionOwner(self.namespace, self.worker, catalog_id) if self.namespace \
            else None
        try:
            return inspect_image(reference, timeout_seconds=self.inspect_timeout, owner=owner)
        except InspectionFailed as exc:
            raise BuildFailed(str(exc)) from None

    def remove_leftover_inspections(self, abandoned_after: timedelta) -> list[LeftoverInspection]:
        if not self.namespace:
            return []  # inspections made without a namespace cannot be told apart
        try:
            return remove_leftover_inspections(
                self.namespace, self.worker, abandoned_after=abandoned_after,
                client_factory=self._client,
            )
        except (DockerException, RequestException) as exc:
            raise EngineUnavailable(f"cannot list inspection containers: {exc}") from None

    def running_notebook_images(self, name_prefix: str) -> dict[str, list[str]] | None:
        """Running notebook containers by image, read from the engine by the labels
        the notebook spawners put on them (dockyard.notebook, dockyard.prefix, ...)."""
        try:
            client = self._client(timeout=10)
        except EngineUnavailable:
            return None
        try:
            labels = ["dockyard.notebook=true", f"dockyard.prefix={name_prefix}"]
            found: dict[str, list[str]] = {}
            for container in client.containers.list(filters={"label": labels}):
                image = container.attrs.get("Config", {}).get("Image", "")
                tags = container.labels
                who = tags.get("dockyard.user", "?")
                if tags.get("dockyard.server"):
                    who += "/" + tags["dockyard.server"]
                found.setdefault(image, []).append(who)
            return found
        except (DockerException, RequestException):
            return None
        finally:
            client.close()


def _follow_build(stream: Iterable[dict[str, Any]], on_line: LineSink) -> str:
    """Pass every progress line on; return the built image id or raise BuildFailed."""
    output = BuildStream(stream)
    try:
        for line in output.lines():
            on_line(line + "\n")
    except BuildFailed as exc:
        message = str(exc) or "build failed"
        on_line(f"ERROR: {message}\n")
        raise BuildFailed(message) from None
    if not output.image_id:
        raise BuildFailed("the engine finished without reporting an image")
    return output.image_id
