"""Job backends, built by name: the worker asks for one and never imports an engine's SDK.

| name   | where runs go                            | file        |
|--------|------------------------------------------|-------------|
| docker | containers on one Docker engine          | docker.py   |
| local  | local processes (development mode)       | local.py    |
| swarm  | Swarm services in job mode               | swarm.py    |
| ecs    | AWS ECS tasks (Fargate or EC2)           | ecs.py      |

``make_backend`` builds the installation's own backend (DOCKYARD_JOB_BACKEND: docker or
local); pools.py builds one backend per job pool (DOCKYARD_JOB_POOLS), swarm and ecs
among them, with the pool's options.
"""

from __future__ import annotations

from pathlib import Path

from dockyard.settings import Settings
from spawner.jobs.base import JobBackend

BACKEND_NAMES = ("docker", "local")


def resolve_backend_name(settings: Settings) -> str:
    """``auto`` means Docker when an engine answers, else local processes."""
    if settings.job_backend != "auto":
        return settings.job_backend
    from spawner.engine import check_docker

    return "docker" if check_docker().available else "local"


def make_backend(name: str, settings: Settings, *, namespace: str) -> JobBackend:
    if name == "docker":
        from dockyard.containers import dockyard_url_for_containers, local_data_root
        from spawner.environment import let_containers_write
        from spawner.jobs.docker import DockerJobBackend

        url = settings.job_dockyard_url or dockyard_url_for_containers(settings)
        data_root = local_data_root(settings)
        if data_root:
            let_containers_write(Path(data_root), ours=settings.data_root == "")
        return DockerJobBackend(
            namespace, url, network=settings.docker_network, pids_limit=settings.job_pids_limit,
            pool_size=2 * settings.max_concurrent_runs + 8, data_root=data_root,
        )
    if name == "local":
        from dockyard.containers import dockyard_url_for_processes
        from spawner.jobs.local import LocalJobBackend

        url = settings.job_dockyard_url or dockyard_url_for_processes(settings)
        return LocalJobBackend(namespace, url, root=settings.home / "jobs-local")
    raise ValueError(f"unknown job backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
