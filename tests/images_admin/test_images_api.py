"""The image catalog through its API on a real Docker engine: register, inspect, enable,
defaults, retire, delete (refused while used), the audit trail, and that the job form and
the notebook spawner's catalog see each change at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from dockyard.images.catalog import ImageNotAllowed, resolve_image, usable_images
from dockyard.models import JobDefinition, Run, RunState
from dockyard.settings import Settings
from hub.notebook_images import NotebookImages
from tests.images_admin.conftest import ADMIN, ALICE, WorkerDriver, patch, register

pytestmark = pytest.mark.docker


def _tagged(docker_engine: Any, source: str, reference: str) -> str:
    repository, _, tag = reference.rpartition(":")
    docker_engine.images.get(source).tag(repository, tag)
    return reference


def _job_form_images(client: FlaskClient, token: dict[str, str]) -> list[str]:
    html = client.get("/jobs/new", headers=token).get_data(as_text=True)
    if 'id="image-missing-note"' in html:  # no image to offer: the form says how to get one
        return []
    select_html = html.split('id="image"', 1)[1].split("</select>", 1)[0]
    return re.findall(r'<option value="([^"]+)"', select_html)


def _events(client: FlaskClient, image_id: int) -> list[tuple[str, str, str]]:
    body = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    return [(e["actor"], e["action"], e["detail"]) for e in body["events"]]


def test_register_an_existing_image_then_the_worker_inspects_it(
    client: FlaskClient, worker: WorkerDriver, shell_image: str
) -> None:
    response = register(client, shell_image, description="Debian with a shell")
    assert response.status_code == 201, response.json
    image = response.json
    assert image["reference"] == shell_image
    assert image["status"] == "registered"
    assert image["digest"].startswith("sha256:") and image["size_bytes"] > 1_000_000
    assert image["created_by"] == "admin"

    worker.run_all()
    inspected = client.get(f"/api/v1/images/{image['id']}", headers=ADMIN).json
    assert inspected["status"] == "ready"
    assert inspected["inspected_at"] is not None
    assert "Debian" in inspected["contents"]["os"]
    # A shell-only image: no runtimes, and no error for lacking them.
    assert inspected["versions"]["python"] is None
    assert inspected["contents"]["errors"] == []
    actions = [action for _, action, _ in _events(client, image["id"])]
    assert actions == ["inspected", "registered"]  # newest first


def test_register_refuses_missing_garbage_and_duplicate_references(
    client: FlaskClient, shell_image: str, our_tag: Callable[[str], str]
) -> None:
    missing = register(client, our_tag("never-built"))
    assert missing.status_code == 404
    assert missing.json["error"] == "Image not on the engine"
    assert "has no image" in missing.json["detail"] and "Build it here" in missing.json["detail"]

    garbage = register(client, "Not An Image!")
    assert garbage.status_code == 422
    assert garbage.json["detail"][0]["field"] == "reference"

    unknown_field = register(client, shell_image, colour="blue")
    assert unknown_field.status_code == 422
    assert unknown_field.json["detail"][0]["field"] == "colour"

    not_json = client.post("/api/v1/images", data="reference=x", headers=ADMIN,
                           content_type="text/plain")
    assert not_json.status_code == 415

    assert register(client, shell_image).status_code == 201
    again = register(client, shell_image.split(":")[0] + ":bookworm-slim")
    assert again.status_code == 409
    assert "image #" in again.json["detail"]
    listed = client.get("/api/v1/images", headers=ADMIN).json["images"]
    assert [i["reference"] for i in listed] == [shell_image]


def test_enable_set_defaults_and_profiles_with_an_audit_trail(
    client: FlaskClient, shell_image: str, docker_engine: Any, our_tag: Callable[[str], str],
    migrated: Settings,
) -> None:
    first = register(client, shell_image).json["id"]
    second_ref = _tagged(docker_engine, shell_image, our_tag("copy"))
    second = register(client, second_ref).json["id"]

    made_default = patch(client, first, default_for_notebooks=True, description="Base")
    assert made_default.status_code == 200, made_default.json
    assert made_default.json["default_for_notebooks"] is True
    assert made_default.json["for_notebooks"] is True  # a default is enabled

    moved = patch(client, second, default_for_notebooks=True)
    assert moved.json["default_for_notebooks"] is True
    first_now = client.get(f"/api/v1/images/{first}", headers=ADMIN).json
    assert first_now["default_for_notebooks"] is False
    assert first_now["for_notebooks"] is True
    assert ("admin", "default unset", f"for notebooks: now {second_ref}") in _events(
        client, first
    )

    disabled = patch(client, second, for_notebooks=False)
    assert disabled.json["default_for_notebooks"] is False

    contradiction = patch(client, first, default_for_jobs=True, for_jobs=False)
    assert contradiction.status_code == 422
    assert contradiction.json["detail"][0]["field"] == "default_for_jobs"

    profiles = [p.name for p in migrated.notebook_profiles]
    narrowed = patch(client, first, profiles=profiles[:1])
    assert narrowed.json["profiles"] == profiles[:1]
    unknown = patch(client, first, profiles=["galactic"])
    assert unknown.status_code == 422
    assert "unknown profile 'galactic'" in unknown.json["detail"][0]["message"]
    assert patch(client, first, for_jobs="maybe").status_code == 422
    assert patch(client, first, owner="eve").status_code == 422

    trail = _events(client, first)
    assert ("admin", "described", "Base") in trail
    assert ("admin", "enabled", "for notebooks") in trail
    assert ("admin", "default set", "for notebooks") in trail
    assert ("admin", "profiles", f"all → {profiles[0]}") in trail
    # Nothing about the refused changes was recorded.
    assert not any(action == "default set" and detail == "for jobs" for _, action, detail in trail)
    assert patch(client, 999_999, for_jobs=True).status_code == 404


def test_changes_reach_the_job_form_and_the_spawner_without_a_restart(
    client: FlaskClient, app: Flask, shell_image: str, migrated: Settings
) -> None:
    spawner_catalog = NotebookImages(migrated.db_url, fallback_image="fallback/notebook:1")
    image_id = register(client, shell_image).json["id"]
    assert shell_image not in _job_form_images(client, ALICE)
    assert [i.reference for i in spawner_catalog.offered()] == ["fallback/notebook:1"]

    patch(client, image_id, for_jobs=True, for_notebooks=True)
    with app.app_context():
        session = app.extensions["dockyard.sessions"]()
        assert [i.reference for i in usable_images(session, "jobs")] == [shell_image]
        assert [i.reference for i in usable_images(session, "notebooks")] == [shell_image]
        session.close()
    assert _job_form_images(client, ALICE) == [shell_image]
    assert [i.reference for i in spawner_catalog.offered()] == [shell_image]
    listed = client.get("/api/v1/images?use=jobs", headers=ALICE).json["images"]
    assert [i["reference"] for i in listed] == [shell_image]

    patch(client, image_id, for_jobs=False)
    assert _job_form_images(client, ALICE) == []
    assert [i.reference for i in spawner_catalog.offered()] == [shell_image]

    patch(client, image_id, status="retired")
    assert [i.reference for i in spawner_catalog.offered()] == ["fallback/notebook:1"]
    assert client.get("/api/v1/images", headers=ALICE).json["images"] == []


def test_retired_images_refuse_new_runs_while_existing_ones_continue(
    client: FlaskClient, app: Flask, shell_image: str
) -> None:
    image_id = register(client, shell_image, for_jobs=True).json["id"]
    sessions = app.extensions["dockyard.sessions"]
    with sessions() as session:
        running = Run(owner="alice", image=shell_image, command=["sleep", "60"], cpu=1,
                      memory_mb=256, status=RunState.RUNNING)
        session.add(running)
        session.commit()
        running_id = running.id

    retired = patch(client, image_id, status="retired")
    assert retired.json["status"] == "retired"
    assert "running ones continue" in retired.json["status_detail"]
    with sessions() as session:
        with pytest.raises(ImageNotAllowed, match="retired"):
            resolve_image(session, shell_image, "jobs")
        assert session.get(Run, running_id).status == RunState.RUNNING
    refused = client.post("/api/v1/runs", json={"image": shell_image, "command": ["true"]},
                          headers=ALICE)
    assert refused.status_code == 422
    assert any("retired" in p["message"] for p in refused.json["detail"])
    # Retiring is not deleting: the running run still counts as a user.
    usage = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json["usage"]
    assert usage["runs"] == [{"id": running_id, "owner": "alice", "status": "RUNNING"}]

    cannot_enable = patch(client, image_id, for_notebooks=True)
    assert cannot_enable.status_code == 409
    unretired = patch(client, image_id, status="active")
    assert unretired.json["status"] == "registered"
    with sessions() as session:
        assert resolve_image(session, shell_image, "jobs").id == image_id


def test_delete_is_refused_while_used_and_names_the_users(
    client: FlaskClient, app: Flask, shell_image: str
) -> None:
    image_id = register(client, shell_image, for_jobs=True).json["id"]
    sessions = app.extensions["dockyard.sessions"]
    with sessions() as session:
        session.add(JobDefinition(owner="bob", name="nightly", image=shell_image,
                                  command=["true"]))
        session.add(Run(owner="alice", image=shell_image, command=["true"], cpu=1,
                        memory_mb=256, status=RunState.QUEUED))
        session.add(Run(owner="carol", image=shell_image, command=["true"], cpu=1,
                        memory_mb=256, status=RunState.SUCCEEDED))
        session.commit()

    refused = client.delete(f"/api/v1/images/{image_id}", headers=ADMIN)
    assert refused.status_code == 409
    detail = refused.json["detail"]
    assert "nightly" in detail["message"] and "alice" in detail["message"]
    assert "carol" not in detail["message"]  # finished runs are history, not users
    assert detail["definitions"] == [{"id": 1, "owner": "bob", "name": "nightly"}]
    assert [r["owner"] for r in detail["runs"]] == ["alice"]
    assert detail["servers"] == []

    with sessions() as session:
        session.execute(JobDefinition.__table__.delete())
        for run in session.scalars(select(Run).where(Run.status == RunState.QUEUED)):
            run.status = RunState.CANCELLED
        session.commit()
    assert client.delete(f"/api/v1/images/{image_id}", headers=ADMIN).status_code == 204
    assert client.get(f"/api/v1/images/{image_id}", headers=ADMIN).status_code == 404
    assert client.delete(f"/api/v1/images/{image_id}", headers=ADMIN).status_code == 404


def test_users_see_enabled_images_only_and_may_compare_them(
    client: FlaskClient, worker: WorkerDriver, shell_image: str, docker_engine: Any,
    our_tag: Callable[[str], str],
) -> None:
    hidden = register(client, shell_image).json["id"]
    shown_ref = _tagged(docker_engine, shell_image, our_tag("shown"))
    shown = register(client, shown_ref, for_notebooks=True).json["id"]
    worker.run_all()

    listed = client.get("/api/v1/images", headers=ALICE).json["images"]
    assert [i["reference"] for i in listed] == [shown_ref]
    assert listed[0]["usage"] is None and listed[0]["events"] is None
    assert client.get(f"/api/v1/images/{hidden}", headers=ALICE).status_code == 404
    one = client.get(f"/api/v1/images/{shown}", headers=ALICE).json
    assert one["contents"]["os"] and one["events"] is None

    assert client.get(f"/api/v1/images/diff?from={hidden}&to={shown}",
                      headers=ALICE).status_code == 404
    same = client.get(f"/api/v1/images/diff?from={hidden}&to={shown}", headers=ADMIN)
    assert same.status_code == 200
    assert same.json["versions"] == [] and same.json["pip_packages"]["changed"] == []
    bad = client.get("/api/v1/images/diff?from=x&to=1", headers=ADMIN)
    assert bad.status_code == 422 and bad.json["detail"][0]["field"] == "from"
