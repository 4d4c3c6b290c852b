"""Job backends, built by name: the worker asks for one and never imports an engine's SDK.

| name   | where runs go                            | file        |
|--------|------------------------------------------|-------------|
| docker | containers on one Docker engine          | docker.py   |
| local  | local processes (development mode)       | local.py    |
| swarm  | Swarm services in job mode               | swarm.py    |
| ecs    | AWS ECS tasks (Fargate or EC2)           | ecs.py      |

``build_backend`` is the one way a backend is made: the worker's pools
(``dockyard/worker/backends.py``) name the kind and give the plain values
(``BackendConfig``). A backend's module, and the SDK it needs, is imported only when a
backend of its kind is built.
"""

from __future__ import annotations

import importlib

from spawner.jobs.base import JobBackend
from spawner.jobs.config import BackendConfig

#: Backend name → "module:class", imported on first use.
BACKENDS: dict[str, str] = {
    "docker": "spawner.jobs.docker:DockerJobBackend",
    "local": "spawner.jobs.local:LocalJobBackend",
    "swarm": "spawner.jobs.swarm:SwarmJobBackend",
    "ecs": "spawner.jobs.ecs:EcsJobBackend",
}


def backend_class(name: str) -> type[JobBackend]:
    try:
        module, _, attribute = BACKENDS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown job backend {name!r}; choose one of "
                         f"{', '.join(BACKENDS)}") from None
    backend: type[JobBackend] = getattr(importlib.import_module(module), attribute)
    return backend


def build_backend(name: str, namespace: str, config: BackendConfig) -> JobBackend:
    """The backend called ``name`` for ``namespace``, built from ``config``."""
    return backend_class(name).from_config(namespace, config)
