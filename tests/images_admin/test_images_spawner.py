"""An admin's catalog changes, made through Dockyard's API, reach JupyterHub's spawn page
with Docker notebooks at once: enabled images appear, disabled ones go, a retired image
cannot start a new server while the server already running from it goes on, and the
server's image blocks deleting the image."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.images_admin.conftest import OUR_REPOSITORY, TEST_IMAGE
from tests.support.hubproc import RunningHub, start_hub
from tests.support.requirements import require_image

pytestmark = [pytest.mark.hub, pytest.mark.docker]


@dataclass
class SpawnerHub:
    hub: RunningHub
    admin_token: str
    engine: docker.DockerClient
    prefix: str

    def dockyard(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, self.hub.service(f"api/v1/{path}"),
            headers={"Authorization": f"token {self.admin_token}"}, timeout=60, **kwargs,
        )

    def hub_api(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.hub.url}/hub/api{path}",
                                headers={"Authorization": f"token {token}"}, timeout=120,
                                **kwargs)


@pytest.fixture(scope="module")
def spawner_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpawnerHub]:
    require_image(TEST_IMAGE)
    prefix = "dyia" + secrets.token_hex(3)
    engine = docker.from_env(timeout=120)
    hub = start_hub(
        Path(tmp_path_factory.mktemp("images-spawner")),
        DOCKYARD_SPAWNER="docker",
        DOCKYARD_NOTEBOOK_IMAGE=TEST_IMAGE,
        DOCKYARD_DOCKER_NAME_PREFIX=prefix,
        DOCKYARD_NAMED_SERVERS="1",
        DOCKYARD_NOTEBOOK_PROFILES='[{"name": "small", "memory": "512M", "cpus": 0.5}]',
    )
    try:
        yield SpawnerHub(hub, hub.hub_token(hub.login(), hub.admin), engine, prefix)
    finally:
        hub.stop()
        ours = {"label": f"dockyard.prefix={prefix}"}
        for container in engine.containers.list(all=True, filters=ours):
            container.remove(force=True)
        for volume in engine.volumes.list(filters=ours):
            volume.remove(force=True)
        engine.close()


@pytest.fixture
def references(spawner_hub: SpawnerHub) -> Iterator[list[str]]:
    """Two fresh names for the test image, as two catalog entries."""
    made = [f"{OUR_REPOSITORY}/nb-{n}:{secrets.token_hex(3)}" for n in ("a", "b")]
    for reference in made:
        spawner_hub.engine.images.get(TEST_IMAGE).tag(*reference.rsplit(":", 1))
    yield made
    for reference in made:
        spawner_hub.engine.images.remove(reference, force=True)


def _offered(session: requests.Session, hub: RunningHub) -> list[str]:
    page = session.get(f"{hub.url}/hub/spawn", timeout=30)
    assert page.status_code == 200, page.text[:500]
    return re.findall(r'type="radio" name="image" id="[^"]+" value="([^"]+)"', page.text)


def test_admin_changes_reach_the_spawn_page_and_retire_stops_new_servers(
    spawner_hub: SpawnerHub, references: list[str]
) -> None:
    hub = spawner_hub.hub
    first, second = references
    ids = {}
    for reference in references:
        created = spawner_hub.dockyard("POST", "images", json={"reference": reference})
        assert created.status_code == 201, created.text
        ids[reference] = created.json()["id"]

    name = "imgadm" + secrets.token_hex(2)
    session = hub.create_user(name)
    token = hub.hub_token(session, name)
    # Nothing enabled yet: the configured fallback image alone.
    assert _offered(session, hub) == [TEST_IMAGE]

    spawner_hub.dockyard("PATCH", f"images/{ids[first]}", json={"for_notebooks": True})
    assert _offered(session, hub) == [first]
    spawner_hub.dockyard("PATCH", f"images/{ids[second]}", json={"default_for_notebooks": True})
    assert _offered(session, hub) == [second, first]  # the default first
    spawner_hub.dockyard("PATCH", f"images/{ids[second]}", json={"for_notebooks": False})
    assert _offered(session, hub) == [first]

    started = spawner_hub.hub_api("POST", f"/users/{name}/server", token,
                                  json={"image": first})
    assert started.status_code in (201, 202), started.text
    deadline = time.monotonic() + 120
    while not spawner_hub.hub_api("GET", f"/users/{name}", token).json()["servers"].get(
        "", {}
    ).get("ready"):
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.3)
    container = spawner_hub.engine.containers.get(f"{spawner_hub.prefix}-nb-{name}")
    assert container.attrs["Config"]["Image"] == first

    image = spawner_hub.dockyard("GET", f"images/{ids[first]}").json()
    assert image["usage"]["servers"] == [name]
    in_use = spawner_hub.dockyard("DELETE", f"images/{ids[first]}")
    assert in_use.status_code == 409 and in_use.json()["detail"]["servers"] == [name]

    assert spawner_hub.dockyard("PATCH", f"images/{ids[first]}",
                                json={"status": "retired"}).status_code == 200
    refused = spawner_hub.hub_api("POST", f"/users/{name}/servers/second", token,
                                  json={"image": first})
    assert refused.status_code == 400
    assert "retired" in refused.json()["message"]
    # The running server goes on.
    container.reload()
    assert container.status == "running"
    answered = requests.get(f"{hub.url}/user/{name}/api/status",
                            headers={"Authorization": f"token {token}"}, timeout=30)
    assert answered.status_code == 200

    spawner_hub.hub_api("DELETE", f"/users/{name}/server", token)
    deadline = time.monotonic() + 60
    while spawner_hub.dockyard("GET", f"images/{ids[first]}").json()["usage"]["servers"]:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert spawner_hub.dockyard("DELETE", f"images/{ids[first]}").status_code == 204
