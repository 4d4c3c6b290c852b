"""The read-only Docker API the web container uses instead of a socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import docker
import pytest
import requests
from docker.errors import APIError

from dockyard.engine_proxy import allowed, make_server
from tests.support.ports import free_ports
from tests.support.requirements import require_docker, require_image

pytestmark = pytest.mark.docker
BASE = "debian:bookworm-slim"


@pytest.mark.parametrize("method, target, ok", [
    ("GET", "/_ping", True),
    ("GET", "/v1.41/version", True),
    ("GET", "/v1.41/images/dockyard/test:latest/json", True),
    ("GET", "/v1.41/containers/json?filters=%7B%7D", True),
    ("HEAD", "/_ping", True),
    ("GET", "/v1.41/containers/abc/json", True),  # its environment is removed (below)
    ("GET", "/v1.41/containers/abc/logs", False),
    ("GET", "/v1.41/images/../containers/abc/json", False),
    ("POST", "/v1.41/containers/create", False),
    ("POST", "/v1.41/images/create", False),
    ("DELETE", "/v1.41/images/debian/json", False),
    ("GET", "/v1.41/info", False),
])
def test_only_reads_of_image_metadata_and_the_container_list(method: str, target: str,
                                                             ok: bool) -> None:
    assert allowed(method, target) is ok


@pytest.fixture
def proxy() -> Iterator[str]:
    require_docker()
    (port,) = free_ports(1)
    server = make_server("127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def test_the_docker_sdk_reads_through_it_and_cannot_write(proxy: str) -> None:
    require_image(BASE)
    client = docker.DockerClient(base_url=proxy, version="auto", timeout=20)
    try:
        assert client.ping()
        image = client.images.get(BASE)
        assert image.id.startswith("sha256:")
        assert isinstance(client.containers.list(filters={"label": "dockyard.notebook=true"}),
                          list)
        with pytest.raises(APIError) as refused:
            client.containers.run(BASE, "true", remove=True)
        assert refused.value.status_code == 403
        assert "read-only" in str(refused.value)
        with pytest.raises(APIError):
            client.images.pull("debian", tag="bookworm-slim")
    finally:
        client.close()


def test_a_containers_environment_is_never_passed_on(proxy: str) -> None:
    require_image(BASE)
    engine = docker.from_env()
    container = engine.containers.create(BASE, "true", environment={"TOKEN": "s3cr3t-value"},
                                         labels={"dockyard.test": "engine-proxy"})
    client = docker.DockerClient(base_url=proxy, version="auto", timeout=20)
    try:
        seen = client.containers.get(container.id)
        assert seen.labels["dockyard.test"] == "engine-proxy"
        assert seen.attrs["Config"]["Env"] == []
        assert "s3cr3t-value" not in str(seen.attrs)
    finally:
        client.close()
        container.remove(force=True)
        engine.close()


def test_refused_requests_get_json_and_a_closed_connection(proxy: str) -> None:
    url = proxy.replace("tcp://", "http://")
    response = requests.post(url + "/v1.41/containers/create", json={"Image": BASE}, timeout=10)
    assert response.status_code == 403
    assert response.headers["Connection"] == "close"
    assert "read-only" in response.json()["message"]
