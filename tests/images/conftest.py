"""Fixtures for the image tests: runners for the built images and a fresh named volume."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.images.imagerun import NOTEBOOK, TEST_IMAGE, ImageRunner
from tests.support.requirements import require_docker, require_image


@pytest.fixture(scope="session")
def notebook() -> Iterator[ImageRunner]:
    require_image(NOTEBOOK)
    runner = ImageRunner(NOTEBOOK)
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def test_image() -> Iterator[ImageRunner]:
    require_image(TEST_IMAGE)
    runner = ImageRunner(TEST_IMAGE)
    yield runner
    runner.close()


@pytest.fixture
def docker_engine() -> None:
    require_docker()


@pytest.fixture
def fresh_volume() -> Iterator[str]:
    """A new, empty named volume, removed afterwards."""
    require_docker()
    import docker

    client = docker.from_env(timeout=60)
    volume = client.volumes.create(f"dockyard-imagetest-{uuid.uuid4().hex[:10]}")
    try:
        yield volume.name
    finally:
        volume.remove(force=True)
        client.close()
