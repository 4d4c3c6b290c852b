"""A real Dockyard whose notebooks are Docker containers, and helpers to drive it.

Everything this package creates on the engine carries a random name prefix
(DOCKYARD_DOCKER_NAME_PREFIX) and is removed by it afterwards, so runs of other test
packages on the same engine are never touched.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from sqlalchemy import delete, update

from dockyard.db import make_engine, make_session_factory, transaction
from dockyard.models import Image, ImageStatus
from tests.support.hubproc import RunningHub, start_hub
from tests.support.requirements import require_image
from tests.support.swarm import swarm_active

TEST_IMAGE = "dockyard/test:latest"
# Lets a test hold a spawn just before start() (see the file).
SPAWN_GATE_CONFIG = Path(__file__).with_name("spawn_gate.py")
# Small profiles: the limits are checked on the container, nothing needs the memory.
PROFILES = [
    {"name": "small", "description": "Small: 512 MB, half a CPU", "memory": "512M",
     "cpus": 0.5, "pids": 256},
    {"name": "large", "description": "Large: 1 GB, 1 CPU", "memory": "1G", "cpus": 1,
     "pids": 512},
]


@dataclass
class NotebookHub:
    hub: RunningHub
    prefix: str
    engine: docker.DockerClient
    admin_token: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, requests.Session] = field(default_factory=dict)

    # -- users and their servers --------------------------------------------------------
    def user(self, name: str) -> str:
        """Create ``name`` (once) and return a token of theirs."""
        if name not in self.tokens:
            session = self.hub.create_user(name)
            self.sessions[name] = session
            self.tokens[name] = self.hub.hub_token(session, name)
        return self.tokens[name]

    def api(self, method: str, path: str, token: str | None = None,
            **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return requests.request(method, f"{self.hub.url}/hub/api{path}", headers=headers,
                                timeout=kwargs.pop("timeout", 120), **kwargs)

    def spawn(self, name: str, options: dict[str, Any] | None = None,
              server: str = "") -> requests.Response:
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        return self.api("POST", path, self.user(name), json=options or {})

    def server_model(self, name: str, server: str = "") -> dict[str, Any] | None:
        model = self.api("GET", f"/users/{name}").json()
        return model["servers"].get(server)

    def wait_ready(self, name: str, server: str = "", timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(name, server)
            if model and model["ready"]:
                return model
            if model is None:  # a failed spawn leaves no server behind
                raise AssertionError(f"{name}/{server} failed to start:\n{self.hub.log_tail()}")
            time.sleep(0.3)
        raise AssertionError(f"{name}/{server} not ready in {timeout}s:\n{self.hub.log_tail()}")

    def start(self, name: str, options: dict[str, Any] | None = None, server: str = "") -> dict:
        response = self.spawn(name, options, server)
        assert response.status_code in (201, 202), response.text
        return self.wait_ready(name, server)

    def stop(self, name: str, server: str = "") -> None:
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        response = self.api("DELETE", path, self.user(name))
        assert response.status_code in (202, 204), response.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server_model(name, server) is None:
                return
            time.sleep(0.3)
        raise AssertionError(f"{name}/{server} did not stop")

    def container(self, name: str, server: str = "") -> Any:
        suffix = f"--{server}" if server else ""
        return self.engine.containers.get(f"{self.prefix}-nb-{name}{suffix}")

    def run_in(self, container: Any, *command: str) -> tuple[int, str]:
        exit_code, output = container.exec_run(list(command))
        return exit_code, output.decode(errors="replace").strip()

    # -- the image catalog --------------------------------------------------------------
    def _sessions(self) -> Any:
        return make_session_factory(make_engine(f"sqlite:///{self.hub.home / 'dockyard.sqlite'}"))

    def add_image(self, reference: str, **fields: Any) -> None:
        values = {"status": ImageStatus.READY, "for_notebooks": True, "created_by": "tests",
                  "description": f"{reference} for tests", **fields}
        with transaction(self._sessions()) as session:
            session.add(Image(reference=reference, **values))

    def set_image_status(self, reference: str, status: ImageStatus) -> None:
        with transaction(self._sessions()) as session:
            session.execute(update(Image).where(Image.reference == reference).values(status=status))

    def clear_images(self) -> None:
        with transaction(self._sessions()) as session:
            session.execute(delete(Image))


def remove_engine_objects(engine: docker.DockerClient, prefix: str) -> None:
    ours = {"label": f"dockyard.prefix={prefix}"}
    for container in engine.containers.list(all=True, filters=ours):
        container.remove(force=True)
    for service in engine.services.list(filters=ours) if swarm_active(engine) else []:
        service.remove()
    for volume in engine.volumes.list(filters=ours):
        volume.remove(force=True)


@contextmanager
def running_notebook_hub(home: Path, prefix: str, **env: str) -> Iterator[NotebookHub]:
    """A Dockyard with Docker notebooks (``DOCKYARD_SPAWNER`` may say swarm) whose engine
    objects carry ``prefix``; afterwards it is stopped and every container, service and
    volume it made is removed. Tests' prefixes are dy<suite><6 hex>, which .ci/run
    recognises when it clears what an interrupted run left behind."""
    require_image(TEST_IMAGE)
    engine = docker.from_env(timeout=120)
    hub = None
    try:
        hub = start_hub(
            home,
            DOCKYARD_SPAWNER=env.pop("DOCKYARD_SPAWNER", "docker"),
            DOCKYARD_NOTEBOOK_IMAGE=TEST_IMAGE,
            DOCKYARD_DOCKER_NAME_PREFIX=prefix,
            DOCKYARD_NOTEBOOK_PROFILES=env.pop("DOCKYARD_NOTEBOOK_PROFILES", json.dumps(PROFILES)),
            **env,
        )
        notebooks = NotebookHub(hub, prefix, engine)
        notebooks.admin_token = hub.hub_token(hub.login(), hub.admin)
        yield notebooks
    finally:
        if hub is not None:
            hub.stop()
        remove_engine_objects(engine, prefix)
        engine.close()


@pytest.fixture(scope="package")
def notebook_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookHub]:
    """One Dockyard with Docker notebooks for this package's tests."""
    with running_notebook_hub(tmp_path_factory.mktemp("notebooks"),
                              "dynb" + secrets.token_hex(3),
                              DOCKYARD_NAMED_SERVERS="1",
                              DOCKYARD_HUB_EXTRA_CONFIG=str(SPAWN_GATE_CONFIG)) as notebooks:
        yield notebooks
