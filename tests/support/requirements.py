"""Tests that need a real part (Docker, PostgreSQL, Chromium) ask for it here.

Without the part a developer's run skips those tests with one line saying how to get
it; under CI=true a missing part fails the test instead, so CI cannot go green by
skipping what it was meant to check.
"""

from __future__ import annotations

import functools
import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL_VAR = "DOCKYARD_TEST_POSTGRES_URL"
CHROMIUM = "/usr/bin/chromium"


def missing(part: str, how: str) -> None:
    message = f"{part} is not available: {how}"
    if IN_CI:
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


@functools.cache
def docker_answers() -> str | None:
    """None when a Docker engine answers, else the reason."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any failure means "no engine" here
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def require_docker() -> None:
    reason = docker_answers()
    if reason is not None:
        missing(
            "Docker engine",
            f"{reason}. Install docker.io and start dockerd "
            "(see .ci/run), then run make test again.",
        )


def require_image(reference: str) -> None:
    require_docker()
    import docker

    client = docker.from_env(timeout=10)
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        missing(f"Image {reference}", "build it with '.venv/bin/dockyard images build'.")
    finally:
        client.close()


def require_postgres() -> str:
    url = os.environ.get(POSTGRES_URL_VAR)
    if not url:
        missing(
            "PostgreSQL",
            f"set {POSTGRES_URL_VAR}=postgresql+psycopg://USER:PASS@HOST/DB "
            "(.ci/run starts one and sets it).",
        )
    return url  # type: ignore[return-value]


def require_chromium() -> str:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing(
            "Chromium", "apt-get install chromium (Debian's package; never a downloaded browser)."
        )
    return CHROMIUM
