"""An image inspection cut short by a stop of the worker: its container is removed and the
image settled by the worker's reconcile at the next start, on the real engine. Other
installations' inspection containers, and running ones of other workers, stay."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from docker.errors import NotFound
from flask import Flask
from flask.testing import FlaskClient

from dockyard.models import Image, ImageStatus, utcnow
from dockyard.settings import Settings
from dockyard.worker.images import ImageDuty
from dockyard.worker.loop import Worker
from spawner.images.inspect import INSPECT_LABEL, INSPECT_LABEL_VALUE, InspectionOwner
from spawner.jobs.base import LABEL_NAMESPACE
from tests.images_admin.conftest import ADMIN, register

pytestmark = pytest.mark.docker

WORKER_NAME = "inspector-1"
# An image whose inspection never ends by itself: its python3 only sleeps.
SLOW_INSPECTION_DOCKERFILE = (
    "FROM debian:bookworm-slim\n"
    "RUN printf '#!/bin/sh\\nexec sleep 600\\n' > /usr/local/bin/python3 "
    "&& chmod 755 /usr/local/bin/python3\n"
)


@pytest.fixture
def namespace(docker_engine: Any) -> Iterator[str]:
    """This installation's namespace; every inspection container left with it, or with
    the other installation's, is removed afterwards."""
    ours = "dyinsp" + secrets.token_hex(4)
    yield ours
    for label in (ours, f"{ours}-other"):
        found = docker_engine.containers.list(
            all=True, filters={"label": f"{LABEL_NAMESPACE}={label}"})
        for container in found:
            container.remove(force=True)


@pytest.fixture
def worker_settings(migrated: Settings, namespace: str) -> Settings:
    return migrated.model_copy(update={"job_namespace": namespace, "job_backend": "local"})


def reconcile_at_start(settings: Settings) -> None:
    """What a worker of that name does first when it starts."""
    worker = Worker(settings, name=WORKER_NAME, duties=[ImageDuty(settings)])
    try:
        worker.reconcile()
        worker.drain()
    finally:
        worker.close()


def inspection_container(engine: Any, shell_image: str, owner: InspectionOwner, *,
                         running: bool) -> Any:
    """An inspection container labelled as the worker labels its own."""
    container = engine.containers.run(
        shell_image, ["sleep", "600"] if running else ["true"],
        name=f"dockyard-inspect-{secrets.token_hex(4)}",
        labels={INSPECT_LABEL: INSPECT_LABEL_VALUE, **owner.labels()}, detach=True,
    )
    if not running:
        container.wait(timeout=60)
    return container


def is_gone(engine: Any, container_id: str) -> bool:
    try:
        engine.containers.get(container_id)
    except NotFound:
        return True
    return False


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.2)
    return found


def test_an_inspection_cut_short_by_a_stop_is_removed_and_inspected_again(
    app: Flask, client: FlaskClient, worker_settings: Settings, namespace: str,
    docker_engine: Any, shell_image: str, our_tag: Callable[[str], str],
) -> None:
    reference = our_tag("slow-inspection")
    docker_engine.images.build(fileobj=io.BytesIO(SLOW_INSPECTION_DOCKERFILE.encode()),
                               tag=reference, rm=True, forcerm=True, pull=False)
    created = register(client, reference, for_jobs=True)
    assert created.status_code == 201, created.json
    image_id = created.json["id"]

    # A real worker takes the inspection; it is stopped (SIGTERM, as Dockyard's stop
    # does) while the inspection runs.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(worker_settings.home), DOCKYARD_JOB_BACKEND="local",
               DOCKYARD_JOB_NAMESPACE=namespace, DOCKYARD_WORKER_NAME=WORKER_NAME,
               DOCKYARD_WORKER_POLL_SECONDS="0.2", DOCKYARD_IMAGE_INSPECT_TIMEOUT_SECONDS="600",
               # No curated image to register: this image is the worker's only work.
               DOCKYARD_NOTEBOOK_IMAGE=our_tag("not-built"))
    log_path = worker_settings.home / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    ours = {"label": [f"{INSPECT_LABEL}={INSPECT_LABEL_VALUE}", f"{LABEL_NAMESPACE}={namespace}"]}
    try:
        leftover = wait_for(lambda: docker_engine.containers.list(filters=ours),
                            "the worker's inspection to start")[0]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log_path.read_text(errors="replace")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert leftover.labels["dockyard.worker"] == WORKER_NAME
    assert leftover.labels["dockyard.catalog-image"] == str(image_id)
    assert not is_gone(docker_engine, leftover.id), "the stop left the container behind"
    stuck = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert (stuck["status"], stuck["status_detail"]) == ("registered", "Inspecting…")

    # Not this worker's to remove: another installation's leftover, and an inspection
    # another worker of this installation is running now.
    elsewhere = inspection_container(
        docker_engine, shell_image, InspectionOwner(f"{namespace}-other", WORKER_NAME, image_id),
        running=False)
    colleague = inspection_container(
        docker_engine, shell_image, InspectionOwner(namespace, "inspector-2", image_id),
        running=True)

    reconcile_at_start(worker_settings)

    assert is_gone(docker_engine, leftover.id)
    assert not is_gone(docker_engine, elsewhere.id)
    assert not is_gone(docker_engine, colleague.id)
    settled = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert settled["status"] == "registered"
    assert "cut short when the worker stopped" in settled["status_detail"]
    latest = settled["events"][0]
    assert (latest["actor"], latest["action"]) == ("dockyard-worker", "inspection interrupted")
    assert leftover.name in latest["detail"]
    with app.extensions["dockyard.sessions"]() as session:
        assert session.get(Image, image_id).work_queued == "inspect"  # inspected again next


def test_a_build_whose_inspection_was_cut_short_fails_with_the_reason(
    app: Flask, client: FlaskClient, worker_settings: Settings, namespace: str,
    docker_engine: Any, shell_image: str,
) -> None:
    with app.extensions["dockyard.sessions"]() as session:
        image = Image(reference="team/built:1", status=ImageStatus.BUILDING, created_by="admin",
                      build_context="images/test", status_detail="Building…",
                      build_started_at=utcnow() - timedelta(minutes=5),
                      build_log="Built team/built:1 (sha256:0). Inspecting it…\n")
        session.add(image)
        session.commit()
        image_id = image.id
    # Exited, as the container of an inspection that ended after its worker had stopped.
    leftover = inspection_container(docker_engine, shell_image,
                                    InspectionOwner(namespace, WORKER_NAME, image_id),
                                    running=False)

    reconcile_at_start(worker_settings)

    assert is_gone(docker_engine, leftover.id)
    failed = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert failed["status"] == "failed" and not failed["building"]
    assert failed["status_detail"] == ("The worker stopped while inspecting the built image; "
                                       "build again.")
    assert (failed["events"][0]["action"], failed["events"][0]["actor"]) == (
        "build failed", "dockyard-worker")
    log = client.get(f"/api/v1/images/{image_id}/build-log", headers=ADMIN).json["text"]
    assert log.endswith(f"Build failed: the worker stopped during its inspection "
                        f"(container {leftover.name})\n")
