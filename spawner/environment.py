"""What containers see of Dockyard: the address they reach it at, and their environment.

Notebook servers and job containers share these, so they are computed here once.

Reachability: the public proxy listens on loopback (``DOCKYARD_IP``), which a container
cannot reach. The hub API and Dockyard's web service therefore also listen on the Docker
network's gateway address, a host address that only this machine and its containers
can reach; nothing listens on 0.0.0.0.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from pathlib import Path

from dockyard.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# The user notebook and job containers run as (the images' jovyan).
CONTAINER_UID, CONTAINER_GID = 1000, 100
# Where containers see a local data root (a bind mount of DOCKYARD_DATA_ROOT).
CONTAINER_DATA_ROOT = "/dockyard/data"


def uses_containers(spawner: str, job_backend: str) -> bool:
    """Will anything run in a container that needs to call Dockyard?"""
    return spawner in ("docker", "swarm") or job_backend in ("docker", "swarm")


def container_gateway(settings: Settings) -> str:
    """The host address containers on Dockyard's Docker network use to reach this machine
    (``DOCKYARD_HUB_CONNECT_IP``, else the network's gateway)."""
    if settings.hub_connect_ip:
        return settings.hub_connect_ip
    return _network_gateway(settings.docker_network)


@functools.cache
def _network_gateway(network_name: str) -> str:
    from spawner.engine import docker_client

    client = docker_client(timeout=10)
    try:
        network = client.networks.get(network_name)
    finally:
        client.close()
    for config in network.attrs.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
        subnet = config.get("Subnet", "")
        if subnet and ipaddress.ip_network(subnet).version == 4:
            # The default bridge often reports no gateway; Docker's IPAM gives the bridge
            # the subnet's first address.
            return str(ipaddress.ip_network(subnet)[1])
    raise RuntimeError(
        f"Docker network '{network_name}' has no gateway address; set "
        "DOCKYARD_HUB_CONNECT_IP to an address of this machine that containers can reach."
    )


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


def let_containers_write(data_root: Path, *, ours: bool) -> None:
    """Notebook and job containers (uid 1000) write their batches into a local data root.
    Dockyard's own default directory is handed to that user when we run as root; a
    directory an admin chose is never changed behind their back, only reported."""
    data_root.mkdir(parents=True, exist_ok=True)
    if data_root.stat().st_uid == CONTAINER_UID:
        return
    if ours and os.geteuid() == 0:
        os.chown(data_root, CONTAINER_UID, CONTAINER_GID)
        return
    if data_root.stat().st_mode & 0o002 == 0:
        log.warning("Containers run as uid %s and may not be able to write the data root %s; "
                    "make it writable for that user, or use an s3:// data root.",
                    CONTAINER_UID, data_root)


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
