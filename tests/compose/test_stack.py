"""The whole docker compose stack, for real: Debian's docker-compose 1.29 with the offline
override (PostgreSQL from Debian, moto for S3), on this machine's Docker engine.

One test walks what a platform engineer and a user do: bring the stack up, log in
through the hub, start a notebook, run a job that writes a table through the data client
to the S3 store, restart the hub, web and worker containers in the middle of it and find
nothing lost, then follow the README's "Backup and restore" steps onto an emptied
installation and find everything again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dockyard.production import ensure_build_ca, read_env_file, write_env_file
from tests.compose.conftest import OFFLINE, PRODUCTION, REPO, Compose, clean_environment
from tests.support.hubproc import RunningHub
from tests.support.ports import free_ports
from tests.support.requirements import require_image

pytestmark = pytest.mark.compose

IMAGE = "dockyard/test:latest"  # notebook servers and the job
NOTEBOOK_IMAGE = "dockyard/notebook:latest"  # a notebook job (papermill, the job runner)
USER, USER_PASSWORD = "ada", "ada-notebook-pass-2024"
NAMESPACE, TABLE = "e2e", "numbers"

# The README's "Backup and restore" steps, word for word; the README sets COMPOSE, PREFIX
# and B first (here: this test's project, prefix and a temporary directory).
BACKUP_STEPS = r"""
mkdir -p "$B/volumes"
cp .env "$B/env"
$COMPOSE exec -T db pg_dump -U dockyard -Fc dockyard > "$B/dockyard.dump"
$COMPOSE exec -T db pg_dump -U dockyard -Fc jupyterhub > "$B/jupyterhub.dump"
$COMPOSE run --rm --no-deps --user root -v "$B:/backup" worker \
    tar -C /srv/dockyard -czf /backup/dockyard-home.tar.gz .
for v in $(docker volume ls -q --filter label=dockyard.volume \
                               --filter "label=dockyard.prefix=$PREFIX"); do
    docker run --rm -v "$v:/v:ro" -v "$B/volumes:/backup" debian:bookworm-slim \
        tar -C /v -czf "/backup/$v.tar.gz" .
done
$COMPOSE run --rm --no-deps --user root -v "$B:/backup" worker \
    dockyard backup data-store /backup/data
"""

RESTORE_STEPS = r"""
cp "$B/env" .env && chmod 600 .env
$COMPOSE up -d db s3
$COMPOSE run --rm s3-init
until $COMPOSE exec -T db pg_isready -q -h 127.0.0.1 -U dockyard; do sleep 1; done
$COMPOSE exec -T db pg_restore -U dockyard -d dockyard --exit-on-error < "$B/dockyard.dump"
$COMPOSE exec -T db pg_restore -U dockyard -d jupyterhub --exit-on-error < "$B/jupyterhub.dump"
$COMPOSE run --rm --no-deps --user root -v "$B:/backup:ro" worker \
    tar -C /srv/dockyard -xzf /backup/dockyard-home.tar.gz
