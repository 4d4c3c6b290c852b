"""The same notebook spawner on a single-node Docker Swarm (DOCKYARD_SPAWNER=swarm).

The swarm comes from tests/support/swarm.py: made only if the engine is not one already,
undone exactly, and held under the lock every swarm test on this machine shares.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests.notebooks.conftest import NotebookHub, running_notebook_hub
from tests.support.requirements import require_docker
from tests.support.swarm import single_node_swarm

pytestmark = [pytest.mark.docker, pytest.mark.hub]


@pytest.fixture
def swarm_hub(tmp_path: Path) -> Iterator[NotebookHub]:
    require_docker()
    engine = docker.from_env(timeout=120)
    prefix = "dysw" + secrets.token_hex(3)
    with single_node_swarm(engine):
        with running_notebook_hub(tmp_path, prefix, DOCKYARD_SPAWNER="swarm") as notebooks:
            yield notebooks
        for network in engine.networks.list(names=[f"{prefix}-notebooks"]):
            _retry(network.remove)  # the service's task may take a moment to go
    engine.close()


def _retry(action: object, attempts: int = 20) -> None:
    for attempt in range(attempts):
        try:
            action()  # type: ignore[operator]
            return
        except docker.errors.APIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def test_swarm_service_spawns_limited_and_stops(swarm_hub: NotebookHub) -> None:
    swarm_hub.start("sam", {"profile": "large"})
    [service] = swarm_hub.engine.services.list(filters={"name": f"{swarm_hub.prefix}-nb-sam"})
    spec = service.attrs["Spec"]["TaskTemplate"]
    container_spec = spec["ContainerSpec"]
    assert container_spec["User"] == "1000:100"
    assert container_spec["CapabilityDrop"] == ["ALL"]
    assert spec["Resources"]["Limits"] == {"MemoryBytes": 1024**3, "NanoCPUs": 1_000_000_000,
                                           "Pids": 512}
    mounts = {m["Target"]: m for m in container_spec["Mounts"]}
    assert mounts["/home/jovyan"]["Source"] == f"{swarm_hub.prefix}-home-sam"
    assert mounts["/home/jovyan"]["Type"] == "volume"
    assert mounts["/shared"]["ReadOnly"] is True
    assert not service.attrs["Endpoint"].get("Ports"), "nothing published on the host"

    token = swarm_hub.user("sam")
    answer = requests.get(f"{swarm_hub.hub.url}/user/sam/api/status",
                          headers={"Authorization": f"token {token}"}, timeout=30)
    assert answer.status_code == 200
    [task_container] = swarm_hub.engine.containers.list(
        filters={"label": f"com.docker.swarm.service.name={swarm_hub.prefix}-nb-sam"})
    assert swarm_hub.run_in(task_container, "id", "-u") == (0, "1000")
    assert swarm_hub.run_in(task_container, "touch", "/home/jovyan/swarm-was-here")[0] == 0

    swarm_hub.stop("sam")
    assert not swarm_hub.engine.services.list(filters={"name": f"{swarm_hub.prefix}-nb-sam"})
