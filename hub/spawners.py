"""Which spawner JupyterHub runs notebook servers with, and how it is configured from
Dockyard's settings and the runtime chosen at start-up.

Containers (Docker or Swarm) use the spawners of ``spawner/notebooks/``, handed plain
values and Dockyard's image catalog as their ``ImageSource``; without an engine, local
processes (JupyterHub's ``SimpleLocalProcessSpawner``) stand in, in development mode.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dockyard.containers import (
    container_environment,
    container_gateway,
    dockyard_url_for_containers,
    dockyard_url_for_processes,
    local_data_root,
)
from dockyard.runtime import RuntimeChoice
from dockyard.settings import Settings
from hub.notebook_images import NotebookImages
from spawner.environment import CONTAINER_DATA_ROOT, let_containers_write
from spawner.notebooks.docker import DockyardDockerSpawner, negotiated_api_version
from spawner.notebooks.swarm import DockyardSwarmSpawner

# Jupyter configuration that gives a home's first server Welcome.ipynb; the notebook image
# has it at /opt/dockyard/welcome, local processes take it from the repository.
WELCOME_CONFIG = Path(__file__).resolve().parents[1] / "images" / "notebook" / "welcome"


def configure_spawner(c: Any, settings: Settings, runtime: RuntimeChoice, *, python: str,
                      environ: dict[str, str]) -> None:
    c.Spawner.server_token_scopes = [
        "users:activity!user",
        "access:servers!server",
        # The data client calls Dockyard with the notebook's own token.
        "access:services!service=dockyard",
    ]
    c.Spawner.default_url = "/lab"
    c.Spawner.start_timeout = settings.notebook_start_timeout
    # start() returns only once the server answers, so the hub's own wait that follows
    # succeeds at once; this limit only matters if the server dies in between.
    c.Spawner.http_timeout = 60
    c.JupyterHub.allow_named_servers = settings.named_servers > 0
    c.JupyterHub.named_server_limit_per_user = settings.named_servers
    template_vars = {"dockyard_notebooks": runtime.spawner}
    if runtime.spawner in ("docker", "swarm"):
        _configure_containers(c, settings, runtime)
    else:
        _configure_local(c, settings, python)
        template_vars["dockyard_dev_mode_note"] = (
            "Development mode: notebook servers run as local processes on this machine, "
            "without containers, limits or isolation."
        )
    c.JupyterHub.template_vars.update(template_vars)  # merges with what others set


def _configure_containers(c: Any, settings: Settings, runtime: RuntimeChoice) -> None:
    gateway = container_gateway(settings)
    # The hub API listens only on the gateway address: reachable from our containers and
    # from the proxy on this machine, nowhere else.
    c.JupyterHub.hub_ip = gateway
    c.JupyterHub.hub_connect_ip = gateway
    swarm = runtime.spawner == "swarm"
    spawner = DockyardSwarmSpawner if swarm else DockyardDockerSpawner
    c.JupyterHub.spawner_class = f"{spawner.__module__}.{spawner.__name__}"
    section = c.DockyardDockerSpawner
    section.client_kwargs = {"version": negotiated_api_version()}
    section.image_source = NotebookImages(settings.db_url, runtime.notebook_image)
    section.image = runtime.notebook_image
    section.profiles = [profile.model_dump() for profile in settings.notebook_profiles]
    section.name_prefix = settings.docker_name_prefix
    section.shared_writable = settings.shared_writable
    section.remove = True  # a stopped server's container goes; its home volume stays
    data_root = local_data_root(settings)
    if data_root:
        section.data_root = data_root
        let_containers_write(Path(data_root), ours=settings.data_root == "",
                             writers="Notebooks", logger=logging.getLogger("JupyterHub"))
    if not swarm:
        # Images reach the engine through the catalog (built or pulled by an admin there);
        # a spawn never pulls on its own, which would stall a login burst on a registry.
        section.pull_policy = "never"
        section.network_name = settings.docker_network
        # The hub and proxy on this machine reach the container on the bridge directly,
        # so no port is published on the host.
        section.use_internal_ip = True
    c.Spawner.environment = container_environment(
        settings, dockyard_url_for_containers(settings),
        data_root_mounted_at=CONTAINER_DATA_ROOT if data_root else None,
    )


def _configure_local(c: Any, settings: Settings, python: str) -> None:
    users = settings.home / "users"
    users.mkdir(parents=True, exist_ok=True)
    c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
    c.SimpleLocalProcessSpawner.home_dir_template = str(users / "{username}")
    c.Spawner.cmd = [str(Path(python).parent / "jupyterhub-singleuser")]
    if os.geteuid() == 0:
        c.Spawner.args = ["--allow-root"]
    environment = container_environment(settings, dockyard_url_for_processes(settings))
    if WELCOME_CONFIG.is_dir():
        # The notebook image's welcome for a first server (Welcome.ipynb, copied once).
        environment["JUPYTER_CONFIG_PATH"] = str(WELCOME_CONFIG)
    c.Spawner.environment = environment
