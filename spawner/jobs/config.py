"""What a job backend is built from: plain values, filled in by the service from its
settings (``dockyard/worker/backends.py``), so that no backend reads Dockyard's settings.

Nothing here imports an engine's SDK: the service builds these values before it knows
whether the backend's module (and its SDK) will be loaded at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EcsOptions:
    """One ECS pool's cluster, network, roles and logs (see
    dockyard.settings.job_pools.JobPoolConfig). Not its timings: those are every
    backend's (``BackendConfig``), given to ``EcsJobBackend`` itself."""

    cluster: str
    launch_type: str = "FARGATE"
    capacity_provider: str = ""
    platform_version: str = ""
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    assign_public_ip: bool = False
    task_role_arn: str = ""
    execution_role_arn: str = ""
    log_group: str = ""
    log_stream_prefix: str = "dockyard"
    region: str = ""
    run_as_user: str = "1000:1000"

    @property
    def on_fargate(self) -> bool:
        return self.launch_type == "FARGATE" or self.capacity_provider.startswith("FARGATE")

    @property
    def network_mode(self) -> str:
        return "awsvpc" if self.on_fargate or self.subnets else "bridge"


@dataclass(frozen=True)
class BackendConfig:
    """Everything one backend is built from (``JobBackend.from_config``). Each kind of
    backend reads the values it understands, named in the comments; the others keep
    their defaults."""

    #: Dockyard's API as the jobs of this engine reach it (DOCKYARD_URL in their env).
    dockyard_url: str
    #: docker: the network jobs join; swarm: a swarm-scoped network, "" for none.
    network: str = ""
    #: docker, swarm: the most processes inside one job.
    pids_limit: int = 1024
    #: docker, swarm: connections kept open to the engine.
    pool_size: int = 16
    #: swarm, ecs: time a job gets between SIGTERM and SIGKILL when it is removed.
    stop_grace_seconds: int = 10
    #: swarm, ecs: how often the engine is asked what changed.
    poll_seconds: float = 2.0
    #: docker: a host directory (the local data root), mounted in every job.
    data_root: str | None = None
    #: local: where each run's state directory is kept.
    root: Path | None = None
    #: swarm: placement constraints, and the generic resource that counts GPUs.
    constraints: tuple[str, ...] = ()
    gpu_resource: str = ""
    #: ecs: the pool's cluster, network, roles and logs.
    ecs: EcsOptions | None = None
