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

This module is the policy half, shared by the web app and the worker: the pools a user may
choose, an image reference as a pool sees it. The shape of a pool's configuration is
``dockyard/settings/job_pools.py``; the worker builds each pool's backend
(``dockyard/worker/backends.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from dockyard.settings import Settings
from dockyard.settings.job_pools import DEFAULT_POOL, IMAGELESS_BACKENDS, JobPoolConfig


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
