"""What the parts of one worker share: who it is (its name, the namespace of its jobs),
where the runs are (its database sessions) and where they run (its job pools)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dockyard.jobs.artifacts import ArtifactStore
from dockyard.models import Run
from dockyard.settings import Settings
from dockyard.worker.backends import JobPool, JobPools


def job_namespace(settings: Settings) -> str:
    """The label value that marks this installation's jobs: set, or derived from where
    the database is (so all workers of one installation agree without configuration)."""
    if settings.job_namespace:
        return settings.job_namespace
    url = make_url(settings.db_url)
    where = f"{url.get_backend_name()}:{url.host}:{url.port}:{url.database}"
    return "dy" + hashlib.sha256(where.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    #: The worker's name: the runs it claimed carry it (``Run.worker``).
    name: str
    reads: sessionmaker[Session]
    writes: sessionmaker[Session]
    pools: JobPools
    #: The key that derives each run's token (``dockyard.jobs.tokens``).
    token_key: bytes
    #: PostgreSQL lets several workers claim at once; SQLite serialises them.
    on_postgres: bool

    @cached_property
    def artifacts(self) -> ArtifactStore:
        """Where notebook runs keep their executed notebooks."""
        return ArtifactStore.from_settings(self.settings)

    @property
    def actor(self) -> str:
        """Who the worker is in a run's events."""
        return f"worker:{self.name}"

    def pool_named(self, name: str | None) -> JobPool:
        # A pool removed since is met only by runs that reconcile fails: see there.
        return self.pools.find(name or "default") or self.pools.default

    def pool_of(self, run_id: int) -> JobPool:
        with self.reads() as session:
            return self.pool_named(session.scalar(select(Run.pool).where(Run.id == run_id)))
