"""What containers see of Dockyard: the address they reach it at, and their environment.

Notebook servers and job containers share these, so they are computed here once, from the
settings; the adapters in ``spawner/`` get the results as plain values.

Reachability: the public proxy listens on loopback (``DOCKYARD_IP``), which a container
cannot reach. The hub API and Dockyard's web service therefore also listen on the Docker
network's gateway address, a host address that only this machine and its containers
can reach; nothing listens on 0.0.0.0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import requests

from dockyard.errors import Unavailable
from dockyard.jobs.notebooks import HomeFileMissing
from dockyard.settings import Settings
from spawner.engine import check_docker, engine_problem, image_present
from spawner.environment import LOOPBACK, network_gateway, uses_containers
from spawner.notebooks.homes import DirectoryHomes, VolumeHomes

__all__ = [
    "container_environment", "container_gateway", "dockyard_url_for_containers",
    "NotebookHomes", "dockyard_url_for_processes", "local_data_root", "web_bind_address",
]


def container_gateway(settings: Settings) -> str:
    """The host address containers on Dockyard's Docker network use to reach this machine
    (``DOCKYARD_HUB_CONNECT_IP``, else the network's gateway)."""
    if settings.hub_connect_ip:
        return settings.hub_connect_ip
    return network_gateway(settings.docker_network)


def web_bind_address(settings: Settings, spawner: str, job_backend: str) -> str:
    """Where Dockyard's web service listens: the gateway when containers must call it
    (the proxy reaches that host address too), loopback otherwise."""
    # Jobs of a Docker or Swarm pool on this engine call it too (DOCKYARD_JOB_POOLS).
    pools = {pool.backend for pool in settings.job_pools.values()}
    containers = uses_containers(spawner, job_backend) or bool(pools & {"docker", "swarm"})
    return container_gateway(settings) if containers else LOOPBACK


def dockyard_url_for_containers(settings: Settings) -> str:
    """DOCKYARD_URL inside notebook and job containers: the web service, directly, at
    the gateway address (see ``web_bind_address``)."""
    if settings.services_mode == "external":
        # docker compose: the web service is a container on the same network as ours.
        return settings.web_url.rstrip("/") + "/services/dockyard/"
    return f"http://{container_gateway(settings)}:{settings.web_port}/services/dockyard/"


def dockyard_url_for_processes(settings: Settings) -> str:
    """DOCKYARD_URL for local processes (development mode): the public URL."""
    return settings.base_url + "/services/dockyard/"


def local_data_root(settings: Settings) -> str | None:
    """The host directory of the data root, when it is one (not s3://): containers need
    it mounted, at CONTAINER_DATA_ROOT."""
    return None if settings.data_dir.startswith("s3://") else settings.data_dir


def container_environment(settings: Settings, dockyard_url: str, *,
                          data_root_mounted_at: str | None = None) -> dict[str, str]:
    """Variables every notebook server and job finds set, so the data client, Spark and
    Ray work with no setup. The token is not here: notebooks use their own
    JUPYTERHUB_API_TOKEN, jobs get a run-scoped DOCKYARD_TOKEN. A local data root
    mounted elsewhere in a container is named by ``data_root_mounted_at``."""
    env = {
        "DOCKYARD_URL": dockyard_url,
        "DOCKYARD_DATA_ROOT": data_root_mounted_at or settings.data_dir,
    }
    if settings.data_s3_endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = settings.data_s3_endpoint_url
    if settings.data_s3_region:
        env["AWS_DEFAULT_REGION"] = settings.data_s3_region
    if settings.data_s3_client_access_key and settings.data_s3_client_secret_key:
        # The store user for containers (docker compose makes one that cannot delete).
        env["AWS_ACCESS_KEY_ID"] = settings.data_s3_client_access_key
        env["AWS_SECRET_ACCESS_KEY"] = settings.data_s3_client_secret_key.get_secret_value()
    if settings.spark_master:
        env["SPARK_MASTER"] = settings.spark_master
    if settings.ray_address:
        env["RAY_ADDRESS"] = settings.ray_address
    return env


class _HomeReader(Protocol):
    def read(self, username: str, relative_path: str, max_bytes: int) -> bytes: ...


class _HomeFilesUnanswered(Exception):
    """The engine window's home-file route did not answer, or failed."""


class _HomesThroughEngineWindow:
    """Homes read by docker compose's engine window (``dockyard.engine_proxy``, at
    DOCKYARD_HOME_FILES_URL): the web service has no socket; the window has, and reads
    the file as VolumeHomes would."""

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self, username: str, relative_path: str, max_bytes: int) -> bytes:
        params = {"user": username, "path": relative_path, "max_bytes": str(max_bytes)}
        try:
            # The window creates a container and reads an archive: allow it time.
            with requests.get(self.url, params=params, timeout=(5, 90), stream=True) as answer:
                if answer.status_code in (400, 404):
                    raise FileNotFoundError(_message(answer))
                if answer.status_code != 200:
                    raise _HomeFilesUnanswered(f"{self.url} answered {answer.status_code}: "
                                              f"{_message(answer)}")
                content = bytearray()
                for chunk in answer.iter_content(64 * 1024):
                    content += chunk
                    if len(content) >= max_bytes:
                        break
                return bytes(content[:max_bytes])
        except requests.RequestException as exc:
            raise _HomeFilesUnanswered(f"no answer from {self.url}: "
                                      f"{type(exc).__name__}") from exc


def _message(answer: requests.Response) -> str:
    try:
        return str(answer.json()["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return answer.reason or f"status {answer.status_code}"


class NotebookHomes:
    """Users' homes as notebook servers see them (``dockyard.jobs.notebooks.HomeFiles``):
    Docker volumes when notebooks run in containers, directories when they are local
    processes, or through the engine window when DOCKYARD_HOME_FILES_URL is set (docker
    compose's web service has no socket). With DOCKYARD_SPAWNER=auto the engine is asked
    on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._reader: _HomeReader | None = None

    def _chosen(self) -> _HomeReader:
        if self._reader is None:
            settings = self._settings
            if settings.home_files_url:
                self._reader = _HomesThroughEngineWindow(settings.home_files_url)
            elif self._spawner() in ("docker", "swarm"):
                self._reader = VolumeHomes(settings.docker_name_prefix, settings.notebook_image)
            elif settings.spawner == "auto":
                # No engine (yet): ask again next time rather than settle on directories.
                return DirectoryHomes(Path(settings.home) / "users")
            else:
                self._reader = DirectoryHomes(Path(settings.home) / "users")
        return self._reader

    def _spawner(self) -> str:
        if self._settings.spawner != "auto":
            return self._settings.spawner
        image = self._settings.notebook_image
        return "docker" if check_docker().available and image_present(image) else "local"

    def read(self, owner: str, path: str, max_bytes: int) -> bytes:
        try:
            return self._chosen().read(owner, path, max_bytes)
        except FileNotFoundError as exc:
            raise HomeFileMissing(str(exc)) from None
        except Exception as exc:
            # The engine (or docker compose's window on it) down or refusing: say so,
            # and what works instead.
            problem = engine_problem(exc)
            reason = problem.reason if problem else str(exc).splitlines()[0][:300]
            raise Unavailable(f"Dockyard could not read your home ({reason}); upload the "
                              "notebook instead") from exc
