"""Builds through the API, done by the worker's image runner on the real engine: the log
grows while the build runs, the outcome and the inspection are recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from dockyard.images.builds import ImageWorkRunner
from dockyard.models import Image, ImageStatus, utcnow
from dockyard.settings import Settings
from tests.images_admin.conftest import (
    ADMIN,
    TEST_IMAGE,
    WorkerDriver,
    patch,
    slow_dockerfile,
    tar_of,
)
from tests.support.requirements import require_image

pytestmark = pytest.mark.docker


def _upload(client: FlaskClient, url: str, files: dict[str, bytes], **form: Any) -> Any:
    data: dict[str, Any] = dict(form)
    data["context"] = (tar_of(files, gz=True), "context.tar.gz")
    return client.post(url, data=data, headers=ADMIN, content_type="multipart/form-data")


def _follow_log(client: FlaskClient, image_id: int, timeout: float = 180) -> list[str]:
    """Read the log incrementally as a page would, until the build is over; the chunks."""
    chunks: list[str] = []
    offset = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/images/{image_id}/build-log?offset={offset}",
                          headers=ADMIN).json
        assert body["offset"] == offset
        if body["text"]:
            chunks.append(body["text"])
        offset = body["next_offset"]
        if not body["building"]:
            return chunks
        time.sleep(0.2)
    raise AssertionError("the build did not finish in time")


def test_uploaded_build_streams_its_log_and_records_what_is_inside(
    client: FlaskClient, worker: WorkerDriver, shell_image: str,
    our_tag: Callable[[str], str],
) -> None:
    reference = our_tag("upload")
    files = {"Dockerfile": slow_dockerfile("imgadm"), "notes.txt": b"hello\n"}
    created = _upload(client, "/api/v1/images", files, reference=reference,
                      description="uploaded", for_jobs="on")
    assert created.status_code == 201, created.json
    image_id = created.json["id"]
    assert created.json["status"] == "building"
    assert created.json["building"] is True and created.json["for_jobs"] is True
    # Nothing is built in the web request: the worker has not been asked yet.
    assert client.get(f"/api/v1/images/{image_id}/build-log", headers=ADMIN).json["text"] == ""

    assert worker.start() == [image_id]
    chunks = _follow_log(client, image_id)
    worker.finish()
    log = "".join(chunks)
    # Progress arrived in pieces while the build ran, in order, without loss.
    assert len(chunks) >= 3, chunks
    assert log.index("imgadm-step-one-done") < log.index("imgadm-step-two-done")
    assert client.get(f"/api/v1/images/{image_id}/build-log",
                      headers=ADMIN).json["text"] == log

    image = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert image["status"] == "ready", image["status_detail"]
    assert image["building"] is False
    assert image["digest"].startswith("sha256:")
    assert "Debian" in image["contents"]["os"]
    assert image["build_source"] == "an uploaded Dockerfile/context"
    actions = [e["action"] for e in image["events"]]
    assert actions[:4] == ["inspected", "built", "build started", "build requested"]
    assert {e["actor"] for e in image["events"][:3]} == {"dockyard-worker"}


def test_a_failing_build_is_recorded_with_its_reason(
    client: FlaskClient, worker: WorkerDriver, shell_image: str,
    our_tag: Callable[[str], str],
) -> None:
    dockerfile = f"FROM {shell_image}\nRUN echo about-to-fail && exit 3\n".encode()
    image_id = _upload(client, "/api/v1/images", {"Dockerfile": dockerfile},
                       reference=our_tag("fails")).json["id"]
    worker.run_all()
    image = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert image["status"] == "failed"
    assert "returned a non-zero code: 3" in image["status_detail"]
    log = client.get(f"/api/v1/images/{image_id}/build-log", headers=ADMIN).json["text"]
    assert "about-to-fail" in log and "Build failed" in log
    assert image["events"][0]["action"] == "build failed"
    # A failed image is not offered, and may be built again once fixed.
    assert patch(client, image_id, default_for_jobs=True).status_code == 409
    fixed = f"FROM {shell_image}\nRUN echo fixed\n".encode()
    rebuilt = _upload(client, f"/api/v1/images/{image_id}/build", {"Dockerfile": fixed})
    assert rebuilt.status_code == 202
    assert rebuilt.json["status"] == "building"
    assert client.post(f"/api/v1/images/{image_id}/build", json={},
                       headers=ADMIN).status_code == 409  # one build at a time
    worker.run_all()
    assert client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json["status"] == "ready"


def test_bad_build_requests_are_refused_before_the_worker_sees_them(
    client: FlaskClient, worker: WorkerDriver, shell_image: str,
    our_tag: Callable[[str], str],
) -> None:
    escape = tar_of({"Dockerfile": b"FROM x\n", "../../etc/cron.d/evil": b"x"})
    refused = client.post(
        "/api/v1/images",
        data={"reference": our_tag("evil"), "context": (escape, "c.tar")},
        headers=ADMIN, content_type="multipart/form-data",
    )
    assert refused.status_code == 422
    assert refused.json["detail"][0]["field"] == "context"
    assert "leads outside the context" in refused.json["detail"][0]["message"]

    unknown_dir = client.post("/api/v1/images", json={"reference": our_tag("x"),
                                                      "build_from": "../hub"}, headers=ADMIN)
    assert unknown_dir.status_code == 422
    assert unknown_dir.json["detail"][0]["field"] == "directory"

    registered = client.post("/api/v1/images", json={"reference": shell_image},
                             headers=ADMIN).json["id"]
    no_source = client.post(f"/api/v1/images/{registered}/build", json={}, headers=ADMIN)
    assert no_source.status_code == 422
    assert "registered, not built here" in no_source.json["detail"][0]["message"]

    assert client.get("/api/v1/images", headers=ADMIN).json["images"][0]["id"] == registered
    assert len(client.get("/api/v1/images", headers=ADMIN).json["images"]) == 1


def test_uploads_over_the_size_cap_are_refused(
    app: Flask, client: FlaskClient, migrated: Settings, our_tag: Callable[[str], str]
) -> None:
    migrated.image_upload_max_mb = 1
    big = {"Dockerfile": b"FROM x\n", "blob.bin": bytes(range(256)) * 5000}  # 1.28 MB
    data = {"reference": our_tag("big"), "context": (tar_of(big), "big.tar")}
    response = client.post("/api/v1/images", data=data, headers=ADMIN,
                           content_type="multipart/form-data")
    assert response.status_code == 413
    assert "limited to 1 MB" in response.json["detail"]


def test_build_one_of_our_image_directories(
    client: FlaskClient, worker: WorkerDriver, our_tag: Callable[[str], str]
) -> None:
    """images/test through the images' own builder, tagged for the catalog as well."""
    require_image(TEST_IMAGE)  # its layers are cached, so this build is short
    reference = our_tag("from-dir")
    created = client.post("/api/v1/images", json={"reference": reference, "build_from": "test",
                                                   "for_notebooks": True}, headers=ADMIN)
    assert created.status_code == 201, created.json
    image_id = created.json["id"]
    worker.run_all(timeout=900)
    image = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert image["status"] == "ready", image["status_detail"]
    log = client.get(f"/api/v1/images/{image_id}/build-log", headers=ADMIN).json["text"]
    assert "context:" in log and f"tagged {reference}" in log
    contents = image["contents"]
    assert contents["python"].startswith("3.")
    assert contents["pip_packages"]["jupyterhub"].startswith("6.")
    assert "dockyard-data" in {name.lower().replace("_", "-") for name in contents["pip_packages"]}
    assert "python3" in contents["kernels"]
    assert image["build_source"] == "images/test"


