"""One job backend per pool, built from the settings: what the worker dispatches with.

``default`` is the installation's job backend (``DOCKYARD_JOB_BACKEND``, built by
``make_backend``) unless the admin configured a pool of that name; every pool in
``DOCKYARD_JOB_POOLS`` gets its own backend. The worker sends each run to its pool's
backend and reconciles every pool after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from dockyard.containers import container_environment
from dockyard.jobs.pools import DEFAULT_POOL, JobPoolConfig, image_in_pool
from dockyard.settings import Settings
from spawner.environment import CONTAINER_DATA_ROOT
from spawner.jobs import make_backend, resolve_backend_name
from spawner.jobs.base import JobBackend, JobSpec, JobStartError


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

    @property
    def dockyard_url(self) -> str:
        return self.backend.dockyard_url

    def image_for(self, image: str) -> str:
        return image_in_pool(self.config, image)

    def prepare(self, spec: JobSpec) -> JobSpec:
        """The spec as this pool's engine runs it (its image reference, e.g. a registry)."""
        image = self.image_for(spec.image)
        return spec if image == spec.image else replace(spec, image=image)


class JobPools:
    """The pools a worker serves, by name."""

    def __init__(self, pools: dict[str, JobPool]) -> None:
        if DEFAULT_POOL not in pools:
            raise ValueError("the default pool is missing")
        self._pools = pools

    @classmethod
    def from_settings(cls, settings: Settings, *, namespace: str) -> JobPools:
        pools: dict[str, JobPool] = {}
        configured = dict(settings.job_pools)
        try:
            if DEFAULT_POOL not in configured:
                backend = make_backend(resolve_backend_name(settings), settings,
                                       namespace=namespace)
                pools[DEFAULT_POOL] = _pool(DEFAULT_POOL, backend, None, settings)
            for name, config in configured.items():
                backend = build_backend(config, settings, namespace=namespace)
                pools[name] = _pool(name, backend, config, settings)
        except Exception:
            for pool in pools.values():
                pool.backend.close()
            raise
        return cls(pools)

    @classmethod
    def of_backend(cls, backend: JobBackend, settings: Settings) -> JobPools:
        """Only the default pool, on a backend made elsewhere (tests, embedding)."""
        return cls({DEFAULT_POOL: _pool(DEFAULT_POOL, backend, None, settings)})

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
            pool.backend.close()


def _pool(name: str, backend: JobBackend, config: JobPoolConfig | None,
          settings: Settings) -> JobPool:
    # A job container sees a local data root where the backend mounted it.
    mounted_at = CONTAINER_DATA_ROOT if getattr(backend, "data_root", None) else None
    return JobPool(name, backend, config, container_environment(
        settings, backend.dockyard_url, data_root_mounted_at=mounted_at))


def build_backend(config: JobPoolConfig, settings: Settings, *, namespace: str) -> JobBackend:
    """The backend of one configured pool."""
    url = config.dockyard_url or settings.job_dockyard_url
    if config.backend in ("docker", "local"):
        backend = make_backend(config.backend, settings, namespace=namespace)
        if config.network and hasattr(backend, "network"):
            backend.network = config.network
        if config.dockyard_url:
            backend.dockyard_url = config.dockyard_url
        return backend
    if config.backend == "swarm":
        from dockyard.containers import dockyard_url_for_containers
        from spawner.jobs.swarm import SwarmJobBackend

        return SwarmJobBackend(
            namespace, url or dockyard_url_for_containers(settings), network=config.network,
            constraints=config.constraints, gpu_resource=config.gpu_resource,
            pids_limit=settings.job_pids_limit,
            stop_grace_seconds=settings.job_stop_grace_seconds,
            poll_seconds=config.poll_interval, pool_size=2 * settings.max_concurrent_runs + 8)
    if config.backend == "ecs":
        from botocore.exceptions import NoRegionError

        from dockyard.containers import dockyard_url_for_processes
        from spawner.jobs.ecs import EcsJobBackend, EcsOptions

        options = EcsOptions(
            cluster=config.cluster, launch_type=config.launch_type,
            capacity_provider=config.capacity_provider,
            platform_version=config.platform_version, subnets=tuple(config.subnets),
            security_groups=tuple(config.security_groups),
            assign_public_ip=config.assign_public_ip, task_role_arn=config.task_role_arn,
            execution_role_arn=config.execution_role_arn, log_group=config.log_group,
            log_stream_prefix=config.log_stream_prefix, region=config.region,
            run_as_user=config.run_as_user, stop_grace_seconds=settings.job_stop_grace_seconds,
            poll_seconds=config.poll_interval)
        try:
            # Jobs on AWS reach Dockyard at its public URL unless told otherwise.
            return EcsJobBackend(namespace, url or dockyard_url_for_processes(settings), options)
        except NoRegionError:
            raise ValueError("an ecs pool needs a region: set its 'region' or AWS_REGION") \
                from None
    raise ValueError(f"unknown pool backend {config.backend!r}")
