"""Notebook servers: containers through DockerSpawner, or local processes in development."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hub.choices import RuntimeChoice
from hub.settings import Settings


def service_url_for_containers(settings: Settings, host: str) -> str:
    return f"http://{host}:{settings.port}/services/dockyard/"


def notebook_environment(settings: Settings, dockyard_url: str) -> dict[str, str]:
    """What every notebook server finds in its environment."""
    return {
        "DOCKYARD_URL": dockyard_url,
        "DOCKYARD_DATA_ROOT": settings.data_dir,
    }


def docker_gateway(settings: Settings) -> str:
    """The address containers on our network use to reach this machine."""
    if settings.hub_connect_ip:
        return settings.hub_connect_ip
    from spawner.engine import docker_client

    client = docker_client(timeout=5)
    try:
        network = client.networks.get(settings.docker_network)
        configs = network.attrs.get("IPAM", {}).get("Config") or []
        for cfg in configs:
            if cfg.get("Gateway"):
                return str(cfg["Gateway"])
    finally:
        client.close()
    return "172.17.0.1"


def configure_spawner(c: Any, settings: Settings, runtime: RuntimeChoice, *, python: str,
                      environ: dict[str, str]) -> None:
    if runtime.spawner in ("docker", "swarm"):
        gateway = docker_gateway(settings)
        # The hub API listens only on the gateway address: reachable from our
        # containers and from the proxy on this machine, nowhere else.
        c.JupyterHub.hub_ip = gateway
        c.JupyterHub.hub_connect_ip = gateway
        c.JupyterHub.spawner_class = (
            "dockerspawner.SwarmSpawner" if runtime.spawner == "swarm" else "dockerspawner.DockerSpawner"
        )
        c.DockerSpawner.image = runtime.notebook_image
        c.DockerSpawner.network_name = settings.docker_network
        c.DockerSpawner.remove = False
        c.DockerSpawner.name_template = "dockyard-{username}--{servername}"
        c.DockerSpawner.volumes = {"dockyard-home-{username}": "/home/jovyan"}
        c.DockerSpawner.extra_host_config = {"security_opt": ["no-new-privileges"]}
        c.Spawner.environment = notebook_environment(
            settings, service_url_for_containers(settings, gateway)
        )
    else:
        users = settings.home / "users"
        users.mkdir(parents=True, exist_ok=True)
        c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
        c.SimpleLocalProcessSpawner.home_dir_template = str(users / "{username}")
        c.Spawner.cmd = [str(Path(python).parent / "jupyterhub-singleuser")]
        if os.geteuid() == 0:
            c.Spawner.args = ["--allow-root"]
        c.Spawner.environment = notebook_environment(settings, settings.base_url + "/services/dockyard/")
    c.Spawner.server_token_scopes = [
        "users:activity!user",
        "access:servers!server",
        "access:services!service=dockyard",
    ]
    c.Spawner.default_url = "/lab"
