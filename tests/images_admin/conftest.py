"""Fixtures for the image catalog's admin tests: the worker's image runner driven by
hand, uniquely named images on the real engine (removed afterwards), small contexts."""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dockyard.images.builds import ImageWorkRunner
from dockyard.settings import Settings
from tests.browser.conftest import browser, page  # noqa: F401  (browser tests here too)
from tests.conftest import auth
from tests.support.requirements import require_docker, require_image

SHELL_IMAGE = "debian:bookworm-slim"
TEST_IMAGE = "dockyard/test:latest"
# Every image the tests build or tag is named under this repository prefix.
OUR_REPOSITORY = "dyimgadm"

ADMIN = auth("tok-admin")
ALICE = auth("tok-alice")


def tar_of(files: dict[str, bytes], *, gz: bool = False) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def slow_dockerfile(marker: str) -> bytes:
    """A build that prints lines over a few seconds, so progress can be watched."""
    return (
        f"FROM {SHELL_IMAGE}\n"
        f"RUN echo {marker}-step-one && sleep 1.5 && echo {marker}-step-one-done\n"
        f"RUN echo {marker}-step-two && sleep 1.5 && echo {marker}-step-two-done\n"
        "COPY notes.txt /opt/notes.txt\n"
    ).encode()


class WorkerDriver:
    """What the worker loop does for images, called by the test when it wants."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.runner = ImageWorkRunner()
        self.writes = app.extensions["dockyard.write_sessions"]
        self.settings = settings

    def start(self) -> list[int]:
        return self.runner.tick(self.writes, self.settings)

    def finish(self, timeout: float = 300) -> None:
        assert self.runner.wait(timeout), "image work did not finish in time"

    def run_all(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.start():
            self.finish(max(1.0, deadline - time.monotonic()))


@pytest.fixture
def worker(app: Flask, migrated: Settings) -> WorkerDriver:
    return WorkerDriver(app, migrated)


@pytest.fixture
def docker_engine() -> Iterator[Any]:
    require_docker()
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture
def shell_image(docker_engine: Any) -> str:
    require_image(SHELL_IMAGE)
    return SHELL_IMAGE


@pytest.fixture
def our_tag(docker_engine: Any) -> Iterator[Callable[[str], str]]:
    """Unique references under our repository prefix; every one made is removed after."""
    made: list[str] = []

    def make(name: str) -> str:
        reference = f"{OUR_REPOSITORY}/{name}:{secrets.token_hex(4)}"
        made.append(reference)
        return reference

    yield make
    for reference in made:
        try:
            docker_engine.images.remove(reference, force=True, noprune=False)
        except Exception:  # never built (a test of a refusal): nothing to remove
            pass


def register(client: FlaskClient, reference: str, **fields: Any) -> Any:
    return client.post("/api/v1/images", json={"reference": reference, **fields}, headers=ADMIN)


def patch(client: FlaskClient, image_id: int, **fields: Any) -> Any:
    return client.patch(f"/api/v1/images/{image_id}", json=fields, headers=ADMIN)
