"""How an admin configures job pools (``DOCKYARD_JOB_POOLS``): the shape of one pool's
options, checked when the settings load. Which pools a user may choose and how an image
is named in a pool is ``dockyard/jobs/pools.py``; building a pool's backend is the
worker's (``dockyard/worker/backends.py``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_POOL = "default"
POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
PoolBackend = Literal["docker", "swarm", "ecs", "local"]
#: Backends whose runs use no image.
IMAGELESS_BACKENDS = frozenset({"local"})

_COMMON = {"backend", "description", "users", "image_prefix", "images", "dockyard_url"}
#: The options each kind of pool understands; any other option is a mistake worth naming.
OPTIONS_BY_BACKEND: dict[str, frozenset[str]] = {
    "local": frozenset(_COMMON),
    "docker": frozenset(_COMMON | {"network"}),
    "swarm": frozenset(_COMMON | {"network", "constraints", "gpu_resource", "poll_seconds"}),
    "ecs": frozenset(_COMMON | {
        "cluster", "launch_type", "capacity_provider", "platform_version", "subnets",
        "security_groups", "assign_public_ip", "task_role_arn", "execution_role_arn",
        "log_group", "log_stream_prefix", "region", "run_as_user", "poll_seconds",
    }),
}


class JobPoolConfig(BaseModel):
    """One pool, as the admin configures it. Only the options of its backend apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: PoolBackend = Field(description="docker, swarm, ecs or local.")
    description: str = Field("", max_length=200, description="What the launch form shows.")
    users: list[str] | None = Field(
        None, description="Who may send runs here (user names); unset: everyone. Admins "
        "may use every pool.")
    image_prefix: str = Field(
        "", max_length=200, description="Registry (and path) put before catalog image "
        "references, e.g. '123456789012.dkr.ecr.eu-west-1.amazonaws.com/'.")
    images: dict[str, str] = Field(
        default_factory=dict, description="Catalog reference → reference in this pool, for "
        "images the prefix does not fit.")
    dockyard_url: str = Field(
        "", description="Dockyard's URL as this pool's jobs reach it (DOCKYARD_URL). "
        "Default: DOCKYARD_JOB_DOCKYARD_URL, else the Docker gateway (docker, swarm) or "
        "the public URL (ecs).")
    # docker, swarm
    network: str = Field("", description="Docker network (docker) or swarm-scoped network "
                         "(swarm) jobs join. Default: DOCKYARD_DOCKER_NETWORK / the node's "
                         "bridge.")
    # swarm
    constraints: list[str] = Field(
        default_factory=list, description="Swarm placement constraints, e.g. "
        "'node.labels.jobs==true'.")
    gpu_resource: str = Field(
        "", description="Swarm generic resource that counts GPUs (e.g. 'NVIDIA-GPU'); "
        "unset: runs asking for GPUs are refused.")
    poll_seconds: float | None = Field(
        None, ge=0.2, le=60, description="How often the worker asks the swarm or ECS what "
        "changed (one batched listing per pool). Default: 0.5 (swarm: a manager on the "
        "same network), 2 (ecs: AWS rate limits).")
    # ecs
    cluster: str = Field("", description="ECS cluster name or ARN.")
    launch_type: Literal["FARGATE", "EC2"] = Field("FARGATE", description="FARGATE or EC2.")
    capacity_provider: str = Field(
        "", description="Run through this capacity provider (e.g. FARGATE_SPOT) instead "
        "of the launch type.")
    platform_version: str = Field("", description="Fargate platform version; unset: LATEST.")
    subnets: list[str] = Field(default_factory=list, description="awsvpc subnets "
                               "(required for Fargate).")
    security_groups: list[str] = Field(default_factory=list, description="awsvpc security "
                                       "groups.")
    assign_public_ip: bool = Field(False, description="Give Fargate tasks a public IP (only "
                                   "for subnets without a NAT route).")
    task_role_arn: str = Field("", description="IAM role the job's code runs as.")
    execution_role_arn: str = Field(
        "", description="IAM role ECS uses to pull the image and write logs (required for "
        "Fargate).")
    log_group: str = Field("", description="CloudWatch Logs group of the awslogs driver "
                           "(must exist).")
    log_stream_prefix: str = Field("dockyard", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                   description="awslogs stream prefix.")
    region: str = Field("", description="AWS region; unset: the standard AWS chain "
                        "(AWS_REGION, ~/.aws/config).")
    run_as_user: str = Field("1000:1000", pattern=r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$",
                             description="User the ECS job runs as (never root).")

    @model_validator(mode="after")
    def _fits_backend(self) -> JobPoolConfig:
        allowed = OPTIONS_BY_BACKEND[self.backend]
        foreign = sorted(set(self.model_fields_set) - allowed)
        if foreign:
            raise ValueError(f"not an option of a {self.backend} pool: {', '.join(foreign)} "
                             f"(its options: {', '.join(sorted(allowed - {'backend'}))})")
        if self.backend == "ecs":
            missing = [name for name in ("cluster", "log_group") if not getattr(self, name)]
            if self.on_fargate:
                missing += [name for name in ("subnets", "execution_role_arn")
                            if not getattr(self, name)]
            if missing:
                raise ValueError(f"an ecs pool needs {', '.join(missing)}")
            if self.run_as_user.split(":", 1)[0] in ("root", "0"):
                raise ValueError("run_as_user: jobs never run as root")
        return self

    @property
    def poll_interval(self) -> float:
        if self.poll_seconds is not None:
            return self.poll_seconds
        return 0.5 if self.backend == "swarm" else 2.0

    @property
    def on_fargate(self) -> bool:
        return self.launch_type == "FARGATE" or self.capacity_provider.startswith("FARGATE")


def parse_pools(value: Any) -> Any:
    """The settings validator: each pool checked on its own, so that a mistake is
    reported with the pool's name; names fit in a run's row and in engine labels."""
    if not isinstance(value, Mapping):
        return value  # pydantic reports the wrong type
    pools: dict[str, JobPoolConfig] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not POOL_NAME.match(name):
            raise ValueError(f"pool name '{name}': 1-32 lower-case letters, digits and -, "
                             "starting with a letter or digit")
        try:
            pools[name] = raw if isinstance(raw, JobPoolConfig) \
                else JobPoolConfig.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            message = str(problem["msg"]).removeprefix("Value error, ")
            raise ValueError(f"pool '{name}': {where + ': ' if where else ''}{message}") \
                from None
    return pools
