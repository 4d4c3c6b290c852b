"""docker-compose.yml as docker-compose reads it (Debian's 1.29; Compose v2 reads the same
Compose Specification): it validates, takes every secret from .env and refuses to start
without them, and keeps the Docker socket and published ports where they belong."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dockyard.production import ENV_ENTRIES, read_env_file, write_env_file
from tests.compose.conftest import OFFLINE, PRODUCTION, Compose

SECRET_NAMES = [entry.name for entry in ENV_ENTRIES if entry.secret]
LONG_RUNNING = ("hub", "web", "worker", "engine-api", "db", "s3")


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    write_env_file(path)
    return path


def test_production_file_validates_with_generated_env(compose_binary: str, env_file: Path) -> None:
    config = Compose(env_file, "dyc-config").config()
    services = config["services"]
    assert set(services) == {"hub", "web", "worker", "engine-api", "db", "s3", "s3-init",
                             "notebook"}
    # The notebook image is built on request only; nothing runs from that service.
    assert services["notebook"]["profiles"] == ["images"]
    values = read_env_file(env_file)
    hub_env = services["hub"]["environment"]
    assert hub_env["JPY_COOKIE_SECRET"] == values["DOCKYARD_COOKIE_SECRET"]
    assert hub_env["DOCKYARD_SERVICES_MODE"] == "external"
    assert services["web"]["environment"]["JUPYTERHUB_API_TOKEN"] == values[
        "DOCKYARD_SERVICE_TOKEN"]
    assert values["DOCKYARD_DB_PASSWORD"] in hub_env["DOCKYARD_HUB_DATABASE_URL"]
    assert hub_env["DOCKYARD_HUB_DATABASE_URL"].endswith("@db:5432/jupyterhub")
    assert hub_env["DOCKYARD_DATA_ROOT"] == "s3://dockyard/data"
    assert config["networks"]["dockyard"]["name"] == hub_env["DOCKYARD_DOCKER_NETWORK"]


def test_no_secret_is_written_in_the_file() -> None:
    text = PRODUCTION.read_text()
    for name in SECRET_NAMES:
        uses = re.findall(r"\$\{" + name + r"(:[?-][^}]*)?\}", text)
        assert uses, f"{name} is not used"
        assert all(not use.startswith(":-") for use in uses), f"{name} has a default"
    assert "changeme" not in text.lower()


@pytest.mark.parametrize("dropped", ["DOCKYARD_DB_PASSWORD", "DOCKYARD_COOKIE_SECRET",
                                     "DOCKYARD_SERVICE_TOKEN", "DOCKYARD_S3_SECRET_KEY"])
def test_refuses_to_start_without_a_secret(compose_binary: str, env_file: Path,
                                           dropped: str) -> None:
    lines = [line for line in env_file.read_text().splitlines()
             if not line.startswith(dropped + "=")]
    env_file.write_text("\n".join(lines) + "\n")
    result = Compose(env_file, "dyc-config").run("config", check=False)
    assert result.returncode != 0
    assert f"set {dropped} in .env (run dockyard init-prod)" in result.stderr


def test_socket_ports_and_health(compose_binary: str, env_file: Path) -> None:
    services = Compose(env_file, "dyc-config").config()["services"]
    socket = "/var/run/docker.sock:/var/run/docker.sock"
    for name, service in services.items():
        if name == "notebook":
            continue
        mounts = [str(v) for v in service.get("volumes", [])]
        has_socket = any(m.startswith(socket) for m in mounts)
        # Only the two that start containers get the engine, and the read-only proxy.
        assert has_socket == (name in ("hub", "worker", "engine-api")), name
        assert ("ports" in service) == (name == "hub"), name
        if name in LONG_RUNNING:
            assert service["healthcheck"]["test"], name
            assert service["restart"] == "unless-stopped", name
    (port,) = services["hub"]["ports"]
    published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
    assert published.startswith("127.0.0.1:8000"), published
    for name in ("hub", "web", "worker"):
        assert "condition" in str(services[name]["depends_on"]["db"])
    assert services["web"]["environment"]["DOCKER_HOST"] == "tcp://engine-api:2375"


def test_only_the_web_service_reaches_the_engine_window(compose_binary: str,
                                                        env_file: Path) -> None:
    config = Compose(env_file, "dyc-config").config()
    services = config["services"]
    # engine-api reads any user's home: notebooks and jobs (on `dockyard`) must not reach it.
    assert config["networks"]["engine"]["internal"] is True
    assert set(services["engine-api"]["networks"]) == {"engine"}
    assert set(services["web"]["networks"]) == {"dockyard", "engine"}
    for name in ("hub", "worker"):
        assert "engine" not in set(services[name]["networks"]), name
    web_env, window_env = services["web"]["environment"], services["engine-api"]["environment"]
    assert web_env["DOCKYARD_HOME_FILES_URL"] == "http://engine-api:2375/dockyard/home-file"
    # The window names and reads homes as the hub's spawner makes them.
    for name in ("DOCKYARD_DOCKER_NAME_PREFIX", "DOCKYARD_NOTEBOOK_IMAGE"):
        assert window_env[name] == web_env[name] == services["hub"]["environment"][name], name
    assert not any(name in window_env for name in SECRET_NAMES)
    assert not any("PASSWORD" in name or "SECRET" in name or "TOKEN" in name
                   for name in window_env)


def test_offline_override_builds_local_images(compose_binary: str, env_file: Path) -> None:
    services = Compose(env_file, "dyc-config", [PRODUCTION, OFFLINE]).config()["services"]
    assert services["db"]["image"] == "dockyard/postgres-offline:latest"
    assert services["db"]["build"]["dockerfile"] == "postgres/Dockerfile"
    assert services["s3"]["image"] == services["s3-init"]["image"] == "dockyard/s3-offline:latest"
    assert "moto-api" in " ".join(services["s3"]["healthcheck"]["test"])
    # Everything else is the production definition.
    production = Compose(env_file, "dyc-config").config()["services"]
    for name in ("hub", "web", "worker"):
        for key in set(services[name]) | set(production[name]):
            if key != "networks":  # merged files print {} where one file prints null
                assert services[name][key] == production[name][key], (name, key)


def test_every_dockerfile_starts_from_the_offline_base_or_our_images() -> None:
    repo = PRODUCTION.parent
    for dockerfile in ("images/hub/Dockerfile", "images/postgres/Dockerfile",
                       "images/s3/Dockerfile"):
        bases = re.findall(r"^FROM\s+(\S+)", (repo / dockerfile).read_text(), re.M)
        assert bases and all(b in ("debian:bookworm-slim", "assets") for b in bases), bases


def test_the_env_file_is_never_committed_nor_sent_to_builds() -> None:
    repo = PRODUCTION.parent
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=repo)
    assert ignored.returncode == 0, ".env must be in .gitignore"
    dockerignore = (repo / ".dockerignore").read_text().splitlines()
    assert dockerignore[dockerignore.index("*"):].count("!.env") == 0
