"""Escape attempts from a job container and from a notebook container, on the real
Docker engine: writing outside the home, becoming root, finding the Docker socket or the
engine's port, host directories, a fork bomb (held by the pids limit) and eating memory
beyond the limit (killed by the kernel, and reported as out of memory on the run).

Each attempt must fail safely: refused, contained, or killed, with Dockyard and the
engine going on as before."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from dockyard.models import ImageStatus, RunState
from dockyard.settings import Settings
from dockyard.web import create_app
from dockyard.worker.loop import Worker
from spawner.jobs.base import LABEL_NAMESPACE
from tests.conftest import USERS, TokenTable, auth
from tests.jobs.conftest import RunsDb, add_images, log_file
from tests.security.probe import EAT_MEMORY, FORK_BOMB, PROBE
from tests.support.requirements import require_image

pytestmark = pytest.mark.docker

TEST_IMAGE = "dockyard/test:latest"
ALICE = auth("tok-alice")
UNREACHABLE_URL = "http://127.0.0.1:9/services/dockyard/"
FINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT)
JOB_PIDS = 64


def findings(text: str, marker: str = "PROBE ") -> dict[str, Any]:
    line = next((line for line in text.splitlines() if line.startswith(marker)), None)
    assert line is not None, f"the probe printed nothing:\n{text[-2000:]}"
    return json.loads(line[len(marker):])


def assert_nothing_escaped(found: dict[str, Any]) -> None:
    assert found["uid"] != 0 and found["gid"] != 0
    assert int(found["cap_eff"], 16) == 0, "every capability is dropped"
    assert found["no_new_privs"] == "1" and found["seccomp"] == "2"
    assert found["written_outside"] == []
    assert found["setuid0"] is False and found["su_root"] is False
    assert found["mount_refused"] is True
    assert found["raw_socket"] is False and found["chown_root"] is False
    assert found["docker_socket"] == []
    assert found["gateway_ports_answering"] == []


@dataclass
class JobHarness:
    settings: Settings
    client: FlaskClient
    db: RunsDb
    namespace: str

    def submit(self, command: list[str], **fields: Any) -> int:
        body = {"image": TEST_IMAGE, "memory_mb": 256, "cpu": 0.5, "command": command, **fields}
        response = self.client.post("/api/v1/runs", json=body, headers=ALICE)
        assert response.status_code == 201, response.json
        return int(response.json["id"])

    def wait(self, run_id: int, timeout: float = 90) -> Any:
        return self.db.wait_for(run_id, *FINAL, timeout=timeout)


@pytest.fixture
def jobs(migrated: Settings) -> Iterator[JobHarness]:
    require_image(TEST_IMAGE)
    add_images(migrated.db_url, (TEST_IMAGE, True, ImageStatus.READY))
    namespace = "sec" + secrets.token_hex(5)
    settings = migrated.model_copy(update=dict(
        job_backend="docker", job_namespace=namespace, worker_name="security-worker",
        worker_poll_seconds=0.2, job_dockyard_url=UNREACHABLE_URL, job_pids_limit=JOB_PIDS,
    ))
    app: Flask = create_app(settings, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = True
    worker = Worker(settings)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    db = RunsDb(settings.db_url)
    try:
        yield JobHarness(settings, app.test_client(), db, namespace)
    finally:
        stop.set()
        worker.wake.set()
        thread.join(timeout=30)
        worker.close()
        db.close()
        engine = docker.from_env(timeout=60)
        for container in engine.containers.list(
                all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"}):
            container.remove(force=True)
        engine.close()
        app.extensions["dockyard.engine"].dispose()


@pytest.mark.timeout(300)
def test_a_job_cannot_get_out(jobs: JobHarness) -> None:
    probe = jobs.submit(["python3", "-c", PROBE])
    fork_bomb = jobs.submit(["python3", "-c", FORK_BOMB])
    # 64 MB of limit, 512 MB of appetite.
    glutton = jobs.submit(["python3", "-c", EAT_MEMORY, "32"], memory_mb=64)

    run = jobs.wait(probe)
    assert run.status == RunState.SUCCEEDED, (run.status, run.reason)
    found = findings(log_file(jobs.settings, probe).read_text())
    assert_nothing_escaped(found)
    # Of the host, a job sees the data catalog's local root (a configured volume), no more.
    assert [(m["point"], m["source"]) for m in found["host_mounts"]] in (
        [], [("/dockyard/data", str(jobs.settings.home / "data"))]), found["host_mounts"]

    run = jobs.wait(fork_bomb)
    assert run.status == RunState.SUCCEEDED, (run.status, run.reason)
    forks, refused = _forks(log_file(jobs.settings, fork_bomb).read_text())
    assert refused == "EAGAIN" and forks < JOB_PIDS, (forks, refused)

    run = jobs.wait(glutton)
    assert run.status == RunState.FAILED and run.exit_code == 137, (run.status, run.exit_code)
    assert "out of memory" in run.reason and "64 MB" in run.reason, run.reason
    assert "SURVIVED" not in log_file(jobs.settings, glutton).read_text()
    # ... and the run's page says so.
    page = jobs.client.get(f"/jobs/runs/{glutton}", headers=ALICE).get_data(as_text=True)
    assert "out of memory" in page and "137" in page
    api = jobs.client.get(f"/api/v1/runs/{glutton}", headers=ALICE).json
    assert api["exit_code"] == 137 and "out of memory" in api["reason"]


def _forks(text: str) -> tuple[int, str]:
    line = next(line for line in text.splitlines() if line.startswith("FORKS "))
    _, count, refused = line.split()
    return int(count), refused


# -- notebooks ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def notebooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.notebooks.conftest import running_notebook_hub

    with running_notebook_hub(tmp_path_factory.mktemp("security-notebooks"),
                              "dysec" + secrets.token_hex(3),
                              DOCKYARD_NAMED_SERVERS="0") as notebooks:
        yield notebooks


@pytest.mark.hub
@pytest.mark.timeout(400)
def test_a_notebook_cannot_get_out(notebooks: Any) -> None:
    notebooks.start("mallory")  # the small profile: 512 MB, 256 processes
    container = notebooks.container("mallory")
    ports = [notebooks.hub.env["DOCKYARD_PROXY_API_PORT"]]
    exit_code, output = container.exec_run(
        ["python3", "-c", PROBE, "/shared/dockyard-probe"],
        environment={"PROBE_PORTS": ",".join(ports)})
    assert exit_code == 0, output
    found = findings(output.decode())
    assert_nothing_escaped(found)
    assert "written_extra" not in found, "the team's /shared is read-only"
    # The configured volumes, and nothing else of the host.
    points = {m["point"] for m in found["host_mounts"]}
    assert points <= {"/home/jovyan", "/shared", "/dockyard/data"}, found["host_mounts"]
    assert notebooks.run_in(container, "touch", "/home/jovyan/mine")[0] == 0

    code, output = container.exec_run(["python3", "-c", FORK_BOMB])
    forks, refused = _forks(output.decode())
    assert refused == "EAGAIN" and forks < 256, (forks, refused)

    code, output = container.exec_run(["python3", "-c", EAT_MEMORY, "64"])  # 1 GB
    assert code == 137 and b"SURVIVED" not in output, (code, output[-500:])
    # The server itself goes on: the kernel took the process that ate the memory.
    token = notebooks.user("mallory")
    deadline = time.monotonic() + 60
    while True:
        status = requests.get(f"{notebooks.hub.url}/user/mallory/api/status",
                              headers={"Authorization": f"token {token}"}, timeout=30)
        if status.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status.status_code == 200, status.text
    container.reload()
    assert container.status == "running"
    notebooks.stop("mallory")

