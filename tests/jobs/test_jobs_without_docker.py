"""Jobs on a machine without a Docker engine: runs are local processes in Dockyard's own
Python environment and need no image. The form explains the image field instead of
offering an empty list, the API accepts a run without one, and it runs, logs and ends
like any other. With a Docker backend an image is still needed: the one given, else the
jobs default, else a message that says how to get one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import update

from dockyard.db import make_engine, make_session_factory
from dockyard.models import Image, ImageStatus, Run, RunState
from dockyard.settings import Settings
from dockyard.settings.job_pools import JobPoolConfig
from tests.conftest import auth, client_for
from tests.jobs.conftest import (
    SHELL_IMAGE,
    RunsDb,
    ThreadedWorker,
    add_images,
    log_file,
    unique_namespace,
)
from tests.support.hubproc import RunningHub, hub_environment

ALICE, ADMIN = auth("tok-alice"), auth("tok-admin")
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
# What a newcomer's first job might do: Dockyard's Python, with the data client importable.
PYTHON_JOB = ("python -c \"import os, sys, dockyard_data; print('prefix', sys.prefix); "
              "print('run', os.environ['DOCKYARD_RUN_ID'])\"")


@pytest.fixture
def local(migrated: Settings) -> Settings:
    """What `dockyard up` hands the web app and the worker when no engine answers."""
    return migrated.model_copy(update={
        "job_backend": "local", "job_namespace": unique_namespace("jtnd"),
        "worker_poll_seconds": 0.1})


@pytest.fixture
def docker(migrated: Settings) -> Settings:
    return migrated.model_copy(update={"job_backend": "docker"})


@pytest.fixture
def local_worker(local: Settings) -> Iterator[RunsDb]:
    db = RunsDb(local.db_url)
    try:
        with ThreadedWorker(local, name="no-docker-worker"):
            yield db
    finally:
        db.close()


def problems(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.json
    return {item["field"]: item["message"] for item in response.json["detail"]}


def make_default_for_jobs(settings: Settings, reference: str) -> None:
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            session.execute(update(Image).where(Image.reference == reference)
                            .values(default_for_jobs=True))
            session.commit()
    finally:
        engine.dispose()


# -- the API -------------------------------------------------------------------------------
def test_a_run_without_an_image_runs_logs_and_ends_as_a_local_process(
    local: Settings, local_worker: RunsDb
) -> None:
    api = client_for(local)
    response = api.post("/api/v1/runs", json={"command": PYTHON_JOB}, headers=ALICE)
    assert response.status_code == 201, response.json
    run_id, image = response.json["id"], response.json["image"]
    assert image is None

    run = local_worker.wait_for(run_id, RunState.SUCCEEDED, RunState.FAILED)
    assert (run.status, run.exit_code, run.backend) == (RunState.SUCCEEDED, 0, "local")
    # Dockyard's own environment, even though the worker's PATH does not name it.
    assert log_file(local, run_id).read_text().splitlines() == [
        f"prefix {sys.prefix}", f"run {run_id}"]
    logs = api.get(f"/api/v1/runs/{run_id}/logs", headers=ALICE).json
    assert logs["complete"] and f"run {run_id}" in logs["text"]
    events = api.get(f"/api/v1/runs/{run_id}/events", headers=ALICE).json["events"]
    assert [e["to_status"] for e in events if e["from_status"] != e["to_status"]] == \
        ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED"]

    # Retried like any other, still without an image.
    retried = api.post(f"/api/v1/runs/{run_id}/retry", headers=ALICE)
    assert retried.status_code == 201 and retried.json["image"] is None
    again = local_worker.wait_for(retried.json["id"], RunState.SUCCEEDED, RunState.FAILED)
    assert again.status == RunState.SUCCEEDED


def test_a_definition_without_an_image_in_local_mode(local: Settings) -> None:
    api = client_for(local)
    created = api.post("/api/v1/definitions", headers=ALICE,
                       json={"name": "nightly", "command": "echo nightly"})
    assert created.status_code == 201, created.json
    assert created.json["image"] is None
    run = api.post("/api/v1/runs", headers=ALICE, json={"definition_id": created.json["id"]})
    assert run.status_code == 201 and run.json["image"] is None
    # An image that is named must still be one the catalog allows.
    named = api.post("/api/v1/runs", headers=ALICE,
                     json={"image": "team/unknown:1", "command": "true"})
    assert "not in Dockyard's catalog" in problems(named)["image"]


def test_with_docker_an_image_is_needed_the_default_serves_when_none_is_given(
    docker: Settings,
) -> None:
    api = client_for(docker)
    # An empty catalog: the message says how to get an image.
    message = problems(api.post("/api/v1/runs", json={"command": "true"}, headers=ALICE))
    assert "make images" in message["image"]
    definition = api.post("/api/v1/definitions", headers=ALICE,
                          json={"name": "no-image", "command": "true"})
    assert "make images" in problems(definition)["image"]

    # Images but no default: choose one.
    add_images(docker.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
    message = problems(api.post("/api/v1/runs", json={"command": "true"}, headers=ALICE))
    assert message["image"] == "choose an image (or a definition)"

    # A default: an ad-hoc run (and a definition) without an image gets it.
    make_default_for_jobs(docker, SHELL_IMAGE)
    run = api.post("/api/v1/runs", json={"command": "true"}, headers=ALICE)
    assert run.status_code == 201 and run.json["image"] == SHELL_IMAGE
    saved = api.post("/api/v1/definitions", headers=ALICE,
                     json={"name": "defaulted", "command": "true"})
    assert saved.status_code == 201 and saved.json["image"] == SHELL_IMAGE


def test_only_runs_in_a_local_pool_may_leave_the_image_out(docker: Settings) -> None:
    mixed = docker.model_copy(update={"job_pools": {"laptop": JobPoolConfig(backend="local")}})
    api = client_for(mixed)
    local_run = api.post("/api/v1/runs", headers=ALICE,
                         json={"command": "true", "pool": "laptop"})
    assert local_run.status_code == 201 and local_run.json["image"] is None
    assert "image" in problems(api.post("/api/v1/runs", headers=ALICE,
                                        json={"command": "true"}))
    form = api.get("/jobs/new", headers=ALICE).get_data(as_text=True)
    assert 'id="image-missing-note"' in form  # no image for the docker pool yet
    add_images(docker.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
    form = api.get("/jobs/new", headers=ALICE).get_data(as_text=True)
    assert "— none in pool laptop —" in form


def test_a_local_run_retried_once_docker_is_there_asks_for_an_image(
    local: Settings, docker: Settings
) -> None:
    run_id = client_for(local).post("/api/v1/runs", json={"command": "true"},
                                    headers=ALICE).json["id"]
    engine = make_engine(local.db_url)
    try:
        with make_session_factory(engine)() as session:
            session.execute(update(Run).where(Run.id == run_id).values(status=RunState.FAILED))
            session.commit()
    finally:
        engine.dispose()
    retried = client_for(docker).post(f"/api/v1/runs/{run_id}/retry", headers=ALICE)
    assert "launch it again with an image" in problems(retried)["image"]


# -- the pages -------------------------------------------------------------------------------
def test_the_forms_explain_the_image_field_without_docker(local: Settings) -> None:
    api = client_for(local)
    for path in ("/jobs/new", "/jobs/definitions/new"):
        form = api.get(path, headers=ALICE).get_data(as_text=True)
        assert 'id="image-local-note"' in form, path
        assert "Dockyard's own Python environment" in form
        assert '<select class="form-select" id="image"' not in form

    launched = api.post("/jobs/new", headers=ALICE, data={"command": "echo from-the-form"})
    assert launched.status_code == 303, launched.get_data(as_text=True)[:500]
    run_page = api.get(launched.headers["Location"], headers=ALICE).get_data(as_text=True)
    assert "none (local process)" in run_page
    runs_page = api.get("/jobs/", headers=ALICE).get_data(as_text=True)
    assert "none (local process)" in runs_page

    # With images in the catalog anyway, the field is there and may stay empty.
    add_images(local.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
    form = api.get("/jobs/new", headers=ALICE).get_data(as_text=True)
    assert "— none: Dockyard's own Python environment —" in form
    assert f'<option value="{SHELL_IMAGE}"' in form


def test_with_docker_and_no_image_the_pages_say_how_to_build_one(docker: Settings) -> None:
    api = client_for(docker)
    user_form = api.get("/jobs/new", headers=ALICE).get_data(as_text=True)
    assert 'id="image-missing-note"' in user_form
    assert "make images" in user_form and "dockyard/notebook:latest" in user_form
    assert "ask an admin" in user_form
    admin_form = api.get("/jobs/new", headers=ADMIN).get_data(as_text=True)
    assert 'href="/images/"' in admin_form
    images = api.get("/images/", headers=ADMIN).get_data(as_text=True)
    assert 'id="no-images"' in images and "make images" in images
    # A notebook image of the installation's own: no promise that `make images` builds it.
    own = client_for(docker.model_copy(update={"notebook_image": "team/nb:1"}))
    assert "make images" not in own.get("/jobs/new", headers=ALICE).get_data(as_text=True)
    launched = api.post("/jobs/new", headers=ALICE, data={"command": "true"})
    assert launched.status_code == 422
    assert "make images" in launched.get_data(as_text=True)


# -- the real thing: `dockyard up` on a machine without Docker, in Chromium ------------------
@pytest.fixture(scope="module")
def hub_without_docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    home = tmp_path_factory.mktemp("no-docker")
    env = hub_environment(home, DOCKER_HOST=f"unix://{home}/no-docker.sock")
    env.pop("DOCKYARD_SPAWNER")  # auto, as `make up` leaves them
    env.pop("DOCKYARD_JOB_BACKEND")
    hub = RunningHub(home=home, env=env, url=f"http://127.0.0.1:{env['DOCKYARD_PORT']}")
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def wait_final(hub: RunningHub, headers: dict[str, str], run_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        run = requests.get(hub.service(f"api/v1/runs/{run_id}"), headers=headers,
                           timeout=10).json()
        if run["status"] in FINAL or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


@pytest.mark.hub
@pytest.mark.browser
def test_a_newcomer_launches_a_job_from_the_form_without_docker(
    hub_without_docker: RunningHub, page: Any
) -> None:
    hub = hub_without_docker
    assert "Jobs: local processes" in Path(hub.log_path).read_text()
    page.goto(hub.url + "/hub/login?next=%2Fhub%2Fhome")  # no notebook server
    page.fill("#username_input", hub.admin)
    page.fill("#password_input", hub.admin_password)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)
    page.goto(hub.service("jobs/"))
    page.wait_for_url("**/services/dockyard/jobs/")
    page.click("#nav-launch")
    page.wait_for_url("**/jobs/new")

    assert page.locator("#image-local-note").is_visible()
    assert page.locator("select#image").count() == 0
    page.fill("#command", PYTHON_JOB)
    page.click("#launch-submit")
    page.wait_for_url("**/jobs/runs/*")
    run_id = page.url.rstrip("/").rsplit("/", 1)[1]
    page.locator('#run-status [data-status="SUCCEEDED"]').wait_for(timeout=60000)
    page.locator("#run-log", has_text=f"run {run_id}").wait_for(timeout=30000)
    lines = page.locator("#run-log").inner_text().splitlines()
    assert lines[1] == f"run {run_id}" and lines[0].startswith("prefix /")
    assert page.locator("#run-exit-code").inner_text() == "0"
    assert "none (local process)" in page.locator("#run-panel").inner_text()

    page.goto(hub.service("images/"))
    empty = page.locator("#no-images").inner_text()
    assert "make images" in empty and "need no image" in empty


@pytest.mark.hub
def test_the_api_runs_a_job_without_an_image_without_docker(
    hub_without_docker: RunningHub,
) -> None:
    hub = hub_without_docker
    session = hub.login()
    headers = {"Authorization": f"token {hub.hub_token(session, hub.admin)}"}
    registered = requests.post(hub.service("api/v1/images"), headers=headers, timeout=30,
                               json={"reference": "dockyard/notebook:latest"})
    assert registered.status_code == 503 and registered.json()["error"] == "No Docker engine"
    assert "need no image" in registered.json()["detail"]
    pools = requests.get(hub.service("api/v1/pools"), headers=headers, timeout=10).json()
    assert [(p["name"], p["backend"]) for p in pools["pools"]] == [("default", "local")]
    submitted = requests.post(hub.service("api/v1/runs"), headers=headers, timeout=10,
                              json={"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["image"] is None
    run = wait_final(hub, headers, submitted.json()["id"])
    assert (run["status"], run["exit_code"]) == ("FAILED", 3), run
    logs = requests.get(hub.service(f"api/v1/runs/{run['id']}/logs"), headers=headers,
                        timeout=10).json()
    assert logs["complete"] and logs["text"].splitlines() == ["out", "err"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_URL=hub.service(""), DOCKYARD_TOKEN=headers["Authorization"].split()[1])
    followed = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "jobs", "submit", "--follow", "--", "python", "-c",
         "print('from the cli')"], env=env, capture_output=True, text=True, timeout=120)
    assert followed.returncode == 0, followed.stderr
    assert "queued (no image: a local process)" in followed.stdout
    assert "from the cli" in followed.stdout
