"""Job pools: the named places a run can go, and who may send runs where.

An admin names pools in ``DOCKYARD_JOB_POOLS`` (JSON, or a ``[job_pools.NAME]`` table in
the TOML file)::

    {"swarm": {"backend": "swarm"},
     "ecs-fargate": {"backend": "ecs", "cluster": "batch", "subnets": ["subnet-1"],
                     "security_groups": ["sg-1"], "execution_role_arn": "arn:…",
                     "log_group": "/dockyard/jobs", "image_prefix": "1234.dkr.ecr…/",
                     "users": ["alice"]}}

``default`` always exists: it is the installation's own job backend
(``DOCKYARD_JOB_BACKEND``) unless the admin configures a pool of that name too.

This module is the policy half, shared by the web app and the worker: the shape of a
pool's configuration, the pools a user may choose, an image reference as a pool sees it.
It builds no backend; ``spawner/jobs/pools.py`` does that, in the worker only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from hub.settings import Settings

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


def image_in_pool(config: JobPoolConfig | None, image: str) -> str:
    """A catalog image reference as the pool's engine knows it: an explicit mapping
    first, else the registry prefix (unless the reference already carries it)."""
    if config is None:
        return image
    if image in config.images:
        return config.images[image]
    prefix = config.image_prefix
    if not prefix:
        return image
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return image if image.startswith(prefix) else prefix + image


class Caller(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def admin(self) -> bool: ...


@dataclass(frozen=True)
class PoolChoice:
    """A pool as the launch form and the API show it."""

    name: str
    backend: str
    description: str
    users: tuple[str, ...] | None = None

    def usable_by(self, caller: Caller) -> bool:
        return caller.admin or self.users is None or caller.name in self.users


@dataclass(frozen=True)
class PoolPolicy:
    """Which pools exist and who may use them (from the settings, read once)."""

    pools: tuple[PoolChoice, ...] = field(
        default_factory=lambda: (PoolChoice(DEFAULT_POOL, "", "the installation's job "
                                            "backend"),))

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolPolicy:
        choices: list[PoolChoice] = []
        configured: dict[str, Any] = dict(settings.job_pools)
        default = configured.pop(DEFAULT_POOL, None)
        if default is None:
            choices.append(PoolChoice(DEFAULT_POOL, settings.job_backend,
                                      "the installation's job backend"))
        else:
            choices.append(_choice(DEFAULT_POOL, default))
        choices += [_choice(name, config) for name, config in configured.items()]
        return cls(tuple(choices))

    @property
    def names(self) -> list[str]:
        return [pool.name for pool in self.pools]

    def usable_by(self, caller: Caller) -> list[PoolChoice]:
        return [pool for pool in self.pools if pool.usable_by(caller)]

    def needs_image(self, name: str) -> bool:
        """Whether runs in pool ``name`` need an image: all but local processes, which run
        in Dockyard's own Python environment (as local notebooks do)."""
        return not any(pool.name == name and pool.backend in IMAGELESS_BACKENDS
                       for pool in self.pools)

    def problem(self, name: str, caller: Caller) -> str | None:
        """Why ``caller`` may not send a run to pool ``name`` (None: they may)."""
        yours = ", ".join(pool.name for pool in self.usable_by(caller)) or "none"
        for pool in self.pools:
            if pool.name == name:
                return None if pool.usable_by(caller) else (
                    f"you may not use pool '{name}'; your pools: {yours}")
        return f"unknown pool '{name[:64]}'; choose one of: {yours}"


def _choice(name: str, config: JobPoolConfig) -> PoolChoice:
    users = tuple(config.users) if config.users is not None else None
    return PoolChoice(name, config.backend, config.description, users)
