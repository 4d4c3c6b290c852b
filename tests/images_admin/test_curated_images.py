"""Dockyard's curated image is in the catalog from the first start: registered as
``system``, once per reference (never again after an admin deleted or retired it), safely
when several processes start at once, and inspected like any registered image. When the
engine loses it, every page and run says so plainly."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from dockyard.db import make_engine, make_session_factory, write_sessions
from dockyard.images.curated import (
    CHECKED,
    FOUND,
    CuratedImage,
    curated_images,
    curated_images_wanted,
    seed_at_start,
    seed_curated_images,
)
from dockyard.migrate import upgrade
from dockyard.models import CuratedImageSeed, Image, ImageEvent, RunState
from dockyard.settings import Settings
from spawner.images.engine import DockerImageEngine
from tests.images_admin.conftest import ADMIN, ALICE, WorkerDriver, patch, register
from tests.jobs.conftest import (
    UNREACHABLE_URL,
    RunsDb,
    ThreadedWorker,
    eventually,
    unique_namespace,
)
from tests.support.hubproc import RunningHub, start_hub
from tests.support.postgres import fresh_database
from tests.support.requirements import require_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def seed(app: Flask) -> Callable[[str], list[str]]:
    """One start's seeding with ``reference`` as the curated image."""
    sessions = write_sessions(app.extensions["dockyard.engine"])
    engine = DockerImageEngine(timeout=30)
    return lambda reference: seed_curated_images(
        sessions, engine, [CuratedImage(reference, "Curated for the tests")])


@pytest.fixture
def on_engine(docker_engine: Any, shell_image: str,
              our_tag: Callable[[str], str]) -> Callable[[str], str]:
    """A new reference for the shell image, as if `make images` had built it."""

    def make(name: str) -> str:
        reference = our_tag(name)
        docker_engine.images.get(shell_image).tag(*reference.rsplit(":", 1))
        return reference

    return make


def _catalog(client: FlaskClient) -> dict[str, dict[str, Any]]:
    images = client.get("/api/v1/images", headers=ADMIN).json["images"]
    return {image["reference"]: image for image in images}


def _history(client: FlaskClient, image_id: int) -> list[tuple[str, str, str]]:
    events = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json["events"]
    return sorted((e["actor"], e["action"], e["detail"]) for e in events)


# -- which images, and when ------------------------------------------------------------------
def test_the_curated_image_is_dockyards_notebook_image(settings: Settings) -> None:
    def curated(notebook_image: str) -> list[str]:
        changed = settings.model_copy(update={"notebook_image": notebook_image})
        return [image.reference for image in curated_images(changed)]

    assert curated("dockyard/notebook:latest") == ["dockyard/notebook:latest"]
    assert curated("dockyard/notebook") == ["dockyard/notebook:latest"]
    assert curated("dockyard/notebook:2024.06") == ["dockyard/notebook:2024.06"]
    # An installation that set a notebook image of its own keeps its catalog to itself.
    assert curated("team/notebook:1") == []
    assert curated("dockyard/test:latest") == []
    # Nothing uses an image when notebooks and every job pool are local processes.
    assert not curated_images_wanted("local", ["local"])
    assert curated_images_wanted("local", ["local", "docker"])
    assert curated_images_wanted("docker", ["local"])