def test_a_build_abandoned_by_a_stopped_worker_fails_and_only_one_worker_claims(
    app: Flask, migrated: Settings
) -> None:
    """No engine needed: the claim and the give-up are database work."""
    sessions = app.extensions["dockyard.sessions"]
    with sessions() as session:
        abandoned = Image(reference="team/abandoned:1", status=ImageStatus.BUILDING,
                          created_by="admin", build_context="images/test",
                          worker_heartbeat_at=utcnow() - timedelta(minutes=10))
        queued = Image(reference="team/queued:1", status=ImageStatus.BUILDING,
                       created_by="admin", build_context="images/nonexistent",
                       work_queued="build", work_queued_at=utcnow())
        session.add_all([abandoned, queued])
        session.commit()
        abandoned_id, queued_id = abandoned.id, queued.id

    class NoEngine:
        def buildable_directories(self) -> dict[str, str]:
            return {}

    writes = app.extensions["dockyard.write_sessions"]
    first, second = ImageWorkRunner(), ImageWorkRunner()
    assert first.tick(writes, migrated, NoEngine()) == [queued_id]  # type: ignore[arg-type]
    assert second.tick(writes, migrated, NoEngine()) == []  # type: ignore[arg-type]
    first.wait(30)
    with sessions() as session:
        gone = session.get(Image, abandoned_id)
        assert gone.status == ImageStatus.FAILED
        assert "worker building it stopped" in gone.status_detail
        # The claimed build ran and failed on its own terms (no such directory).
        claimed = session.get(Image, queued_id)
        assert claimed.status == ImageStatus.FAILED
        assert "not one of the image directories" in claimed.status_detail
        session.execute(update(Image).values(work_queued=None))
        session.commit()
