"""The hub restarts while ten notebook servers run (Docker containers from the test
image, started through a real hub): every one is adopted again, as the same container,
still answering through the proxy; none is stopped or started anew."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.notebooks.conftest import NotebookHub, running_notebook_hub

pytestmark = [pytest.mark.docker, pytest.mark.hub]

SERVERS = 10


@pytest.fixture
def notebooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookHub]:
    with running_notebook_hub(tmp_path_factory.mktemp("hub-restart"),
                              "dyrel" + secrets.token_hex(3),
                              DOCKYARD_NAMED_SERVERS="0") as notebooks:
        yield notebooks


def _answers(hub: NotebookHub, name: str) -> bool:
    try:
        response = requests.get(f"{hub.hub.url}/user/{name}/api/status",
                                headers={"Authorization": f"token {hub.admin_token}"},
                                timeout=10, allow_redirects=False)
    except requests.RequestException:
        return False
    return response.status_code == 200


def _wait_all(hub: NotebookHub, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(names)
    while waiting:
        waiting = [n for n in waiting if not ((hub.server_model(n) or {}).get("ready")
                                              and _answers(hub, n))]
        if waiting and time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout}s: {waiting}\n{hub.hub.log_tail()}")
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_ten_running_servers_are_adopted_after_a_hub_restart(notebooks: NotebookHub) -> None:
    names = [f"restart{n:02d}" for n in range(SERVERS)]
    made = notebooks.api("POST", "/users", json={"usernames": names})
    assert made.status_code == 201, made.text
    # All at once, as a class would in the morning (the hub holds each request until its
    # spawn is done or slow, so they are sent side by side).
    with ThreadPoolExecutor(SERVERS) as pool:
        answers = list(pool.map(
            lambda name: notebooks.api("POST", f"/users/{name}/server", json={}), names))
    assert all(a.status_code in (201, 202) for a in answers), [a.text for a in answers]
    _wait_all(notebooks, names, timeout=300)
    before: dict[str, Any] = {}
    for name in names:
        container = notebooks.container(name)
        before[name] = (container.id, container.attrs["State"]["StartedAt"])

    notebooks.hub.restart()

    _wait_all(notebooks, names, timeout=120)
    for name in names:
        container = notebooks.container(name)
        assert container.status == "running", name
        assert (container.id, container.attrs["State"]["StartedAt"]) == before[name], (
            f"{name}'s server was replaced or restarted, not adopted")
    ours = notebooks.engine.containers.list(
        all=True, filters={"label": f"dockyard.prefix={notebooks.prefix}"})
    assert len(ours) == SERVERS, "no second container for anyone"
    for name in names:
        notebooks.api("DELETE", f"/users/{name}/server")
