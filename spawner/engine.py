"""Is there a Docker engine to use? Answered once at start-up, with a reason to print; and
what went wrong when an engine call failed, in terms the service can name a setting for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from requests.exceptions import RequestException


@dataclass(frozen=True)
class EngineCheck:
    available: bool
    reason: str
    version: str = ""
    swarm_active: bool = False


def docker_client(timeout: int = 60) -> docker.DockerClient:
    """A client for the engine named by the standard DOCKER_HOST / DOCKER_* variables."""
    return docker.from_env(timeout=timeout)


def check_docker(timeout: int = 3) -> EngineCheck:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker_client(timeout=timeout)
        try:
            info = client.info()
            version = client.version().get("Version", "?")
        finally:
            client.close()
    except (DockerException, OSError) as exc:
        return EngineCheck(False, f"no Docker engine answered at {where} ({_short(exc)})")
    swarm = info.get("Swarm", {}).get("LocalNodeState") == "active"
    return EngineCheck(True, f"Docker engine {version} at {where}", version, swarm)


def image_present(reference: str, timeout: int = 5) -> bool:
    client = docker_client(timeout=timeout)
    try:
        client.images.get(reference)
        return True
    except ImageNotFound:
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class EngineProblem:
    """An engine call that failed: ``missing`` (the engine answered that something does not
    exist; at start-up the only thing looked up is the network) or ``unreachable`` (it
    stopped answering), and its reason."""

    kind: Literal["missing", "unreachable"]
    reason: str


def engine_problem(exc: BaseException) -> EngineProblem | None:
    """What a failed engine call means, or None when ``exc`` is not the engine's."""
    if not isinstance(exc, (DockerException, RequestException)):
        return None
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EngineProblem("missing" if isinstance(exc, NotFound) else "unreachable", reason)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."
