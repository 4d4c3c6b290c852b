"""What the engine adapters share about containers: the user they run as, where a local
data root is mounted in them, and the host address they reach this machine at.

Which address Dockyard listens on and what a container's environment holds are the
service's decisions (``dockyard/containers.py``); this module only answers from the
engine and the filesystem, from plain values.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# The user notebook and job containers run as (the images' jovyan).
CONTAINER_UID, CONTAINER_GID = 1000, 100
# Where containers see a local data root (a bind mount of DOCKYARD_DATA_ROOT).
CONTAINER_DATA_ROOT = "/dockyard/data"


def uses_containers(spawner: str, job_backend: str) -> bool:
    """Will anything run in a container that needs to call Dockyard?"""
    return spawner in ("docker", "swarm") or job_backend in ("docker", "swarm")


@functools.cache
def network_gateway(network_name: str) -> str:
    """The host address containers on Docker network ``network_name`` reach this machine at."""
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


def let_containers_write(data_root: Path, *, ours: bool, writers: str = "Containers",
                         logger: logging.Logger = log) -> None:
    """Notebook and job containers (uid 1000) write their batches into a local data root.
    Dockyard's own default directory is handed to that user when we run as root; a
    directory an admin chose is never changed behind their back, only reported: on
    ``logger``, as a problem of ``writers`` (the hub says "Notebooks", on its own log)."""
    data_root.mkdir(parents=True, exist_ok=True)
    if data_root.stat().st_uid == CONTAINER_UID:
        return
    if ours and os.geteuid() == 0:
        os.chown(data_root, CONTAINER_UID, CONTAINER_GID)
        return
    if data_root.stat().st_mode & 0o002 == 0:
        logger.warning("%s run as uid %s and may not be able to write the data root %s; "
                       "make it writable for that user, or use an s3:// data root.",
                       writers, CONTAINER_UID, data_root)


