"""Cluster backends, built by name: Spark and Ray clusters (a head and N workers of the
engine's own) placed on a job pool's engine.

| name   | where clusters go                                          | file      |
|--------|------------------------------------------------------------|-----------|
| docker | containers on one Docker engine, on a bridge network each  | docker.py |
| swarm  | a head service and a workers service, on an overlay each   | swarm.py  |

``build_cluster_backend`` makes one from the same ``BackendConfig`` as the pool's job
backend, and answers None for the kinds of pool that cannot host clusters (ECS, local).
What runs in the containers, and how the head reports readiness, is ``commands.py``.
"""

from __future__ import annotations

import importlib

from spawner.clusters.base import ClusterBackend
from spawner.clusters.commands import driver_env
from spawner.jobs.config import BackendConfig

#: Backend name → "module:class", imported on first use.
_CLASSES: dict[str, str] = {
    "docker": "spawner.clusters.docker:DockerClusterBackend",
    "swarm": "spawner.clusters.swarm:SwarmClusterBackend",
}
#: The pool backends that can host clusters.
CLUSTER_BACKENDS = tuple(_CLASSES)

__all__ = ["CLUSTER_BACKENDS", "build_cluster_backend", "driver_env"]


def build_cluster_backend(kind: str, namespace: str,
                          config: BackendConfig) -> ClusterBackend | None:
    """The cluster backend of a pool whose job backend is ``kind``; None for the kinds
    that cannot host clusters."""
    if kind not in _CLASSES:
        return None
    module, _, attribute = _CLASSES[kind].partition(":")
    backend: type[ClusterBackend] = getattr(importlib.import_module(module), attribute)
    return backend.from_config(namespace, config)
