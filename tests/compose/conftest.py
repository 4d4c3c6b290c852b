"""Running docker-compose against the repository's compose files, isolated from the
caller's environment and from other installations on the same engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.requirements import missing, require_docker

REPO = Path(__file__).resolve().parent.parent.parent
PRODUCTION = REPO / "docker-compose.yml"
OFFLINE = REPO / "docker-compose.offline.yml"
# Compose v2 (`docker compose`) is not installable here; Debian's docker-compose 1.29
# reads the same files (the Compose Specification).
COMPOSE_BINARY = "docker-compose"


def require_compose() -> str:
    found = shutil.which(COMPOSE_BINARY)
    if not found:
        missing("docker-compose", "apt-get install -y docker-compose (Debian's 1.29).")
    return found  # type: ignore[return-value]


def clean_environment() -> dict[str, str]:
    """Only what docker-compose needs: the .env file must be the one source of values
    (a DOCKYARD_* variable in the caller's shell would win over it)."""
    keep = ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH",
            "DOCKER_TLS_VERIFY", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


@dataclass
class Compose:
    """docker-compose for one project: its .env file, files and name."""

    env_file: Path
    project: str
    files: list[Path] = field(default_factory=lambda: [PRODUCTION])

    def command(self, *args: str) -> list[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        return [COMPOSE_BINARY, "--env-file", str(self.env_file), "-p", self.project,
                *files, *args]

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            input: str | bytes | None = None, text: bool = True,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), env=clean_environment(), cwd=cwd,
                                capture_output=True, text=text, timeout=timeout, input=input)
        if check and result.returncode != 0:
            err = result.stderr if text else result.stderr.decode(errors="replace")
            raise AssertionError(f"docker-compose {' '.join(args)} failed "
                                 f"({result.returncode}):\n{err[-4000:]}")
        return result

    def config(self) -> dict:
        import yaml

        return yaml.safe_load(self.run("config").stdout)

    def container_id(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip().splitlines()[0]

    def wait_healthy(self, services: list[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending and time.monotonic() < deadline:
            for service in list(pending):
                ids = self.run("ps", "-q", service, check=False).stdout.split()
                if ids and all(health_of(i) == "healthy" for i in ids):
                    pending.remove(service)
            if pending:
                time.sleep(1)
        if pending:
            logs = self.run("logs", "--tail=40", *pending, check=False).stdout
            raise AssertionError(f"not healthy after {timeout:.0f}s: {pending}"
                                 f"{self.network_note()}\n{logs[-6000:]}")

    def network_note(self) -> str:
        """Docker 20.10 detaches every container from user-defined networks when the
        engine leaves a swarm (`docker swarm leave --force`, e.g. by a swarm test running
        at the same time): say so, since the logs then only show name lookups failing."""
        ids = self.run("ps", "-q", check=False).stdout.split()
        detached = [i[:12] for i in ids if not _networks_of(i)]
        return (f" (containers {detached} are on no network: did this engine leave a swarm "
                "meanwhile?)") if detached else ""


def _networks_of(container: str) -> dict:
    result = subprocess.run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                             container], capture_output=True, text=True)
    return json.loads(result.stdout or "{}") or {}


def health_of(container: str) -> str:
    result = subprocess.run(["docker", "inspect", container], capture_output=True, text=True)
    if result.returncode != 0:
        return "missing"
    state = json.loads(result.stdout)[0]["State"]
    return (state.get("Health") or {}).get("Status", state.get("Status", "?"))


@pytest.fixture
def compose_binary() -> str:
    require_docker()
    return require_compose()
