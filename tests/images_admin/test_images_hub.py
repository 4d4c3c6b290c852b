"""The image catalog inside a real Dockyard (``dockyard up``): the worker started by the
hub builds and inspects, and the web service asks JupyterHub which notebook servers run
an image (the dockyard service's role lets it read servers and their state)."""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import requests

from tests.images_admin.conftest import OUR_REPOSITORY, SHELL_IMAGE
from tests.support.hubproc import RunningHub
from tests.support.requirements import require_image

pytestmark = [pytest.mark.hub, pytest.mark.docker]


class Dockyard:
    """Dockyard's API through the hub's proxy, with an admin's hub token."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        self.token = hub.hub_token(hub.login(), hub.admin)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, self.hub.service(f"api/v1/{path}"), headers=headers,
                                timeout=60, **kwargs)

    def wait_for(self, image_id: int, statuses: set[str], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            image = self.call("GET", f"images/{image_id}").json()
            if image["status"] in statuses and not image["building"]:
                return image
            time.sleep(0.3)
        raise AssertionError(f"image {image_id} stayed {image['status']}:\n{self.hub.log_tail()}")


@pytest.fixture
def dockyard(running_hub: RunningHub) -> Iterator[Dockyard]:
    require_image(SHELL_IMAGE)
    api = Dockyard(running_hub)
    before = {i["id"] for i in api.call("GET", "images").json()["images"]}
    yield api
    # The hub is shared with other packages: leave its catalog as it was.
    for image in api.call("GET", "images").json()["images"]:
        if image["id"] not in before:
            api.call("PATCH", f"images/{image['id']}", json={"default_for_notebooks": False})
            api.call("DELETE", f"images/{image['id']}")


def test_the_hubs_worker_builds_and_inspects(dockyard: Dockyard) -> None:
    reference = f"{OUR_REPOSITORY}/hub-built:{secrets.token_hex(4)}"
    dockerfile = f"FROM {SHELL_IMAGE}\nRUN echo built-by-the-hub-worker\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    try:
        created = dockyard.call(
            "POST", "images", data={"reference": reference},
            files={"context": ("context.tar", context.getvalue(), "application/x-tar")},
        )
        assert created.status_code == 201, created.text
        image = dockyard.wait_for(created.json()["id"], {"ready", "failed"})
        assert image["status"] == "ready", image["status_detail"]
        log = dockyard.call("GET", f"images/{image['id']}/build-log").json()["text"]
        assert "built-by-the-hub-worker" in log
        assert "Debian" in image["contents"]["os"]
    finally:
        engine = docker.from_env()
        try:
            engine.images.remove(reference, force=True)
        except docker.errors.ImageNotFound:
            pass
        engine.close()


def test_a_running_notebook_server_blocks_deleting_its_image(
    dockyard: Dockyard, running_hub: RunningHub
) -> None:
    name = f"imgadm{secrets.token_hex(3)}"
    user = running_hub.create_user(name)
    user_token = running_hub.hub_token(user, name)
    engine = docker.from_env()
    reference = f"{OUR_REPOSITORY}/in-use:{secrets.token_hex(4)}"
    engine.images.get(SHELL_IMAGE).tag(*reference.split(":"))
    try:
        _block_delete_while_served(dockyard, running_hub, name, user_token, reference)
    finally:
        engine.images.remove(reference, force=True)
        engine.close()


def _block_delete_while_served(
    dockyard: Dockyard, running_hub: RunningHub, name: str, user_token: str, reference: str
) -> None:
    created = dockyard.call("POST", "images", json={"reference": reference})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    dockyard.wait_for(image_id, {"ready"})
    # A server started without a choice runs the default notebook image.
    assert dockyard.call("PATCH", f"images/{image_id}",
                         json={"default_for_notebooks": True}).status_code == 200

    hub_api = f"{running_hub.url}/hub/api/users/{name}/server"
    headers = {"Authorization": f"token {user_token}"}
    started = requests.post(hub_api, headers=headers, json={}, timeout=60)
    assert started.status_code in (201, 202), started.text
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            model = requests.get(f"{running_hub.url}/hub/api/users/{name}", headers=headers,
                                 timeout=30).json()
            if model["servers"].get("", {}).get("ready"):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"server never ready:\n{running_hub.log_tail()}")

        usage = dockyard.call("GET", f"images/{image_id}").json()["usage"]
        assert usage["servers"] == [name]
        refused = dockyard.call("DELETE", f"images/{image_id}")
        assert refused.status_code == 409
        assert name in refused.json()["detail"]["message"]
        assert refused.json()["detail"]["servers"] == [name]
        # The user's own token cannot delete it, or see the usage, either.
        assert dockyard.call("DELETE", f"images/{image_id}", user_token).status_code == 403
        assert dockyard.call("GET", f"images/{image_id}", user_token).json()["usage"] is None
    finally:
        requests.delete(hub_api, headers=headers, timeout=60)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dockyard.call("GET", f"images/{image_id}").json()["usage"]["servers"] == []:
            break
        time.sleep(0.3)
    dockyard.call("PATCH", f"images/{image_id}", json={"default_for_notebooks": False})
    assert dockyard.call("DELETE", f"images/{image_id}").status_code == 204
