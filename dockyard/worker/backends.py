"""One job backend per pool, built from the settings: what the worker dispatches with.

``default`` is the installation's job backend (``DOCKYARD_JOB_BACKEND``) unless the admin
configured a pool of that name; every pool in ``DOCKYARD_JOB_POOLS`` gets its own backend.
Both are built the same way: the settings and the pool's options become a plain
``BackendConfig`` here, and spawner's registry (``build_backend``) makes the backend. The
worker sends each run to its pool's backend and reconciles every pool after a restart.
A pool on Docker or Swarm also gets a cluster backend (``spawner.clusters``) from the same
``BackendConfig``: the Spark and Ray clusters of its runs and of users' notebooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from dockyard.containers import (
    container_environment,
    dockyard_url_for_containers,
    dockyard_url_for_processes,
    local_data_root,
)
from dockyard.jobs.pools import image_in_pool
from dockyard.runtime import job_backend_name
from dockyard.settings import Settings
from dockyard.settings.job_pools import DEFAULT_POOL, JobPoolConfig
from spawner.clusters import build_cluster_backend
from spawner.clusters.base import ClusterBackend
from spawner.environment import CONTAINER_DATA_ROOT, let_containers_write
from spawner.jobs import build_backend
from spawner.jobs.base import JobBackend, JobSpec, JobStartError
from spawner.jobs.config import BackendConfig, EcsOptions


class UnknownPool(JobStartError):
    """A run names a pool this installation does not have (any more)."""


@dataclass
class JobPool:
    name: str
    backend: JobBackend
    #: None for the default pool made from DOCKYARD_JOB_BACKEND.
    config: JobPoolConfig | None
    #: Storage, Spark and Ray settings as this pool's jobs get them.
    extra_env: dict[str, str]
    #: Where the pool's Spark and Ray clusters run; None for pools that cannot host them
    #: (ECS, local processes).
    clusters: ClusterBackend | None = field(default=None)

    @property
    def cluster_env(self) -> dict[str, str]:
        """What a cluster's head and workers get: the storage settings of the pool's jobs,
        without an installation-wide Spark master or Ray address (they are the cluster)."""
        return {name: value for name, value in self.extra_env.items()
                if name not in ("SPARK_MASTER", "RAY_ADDRESS")}

    @property
    def dockyard_url(self) -> str:
        return self.backend.dockyard_url

    def image_for(self, image: str) -> str:
        return image_in_pool(self.config, image)

    def prepare(self, spec: JobSpec) -> JobSpec:
        """The spec as this pool's engine runs it (its image reference, e.g. a registry)."""
        image = self.image_for(spec.image)
        return spec if image == spec.image else replace(spec, image=image)

    def close(self) -> None:
        self.backend.close()
        if self.clusters is not None:
            self.clusters.close()


class JobPools:
    """The pools a worker serves, by name."""

    def __init__(self, pools: dict[str, JobPool]) -> None:
        if DEFAULT_POOL not in pools:
            raise ValueError("the default pool is missing")
        self._pools = pools

    @classmethod
    def from_settings(cls, settings: Settings, *, namespace: str) -> JobPools:
        pools: dict[str, JobPool] = {}
        wanted: dict[str, JobPoolConfig | None] = dict(settings.job_pools)
        if DEFAULT_POOL not in wanted:
            # DOCKYARD_JOB_BACKEND's pool (config None), first.
            wanted = {DEFAULT_POOL: None, **wanted}
        try:
            for name, config in wanted.items():
                kind = config.backend if config else job_backend_name(settings)
                options = backend_config(kind, settings, config)
                backend = build_backend(kind, namespace, options)
                pools[name] = _pool(name, backend, config, settings)
                pools[name].clusters = build_cluster_backend(kind, namespace, options)
        except Exception:
            for pool in pools.values():
                pool.close()
            raise
        return cls(pools)

    @classmethod
    def of_backend(cls, backend: JobBackend, settings: Settings,
                   clusters: ClusterBackend | None = None) -> JobPools:
        """Only the default pool, on a backend made elsewhere (tests, embedding)."""
        pool = _pool(DEFAULT_POOL, backend, None, settings)
        pool.clusters = clusters
        return cls({DEFAULT_POOL: pool})

    def find(self, name: str) -> JobPool | None:
        return self._pools.get(name)

    def get(self, name: str) -> JobPool:
        """The pool named ``name``; UnknownPool (a JobStartError) if there is none."""
        pool = self._pools.get(name)
        if pool is None:
            raise UnknownPool(f"no job pool named '{name}' is configured (pools: "
                              f"{', '.join(self._pools)})")
        return pool

    def backend_name(self, name: str) -> str | None:
        pool = self._pools.get(name)
        return pool.backend.name if pool else None

    @property
    def default(self) -> JobPool:
        return self._pools[DEFAULT_POOL]

    @property
    def names(self) -> list[str]:
        return list(self._pools)

    def __iter__(self) -> Iterator[JobPool]:
        return iter(self._pools.values())

    def describe(self) -> str:
        return ", ".join(f"{pool.name} ({pool.backend.name})" for pool in self)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def _pool(name: str, backend: JobBackend, config: JobPoolConfig | None,
          settings: Settings) -> JobPool:
    # A job container sees a local data root where the backend mounted it.
    mounted_at = CONTAINER_DATA_ROOT if getattr(backend, "data_root", None) else None
    return JobPool(name, backend, config, container_environment(
        settings, backend.dockyard_url, data_root_mounted_at=mounted_at))


def backend_config(kind: str, settings: Settings, pool: JobPoolConfig | None) -> BackendConfig:
    """The plain values a ``kind`` backend is built from: the pool's own options (none
    for the default pool) over the installation's settings."""
    options = pool or JobPoolConfig(backend=kind)
    in_containers = kind in ("docker", "swarm")
    # Containers on this machine reach Dockyard at the Docker gateway; local processes,
    # and jobs on AWS, at its public URL.
    url = options.dockyard_url or settings.job_dockyard_url or (
        dockyard_url_for_containers(settings) if in_containers
        else dockyard_url_for_processes(settings))
    data_root = local_data_root(settings) if kind == "docker" else None
    if data_root:
        let_containers_write(Path(data_root), ours=settings.data_root == "")
    return BackendConfig(
        dockyard_url=url,
        # A swarm pool's jobs join the node's bridge unless the pool names a network.
        network=options.network or (settings.docker_network if kind == "docker" else ""),
        pids_limit=settings.job_pids_limit,
        pool_size=2 * settings.max_concurrent_runs + 8,
        stop_grace_seconds=settings.job_stop_grace_seconds,
        poll_seconds=options.poll_interval,
        data_root=data_root,
        root=settings.home / "jobs-local",
        constraints=tuple(options.constraints),
        gpu_resource=options.gpu_resource,
        ecs=_ecs_options(options) if kind == "ecs" else None,
    )


def _ecs_options(pool: JobPoolConfig) -> EcsOptions:
    return EcsOptions(
        cluster=pool.cluster, launch_type=pool.launch_type,
        capacity_provider=pool.capacity_provider, platform_version=pool.platform_version,
        subnets=tuple(pool.subnets), security_groups=tuple(pool.security_groups),
        assign_public_ip=pool.assign_public_ip, task_role_arn=pool.task_role_arn,
        execution_role_arn=pool.execution_role_arn, log_group=pool.log_group,
        log_stream_prefix=pool.log_stream_prefix, region=pool.region,
        run_as_user=pool.run_as_user)