for f in "$B"/volumes/*.tar.gz; do
    [ -e "$f" ] || continue
    v=$(basename "$f" .tar.gz)
    docker volume create --label dockyard.volume=true --label "dockyard.prefix=$PREFIX" \
        "$v" >/dev/null
    docker run --rm -v "$v:/v" -v "$B/volumes:/backup:ro" debian:bookworm-slim \
        tar -C /v -xzf "/backup/$v.tar.gz"
done
$COMPOSE run --rm --no-deps --user root -v "$B:/backup:ro" worker \
    dockyard backup restore-data-store /backup/data
$COMPOSE up -d
"""

# Running while hub, web and worker restart; it waits for Dockyard to answer again before
# it writes (a job that calls Dockyard during a restart of the web service would fail).
JOB_SCRIPT = """
import os, time, urllib.request
import pandas as pd
from dockyard_data import store_dataframe
time.sleep(10)
for _ in range(300):
    try:
        urllib.request.urlopen(os.environ["DOCKYARD_URL"] + "health", timeout=5)
        break
    except OSError:
        time.sleep(1)
store_dataframe(pd.DataFrame({"n": [1, 2, 3]}), "e2e", "numbers", partition={"day": "20240101"})
print("stored 3 rows")
"""


class Stack:
    """The compose project under test, and HTTP helpers against its hub."""

    def __init__(self, directory: Path) -> None:
        suffix = secrets.token_hex(3)
        self.project = f"dyc-e2e-{suffix}"
        self.prefix = f"dyce2e{suffix}"
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self.directory = directory
        self.env_file = directory / ".env"
        write_env_file(self.env_file, {
            "DOCKYARD_HTTP_PORT": str(port),
            "DOCKYARD_PUBLIC_URL": self.url,
            "DOCKYARD_NETWORK": f"{self.project}-net",
            "DOCKYARD_DOCKER_NAME_PREFIX": self.prefix,
            "DOCKYARD_NOTEBOOK_IMAGE": IMAGE,
            "DOCKYARD_LOG_LEVEL": "INFO",
        })
        self.compose = Compose(self.env_file, self.project, [PRODUCTION, OFFLINE])
        self.timings: dict[str, float] = {}

    def timed(self, label: str, started: float) -> None:
        self.timings[label] = round(time.monotonic() - started, 1)

    @property
    def hub(self) -> RunningHub:
        password = read_env_file(self.env_file)["DOCKYARD_ADMIN_PASSWORD"]
        return RunningHub(home=self.directory, env={}, url=self.url, admin_password=password)

    def up(self) -> None:
        started = time.monotonic()
        # Two workers from the start: they upgrade the database together and share a queue.
        self.compose.run("up", "-d", "--scale", "worker=2")
        self.wait_ready()
        self.timed(f"up #{len([k for k in self.timings if k.startswith('up')]) + 1}", started)

    def wait_ready(self, timeout: float = 300) -> None:
        self.compose.wait_healthy(["db", "s3", "engine-api", "hub", "web", "worker"],
                                   timeout=timeout)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the proxy routes once the hub has added them
            if self.answers("/hub/health") and self.answers("/services/dockyard/health"):
                return
            time.sleep(0.5)
        raise AssertionError("the hub's port does not route to the hub and web service")

    def answers(self, path: str) -> bool:
        try:
            return requests.get(self.url + path, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def shell(self, script: str, backup: Path) -> None:
        env = clean_environment()
        env.update(COMPOSE=" ".join(self.compose.command()), PREFIX=self.prefix, B=str(backup))
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.directory,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{script}\nfailed:\n{result.stderr[-4000:]}"

    def leftovers(self, kind: str) -> list[str]:
        result = subprocess.run(["docker", kind, "ls", "-q", *(["-a"] if kind == "container"
                                 else []), "--filter", f"label=dockyard.prefix={self.prefix}"],
                                capture_output=True, text=True)
        return result.stdout.split()

    def remove_user_objects(self) -> None:
        """What the hub made outside the compose project: servers and users' volumes."""
        for container in self.leftovers("container"):
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        for volume in self.leftovers("volume"):
            subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)

    def down(self) -> None:
        self.remove_user_objects()
        self.compose.run("down", "-v", "--remove-orphans", check=False, timeout=300)
        self.remove_user_objects()


@pytest.fixture
def stack(compose_binary: str, tmp_path: Path) -> Iterator[Stack]:
    require_image(IMAGE)
    require_image("debian:bookworm-slim")
    made_ca = ensure_build_ca(REPO / "images", None)
    stack = Stack(tmp_path)
    started = time.monotonic()
    try:
        stack.compose.run("build", timeout=1800)
        stack.timed("build", started)
        yield stack
    finally:
        if made_ca:
            (REPO / "images" / "build-ca.crt").unlink(missing_ok=True)
        stack.down()
        print(f"\ncompose stack timings (s): {json.dumps(stack.timings)}")


def api(session_or_token: requests.Session | str, method: str, url: str,
        **kwargs: object) -> requests.Response:
    if isinstance(session_or_token, str):
        headers = {"Authorization": f"token {session_or_token}"}
        return requests.request(method, url, headers=headers, timeout=60, **kwargs)
    return session_or_token.request(method, url, timeout=60, **kwargs)


#: A notebook in ada's home: its parameter cell is replaced by the run's parameters.
REPORT_NOTEBOOK = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}},
    "cells": [
        {"cell_type": "code", "id": "params", "metadata": {"tags": ["parameters"]},
         "source": "rate = 1", "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "result", "metadata": {},
         "source": "print('RESULT', rate * 7)", "outputs": [], "execution_count": None},
    ],
}


def wait_for(what: str, check, timeout: float = 180, every: float = 1.0):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def server_ready(hub_url: str, token: str, user: str) -> dict | None:
    model = api(token, "GET", f"{hub_url}/hub/api/users/{user}").json()
    server = model.get("servers", {}).get("")
    return server if server and server.get("ready") else None


def run_state(stack: Stack, token: str, run_id: int) -> dict:
    return api(token, "GET", stack.hub.service(f"api/v1/runs/{run_id}")).json()


def notebook_python(container: str, code: str) -> str:
    result = subprocess.run(["docker", "exec", container, "python", "-c", code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_stack_end_to_end_with_restarts_and_a_restore(stack: Stack, tmp_path: Path) -> None:
    stack.up()
    hub = stack.hub

    # -- log in through the hub: admin, and a user who signs up and is approved -------------
    admin = hub.login()
    assert api(admin, "GET", hub.service("jobs/")).status_code == 200  # SSO into the service
    admin_token = hub.hub_token(admin, "admin")
    ada = hub.create_user(USER, USER_PASSWORD)
    ada_token = hub.hub_token(ada, USER)
    me = api(ada_token, "GET", hub.service("api/v1/user")).json()
    assert me["name"] == USER and not me["admin"]

    # -- a notebook server, reached through the proxy, with a file in its home volume -------
    started = time.monotonic()
    response = api(ada_token, "POST", f"{stack.url}/hub/api/users/{USER}/server", json={})
    assert response.status_code in (201, 202), response.text
    wait_for("ada's server", lambda: server_ready(stack.url, ada_token, USER))
    stack.timed("spawn", started)
    (notebook,) = [c for c in stack.leftovers("container")]
    contents = f"{stack.url}/user/{USER}/api/contents/kept.txt"
    response = api(ada_token, "PUT", contents,
                   json={"type": "file", "format": "text", "content": "still here"})
    assert response.status_code in (200, 201), response.text

    # -- a job that writes a table to the S3 store through the data client ------------------
    response = api(admin_token, "POST", hub.service("api/v1/images"),
                   json={"reference": IMAGE, "for_jobs": True, "for_notebooks": True})
    assert response.status_code == 201, response.text
    response = api(ada_token, "POST", hub.service("api/v1/runs"),
                   json={"image": IMAGE, "command": ["python", "-c", JOB_SCRIPT]})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    wait_for("the run to start",
             lambda: run_state(stack, ada_token, run_id)["status"] == "RUNNING", timeout=120,
             every=0.5)

    # -- restart hub, web and worker while the run runs and the server serves ----------------
    started = time.monotonic()
    stack.compose.run("restart", "hub", "web", "worker")
    stack.wait_ready()
    stack.timed("restart", started)
    assert stack.leftovers("container") == [notebook], "the server was re-adopted, not remade"
    assert server_ready(stack.url, ada_token, USER)
    assert api(ada_token, "GET", contents).json()["content"] == "still here"

    finished = wait_for("the run to finish", lambda: (
        (state := run_state(stack, ada_token, run_id))["status"]
        in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT") and state), timeout=240)
    logs = api(ada_token, "GET", hub.service(f"api/v1/runs/{run_id}/logs")).text
    assert finished["status"] == "SUCCEEDED", (finished, logs[-2000:])
    assert "stored 3 rows" in logs
    events = api(ada_token, "GET", hub.service(f"api/v1/runs/{run_id}/events")).json()
    into_running = [e for e in events["events"] if e["to_status"] == "RUNNING"]
    assert len(into_running) == 1, f"two workers, restarted, started the job once: {events}"
    assert finished["attempt"] == 1
    # Structured logs: JSON lines, those about the run naming it and its owner.
    worker_lines = [line.split("| ", 1)[-1] for line in stack.compose.run(
        "logs", "--no-color", "worker").stdout.splitlines() if "| {" in line]
    entries = [json.loads(line) for line in worker_lines]
    about_run = [e for e in entries
                 if re.search(rf"\brun {run_id}\b", e["message"], re.IGNORECASE)]
    assert len(about_run) >= 4, worker_lines[-20:]  # claimed, running, adopted, succeeded
    for entry in about_run:
        assert (entry.get("run_id"), entry.get("user")) == (run_id, USER), entry

    table = api(ada_token, "GET", hub.service(f"api/v1/tables/{NAMESPACE}/{TABLE}"))
    assert table.status_code == 200, table.text
    loaded = notebook_python(notebook, "from dockyard_data import load_dataframe; "
                             f"print(int(load_dataframe('{NAMESPACE}', '{TABLE}')['n'].sum()))")
    assert loaded == "6"

    # -- a notebook job from ada's home (read through engine-api), its files in S3 -----------
    response = api(admin_token, "POST", hub.service("api/v1/images"),
                   json={"reference": NOTEBOOK_IMAGE, "for_jobs": True})
    assert response.status_code == 201, response.text
    image_url = hub.service(f"api/v1/images/{response.json()['id']}")
    wait_for("the notebook image's inspection",
             lambda: "python3" in (api(admin_token, "GET", image_url).json()["kernels"] or []),
             timeout=240)
    response = api(ada_token, "PUT", f"{stack.url}/user/{USER}/api/contents/report.ipynb",
                   json={"type": "notebook", "format": "json", "content": REPORT_NOTEBOOK})
    assert response.status_code in (200, 201), response.text
    response = api(ada_token, "POST", hub.service("api/v1/runs"), json={
        "image": NOTEBOOK_IMAGE, "notebook": {"path": "report.ipynb"},
        "parameters": {"rate": 7}})
    assert response.status_code == 201, response.text
    notebook_run = response.json()["id"]
    done = wait_for("the notebook run", lambda: (
        (state := run_state(stack, ada_token, notebook_run))["status"]
        in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT") and state), timeout=240)
    output_url = hub.service(f"api/v1/runs/{notebook_run}/artifacts/output.ipynb")
    assert done["status"] == "SUCCEEDED", (done, api(ada_token, "GET", hub.service(
        f"api/v1/runs/{notebook_run}/logs")).text[-2000:])
    executed = api(ada_token, "GET", output_url)
    assert executed.status_code == 200 and "RESULT 49" in executed.text

    # -- backup, lose everything, restore --------------------------------------------------
    backup = tmp_path / "backup"
    started = time.monotonic()
    stack.shell(BACKUP_STEPS, backup)
    stack.timed("backup", started)
    assert (backup / "dockyard.dump").stat().st_size > 0
    assert (backup / "data").is_dir()

    response = api(ada_token, "DELETE", f"{stack.url}/hub/api/users/{USER}/server")
    assert response.status_code in (202, 204), response.text
    wait_for("the server to stop", lambda: not stack.leftovers("container"), timeout=120)
    stack.compose.run("down", "-v", timeout=300)
    stack.remove_user_objects()
    os.remove(stack.env_file)
    assert not stack.leftovers("volume")

    started = time.monotonic()
    stack.shell(RESTORE_STEPS, backup)
    stack.wait_ready()
    stack.timed("restore", started)

    hub = stack.hub  # same .env, same admin password
    ada = hub.login(USER, USER_PASSWORD)
    ada_token = hub.hub_token(ada, USER)
    restored = run_state(stack, ada_token, run_id)
    assert restored["status"] == "SUCCEEDED"
    assert "stored 3 rows" in api(ada_token, "GET",
                                  hub.service(f"api/v1/runs/{run_id}/logs")).text
    assert api(ada_token, "GET",
               hub.service(f"api/v1/tables/{NAMESPACE}/{TABLE}")).status_code == 200
    # The notebook run's executed copy came back with the data store.
    assert api(ada_token, "GET", output_url).content == executed.content

    response = api(ada_token, "POST", f"{stack.url}/hub/api/users/{USER}/server", json={})
    assert response.status_code in (201, 202), response.text
    wait_for("ada's server after the restore", lambda: server_ready(stack.url, ada_token, USER))
    assert api(ada_token, "GET", contents).json()["content"] == "still here"
    (notebook,) = stack.leftovers("container")
    loaded = notebook_python(notebook, "from dockyard_data import load_dataframe; "
                             f"print(int(load_dataframe('{NAMESPACE}', '{TABLE}')['n'].sum()))")
    assert loaded == "6"
