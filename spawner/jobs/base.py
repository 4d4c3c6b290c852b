"""The one small interface every job backend implements.

A backend knows how to run a job on one kind of engine (a Docker engine, a swarm, ECS,
local processes) and is built from plain values (``BackendConfig``). It never touches
Dockyard's database: the worker gives it a ``JobSpec`` and gets back ``JobStatus`` values,
and decides what they mean for the run.

The contract that keeps a run from ever starting twice: ``start`` is idempotent per run
id. Backends name or tag the engine's job after the run (a container name, an ECS
``startedBy``/client token), so a second ``start`` for the same run finds the first job
and returns it instead of creating another.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from spawner.jobs.config import BackendConfig

# Labels (or tags) every backend puts on the jobs it starts, so reconcile can find them.
LABEL_NAMESPACE = "dockyard.namespace"
LABEL_RUN_ID = "dockyard.run-id"
LABEL_ATTEMPT = "dockyard.attempt"
LABEL_OWNER = "dockyard.owner"
LABEL_ROLE = "dockyard.role"


class EngineState(enum.StrEnum):
    PENDING = "pending"  # accepted by the engine, not running yet (created, pulling, placing)
    RUNNING = "running"
    EXITED = "exited"  # ended; exit_code says how
    MISSING = "missing"  # the engine knows nothing (more) of this job


@dataclass(frozen=True)
class JobSpec:
    """Everything an engine needs to run one attempt of a run; built by the worker."""

    run_id: int
    attempt: int
    owner: str
    image: str
    argv: tuple[str, ...]
    cpu: float
    memory_mb: int
    gpu: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    #: (network, alias) pairs the job also joins, e.g. its cluster's network as "driver".
    networks: tuple[tuple[str, str], ...] = ()

    def labels(self, namespace: str) -> dict[str, str]:
        return {
            LABEL_NAMESPACE: namespace,
            LABEL_ROLE: "job",
            LABEL_RUN_ID: str(self.run_id),
            LABEL_ATTEMPT: str(self.attempt),
            LABEL_OWNER: self.owner,
        }


@dataclass(frozen=True)
class JobStatus:
    """What the engine says about one job, in engine-neutral terms."""

    state: EngineState
    handle: str | None = None
    exit_code: int | None = None
    reason: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    node: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in (EngineState.EXITED, EngineState.MISSING)


class JobStartError(Exception):
    """The engine refused the job (missing image, impossible resources); the message says
    what to fix. Raised by ``start``; the run fails with this reason."""


def command_argv(command: Any) -> tuple[str, ...]:
    """A run's command as the argv the engine executes.

    A list is the exec form, run as given. A string is a shell command, run by the
    *container's* ``/bin/sh -c`` (never by a shell on the Dockyard host).
    """
    if isinstance(command, str):
        return ("/bin/sh", "-c", command)
    if isinstance(command, list | tuple) and command and all(isinstance(a, str) for a in command):
        return tuple(command)
    raise ValueError("a command is a non-empty list of strings or a shell string")


class JobBackend(ABC):
    """Start, watch, read and stop jobs on one kind of engine."""

    name: ClassVar[str]
    #: True when ``watch`` reports changes as they happen (else the worker polls).
    has_events: ClassVar[bool] = False

    def __init__(self, namespace: str, dockyard_url: str) -> None:
        self.namespace = namespace
        #: Dockyard's API as the jobs of this engine reach it (DOCKYARD_URL in their env).
        self.dockyard_url = dockyard_url

    @classmethod
    @abstractmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        """The backend for ``namespace``, from the values of ``config`` it understands:
        how the registry (``spawner.jobs.build_backend``) makes every backend."""

    @abstractmethod
    def start(self, spec: JobSpec) -> JobStatus:
        """Start the run's job and return its status (with its handle). Idempotent per
        run id: when the engine already has this run's job, return that one. Raise
        JobStartError when the engine cannot run it."""

    @abstractmethod
    def status(self, handle: str) -> JobStatus:
        """The job's current state; MISSING when the engine no longer knows it."""

    @abstractmethod
    def logs(self, handle: str) -> Iterator[bytes]:
        """Everything the job printed, from its start: follows while the job runs and
        ends when the job has ended (at once when it already has)."""

    @abstractmethod
    def stop(self, handle: str, grace_seconds: int) -> JobStatus:
        """Ask the job to stop (SIGTERM, then SIGKILL after the grace period) and return
        what the engine reports afterwards, never an assumed outcome."""

    @abstractmethod
    def remove(self, handle: str) -> None:
        """Forget the job on the engine (after its logs were kept). No error if gone."""

    @abstractmethod
    def list_jobs(self) -> dict[int, JobStatus]:
        """Every job of this installation's namespace on the engine, by run id: what
        reconcile compares with the database after a restart."""

    def watch(self, notify: Callable[[int], None], stop: threading.Event) -> None:
        """Call ``notify(run_id)`` whenever one of our jobs changes, until ``stop`` is
        set. Backends without an event stream return at once; the worker polls them."""
        return None

    def close(self) -> None:
        """Release connections."""
        return None