def test_without_a_docker_engine_nothing_is_seeded_and_nothing_fails(
    migrated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    db_engine = make_engine(migrated.db_url)
    try:
        assert seed_at_start(write_sessions(db_engine), migrated, ["docker"]) == []
        with make_session_factory(db_engine)() as session:
            assert session.scalar(select(func.count()).select_from(CuratedImageSeed)) == 0
            assert session.scalar(select(func.count()).select_from(Image)) == 0
    finally:
        db_engine.dispose()


# -- seeding ---------------------------------------------------------------------------------
@pytest.mark.docker
def test_registered_once_by_system_as_the_default_then_inspected_and_used_by_jobs(
    client: FlaskClient, seed: Callable[[str], list[str]], on_engine: Callable[[str], str],
    worker: WorkerDriver,
) -> None:
    reference = on_engine("curated")
    assert seed(reference) == [reference]
    assert seed(reference) == []  # the next start: nothing new
    image = _catalog(client)[reference]
    assert (image["status"], image["created_by"]) == ("registered", "system")
    assert image["for_notebooks"] and image["for_jobs"]
    assert image["default_for_notebooks"] and image["default_for_jobs"]
    assert _history(client, image["id"]) == sorted([
        ("system", "registered", f"{reference} ({image['digest']})"),
        ("system", "enabled", "for notebooks and jobs"),
        ("system", "default set", "for notebooks"),
        ("system", "default set", "for jobs"),
    ])

    worker.run_all()  # inspected as any registered image is
    inspected = _catalog(client)[reference]
    assert inspected["status"] == "ready" and inspected["inspected_at"] is not None
    assert ("dockyard-worker", "inspected") in [a[:2] for a in _history(client, image["id"])]

    # An ad-hoc run that names no image gets the jobs default.
    run = client.post("/api/v1/runs", json={"command": "echo hi"}, headers=ALICE)
    assert run.status_code == 201, run.json
    assert run.json["image"] == reference
    form = client.get("/jobs/new", headers=ALICE).get_data(as_text=True)
    assert f"— the default: {reference} —" in form


@pytest.mark.docker
def test_an_image_an_admin_deleted_or_retired_is_never_added_again(
    client: FlaskClient, seed: Callable[[str], list[str]], on_engine: Callable[[str], str],
) -> None:
    deleted, retired = on_engine("deleted"), on_engine("retired")
    assert seed(deleted) == [deleted]
    deleted_id = _catalog(client)[deleted]["id"]
    assert client.delete(f"/api/v1/images/{deleted_id}", headers=ADMIN).status_code == 204
    assert seed(deleted) == []
    assert deleted not in _catalog(client)

    assert seed(retired) == [retired]
    retired_id = _catalog(client)[retired]["id"]
    assert patch(client, retired_id, status="retired").status_code == 200
    history = _history(client, retired_id)
    assert seed(retired) == []
    after = _catalog(client)[retired]
    assert after["status"] == "retired" and not after["default_for_jobs"]
    assert _history(client, retired_id) == history


@pytest.mark.docker
def test_an_admin_who_registered_it_first_keeps_their_settings(
    app: Flask, client: FlaskClient, seed: Callable[[str], list[str]],
    on_engine: Callable[[str], str],
) -> None:
    reference = on_engine("admins")
    created = register(client, reference, for_jobs=True, description="Ours")
    assert created.status_code == 201, created.json
    assert seed(reference) == []
    image = _catalog(client)[reference]
    assert (image["created_by"], image["description"]) == ("admin", "Ours")
    assert not image["for_notebooks"] and not image["default_for_jobs"]
    with make_session_factory(app.extensions["dockyard.engine"])() as session:
        record = session.get(CuratedImageSeed, reference)
        assert record is not None and record.outcome == FOUND
    # Deleted later, it stays deleted.
    assert client.delete(f"/api/v1/images/{image['id']}", headers=ADMIN).status_code == 204
    assert seed(reference) == []
    assert reference not in _catalog(client)


@pytest.mark.docker
def test_an_image_not_built_yet_is_registered_at_the_start_after_its_build(
    client: FlaskClient, seed: Callable[[str], list[str]], docker_engine: Any,
    shell_image: str, our_tag: Callable[[str], str],
) -> None:
    reference = our_tag("later")
    assert seed(reference) == []
    assert _catalog(client) == {}
    page = client.get("/images/", headers=ADMIN).get_data(as_text=True)
    assert 'id="no-images"' in page and "make images" in page  # says how to get one
    docker_engine.images.get(shell_image).tag(*reference.rsplit(":", 1))
    assert seed(reference) == [reference]


@pytest.mark.docker
def test_a_default_the_admin_chose_stays_the_default(
    client: FlaskClient, seed: Callable[[str], list[str]], on_engine: Callable[[str], str],
) -> None:
    chosen, curated = on_engine("chosen"), on_engine("curated")
    image_id = register(client, chosen).json["id"]
    assert patch(client, image_id, default_for_jobs=True).status_code == 200
    assert seed(curated) == [curated]
    catalog = _catalog(client)
    assert catalog[chosen]["default_for_jobs"] and not catalog[curated]["default_for_jobs"]
    assert catalog[curated]["for_jobs"] and catalog[curated]["default_for_notebooks"]


# -- several processes starting at once -------------------------------------------------------
SEED_PROCESS = """
import pathlib, sys, time
from dockyard.db import make_engine, write_sessions
from dockyard.images.curated import CuratedImage, seed_curated_images
from spawner.images.engine import DockerImageEngine
url, reference, ready, go = sys.argv[1:5]
sessions = write_sessions(make_engine(url))
engine = DockerImageEngine(timeout=60)
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.002)
print(seed_curated_images(sessions, engine, [CuratedImage(reference, "at once")]))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield request.getfixturevalue("migrated").db_url
        return
    with fresh_database("dockyard_seed") as url:
        upgrade(url)
        yield url


@pytest.mark.docker
@pytest.mark.postgres
def test_processes_starting_at_once_register_it_once(
    database_url: str, on_engine: Callable[[str], str], tmp_path: Path
) -> None:
    reference = on_engine("at-once")
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(4)]
    processes = [
        subprocess.Popen([sys.executable, "-c", SEED_PROCESS, database_url, reference,
                          str(marker), str(go)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for marker in ready
    ]
    try:
        # All of them imported and connected, then all of them seed at the same moment.
        eventually(lambda: all(marker.exists() for marker in ready)
                   or any(process.poll() is not None for process in processes), timeout=120)
        go.touch()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [process.returncode for process in processes] == [0] * 4, outputs
    printed = [out.strip() for out, _ in outputs]
    assert sorted(printed, key=len) == ["[]", "[]", "[]", f"[{reference!r}]"], outputs

    db_engine = make_engine(database_url)
    try:
        with make_session_factory(db_engine)() as session:
            images = list(session.scalars(select(Image)))
            assert [(i.reference, i.default_for_notebooks, i.default_for_jobs)
                    for i in images] == [(reference, True, True)]
            actions = sorted(session.scalars(select(ImageEvent.action)))
            assert actions == ["default set", "default set", "enabled", "registered"]
            assert session.scalar(select(func.count()).select_from(CuratedImageSeed)) == 1
    finally:
        db_engine.dispose()


# -- the engine lost it ----------------------------------------------------------------------
@pytest.mark.docker
def test_a_curated_image_the_engine_lost_is_explained_never_a_server_error(
    app: Flask, client: FlaskClient, seed: Callable[[str], list[str]],
    on_engine: Callable[[str], str], worker: WorkerDriver, docker_engine: Any,
    migrated: Settings,
) -> None:
    reference = on_engine("lost")
    assert seed(reference) == [reference]
    worker.run_all()
    image_id = _catalog(client)[reference]["id"]
    docker_engine.images.remove(reference)  # e.g. `docker image prune -a` on the host

    for path, headers in (("/images/", ADMIN), (f"/images/{image_id}", ADMIN),
                          ("/images/", ALICE), ("/jobs/new", ALICE)):
        page = client.get(path, headers=headers)
        assert page.status_code == 200, (path, page.status_code)
        assert reference in page.get_data(as_text=True)
    assert seed(reference) == []  # a restart neither fails nor adds it again

    launched = client.post("/jobs/new", headers=ALICE, data={"command": "echo never"})
    assert launched.status_code == 303, launched.get_data(as_text=True)[:500]
    run_id = int(launched.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    settings = migrated.model_copy(update={
        "job_backend": "docker", "job_namespace": unique_namespace("jtcur"),
        "job_dockyard_url": UNREACHABLE_URL, "worker_poll_seconds": 0.1})
    runs = RunsDb(settings.db_url)
    try:
        with ThreadedWorker(settings, name="curated-worker"):
            run = runs.wait_for(run_id, RunState.FAILED, RunState.SUCCEEDED, timeout=60)
    finally:
        runs.close()
    assert run.status == RunState.FAILED
    assert f"image {reference} is not on the Docker engine" in run.reason
    page = client.get(f"/jobs/runs/{run_id}", headers=ALICE)
    assert page.status_code == 200
    assert "is not on the Docker engine" in page.get_data(as_text=True)


# -- a fresh `dockyard up` with Docker -----------------------------------------------------------
CURATED = "dockyard/notebook:latest"


def _until(what: str, check: Callable[[], Any], hub: RunningHub, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}:\n{hub.log_tail()}"
        time.sleep(0.5)
    return value


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.image
def test_a_fresh_install_offers_the_curated_image_and_a_job_runs_in_it(tmp_path: Path) -> None:
    require_image(CURATED)
    hub = start_hub(tmp_path / "home", DOCKYARD_JOB_BACKEND="docker",
                    DOCKYARD_JOB_NAMESPACE=unique_namespace("jtfresh"))
    try:
        headers = {"Authorization": f"token {hub.hub_token(hub.login(), hub.admin)}"}

        def curated() -> dict[str, Any] | None:
            images = requests.get(hub.service("api/v1/images"), headers=headers,
                                  timeout=10).json()["images"]
            return next((image for image in images if image["reference"] == CURATED), None)

        image = _until("the worker registers the curated image", curated, hub, 60)
        assert image["created_by"] == "system"
        assert image["default_for_notebooks"] and image["default_for_jobs"]
        ready = _until("the worker inspects it",
                       lambda: (found := curated()) and found["status"] == "ready" and found,
                       hub, 300)
        assert ready["versions"]["python"] and ready["versions"]["spark"]

        submitted = requests.post(hub.service("api/v1/runs"), headers=headers, timeout=10, json={
            "command": ["python", "-c", "import dockyard_data; print('curated image ok')"]})
        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["image"] == CURATED
        run_url = hub.service(f"api/v1/runs/{submitted.json()['id']}")
        run = _until("the run ends", lambda: (found := requests.get(
            run_url, headers=headers, timeout=10).json())["status"] in (
                "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT") and found, hub, 180)
        logs = requests.get(run_url + "/logs", headers=headers, timeout=10).json()["text"]
        assert run["status"] == "SUCCEEDED", (run, logs)
        assert "curated image ok" in logs

        # Deleted by the admin, it is not back after a restart.
        deleted = requests.delete(hub.service(f"api/v1/images/{image['id']}"), headers=headers,
                                  timeout=30)
        assert deleted.status_code == 204, deleted.text
        hub.restart()
        # up.log holds both starts: the second pass is over once it has said so too.
        _until("the restarted worker's seeding pass ends",
               lambda: hub.log_path.read_text().count(CHECKED) == 2, hub, 120)
        headers = {"Authorization": f"token {hub.hub_token(hub.login(), hub.admin)}"}
        jobs_form = hub.login().get(hub.service("jobs/new"), timeout=30)
        assert jobs_form.status_code == 200 and "make images" in jobs_form.text
        assert curated() is None
        assert "not registered" not in hub.log_path.read_text()  # seeding had no trouble
    finally:
        hub.stop()
