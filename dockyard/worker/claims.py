"""Which runs a worker takes and holds: queued runs that were cancelled end here, the
others are claimed oldest first within the global and per-user limits, and the runs a
worker claimed are its own until they end.

Claiming is safe with several workers: on PostgreSQL a transaction-scoped advisory lock
makes the limit check and the claim one step, ``FOR UPDATE SKIP LOCKED`` skips rows
another worker holds, and the claim itself is a compare-and-swap from QUEUED (on
SQLite, ``BEGIN IMMEDIATE`` serialises claimers). A run's row is written before its job
is started, and started only while its row says PENDING and names this worker.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select

from dockyard.db import transaction
from dockyard.jobs.states import ACTIVE_STATES, advance
from dockyard.jobs.tokens import hash_token, run_token
from dockyard.models import Run, RunState, utcnow
from dockyard.worker.context import WorkerContext

#: How many queued runs one claim looks at (after the per-user cut).
CLAIM_WINDOW = 500
_PG_CLAIM_LOCK = 0x646F6A62  # "dojb": one claimer at a time across workers


class RunClaims:
    """The queue as one worker takes from it."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context

    def active_runs(self) -> list[Any]:
        """This worker's unfinished runs, with what the loop needs to choose their next step."""
        with self.context.reads() as session:
            return list(session.execute(
                select(Run.id, Run.status, Run.engine_handle, Run.cancel_requested,
                       Run.started_at, Run.timeout_seconds, Run.pool)
                .where(Run.status.in_(ACTIVE_STATES), Run.worker == self.context.name,
                       self._served())
            ))

    def _served(self) -> Any:
        """Runs of the pools this worker serves, on the backend it serves them with."""
        return or_(*(and_(Run.pool == pool.name, Run.backend == pool.backend.name)
                     for pool in self.context.pools))

    def queue_has_work(self) -> bool:
        with self.context.reads() as session:
            return session.scalar(
                select(Run.id).where(Run.status == RunState.QUEUED,
                                     Run.cancel_requested.is_(False)).limit(1)
            ) is not None

    def cancel_queued(self) -> None:
        """Queued runs whose cancel was asked for end without a job."""
        with self.context.reads() as session:
            ids = list(session.scalars(
                select(Run.id).where(Run.status == RunState.QUEUED,
                                     Run.cancel_requested.is_(True)).limit(100)
            ))
        if not ids:
            return
        with transaction(self.context.writes) as session:
            for run_id in ids:
                advance(session, run_id, RunState.CANCELLED, actor=self.context.actor,
                        why="cancelled before it started", finished_at=utcnow())

    def claim(self) -> list[int]:
        """Claim queued runs, oldest first, within the global and per-user limits."""
        context = self.context
        settings, pools = context.settings, context.pools
        per_user = settings.max_runs_per_user
        with transaction(context.writes) as session:
            if context.on_postgres:
                session.execute(select(func.pg_advisory_xact_lock(_PG_CLAIM_LOCK)))
            active = dict(session.execute(
                select(Run.owner, func.count()).where(Run.status.in_(ACTIVE_STATES))
                .group_by(Run.owner)
            ).all())
            free = settings.max_concurrent_runs - sum(active.values())
            if free <= 0:
                return []
            ranked = (
                select(Run.id, Run.owner, func.row_number().over(
                    partition_by=Run.owner, order_by=Run.id).label("place"))
                .where(Run.status == RunState.QUEUED, Run.cancel_requested.is_(False))
                .subquery()
            )
            candidates = session.execute(
                select(ranked.c.id, ranked.c.owner).where(ranked.c.place <= per_user)
                .order_by(ranked.c.id).limit(CLAIM_WINDOW)
            ).all()
            chosen: list[int] = []
            for run_id, owner in candidates:
                if len(chosen) >= free:
                    break
                if active.get(owner, 0) >= per_user:
                    continue
                chosen.append(run_id)
                active[owner] = active.get(owner, 0) + 1
            if not chosen:
                return []
            lockable = select(Run.id, Run.queued_at, Run.pool).where(
                Run.id.in_(chosen), Run.status == RunState.QUEUED)
            if context.on_postgres:
                lockable = lockable.with_for_update(skip_locked=True)
            rows = session.execute(lockable.order_by(Run.id)).all()
            claimed: list[int] = []
            for run_id, queued_at, pool in rows:
                backend_name = pools.backend_name(pool)
                if backend_name is None:  # its pool was removed from the settings meanwhile
                    advance(session, run_id, RunState.FAILED, actor=context.actor,
                            why=f"could not start: no job pool named '{pool}' is configured "
                                f"(pools: {', '.join(pools.names)})",
                            finished_at=utcnow())
                    continue
                where = "" if pool == "default" else f" (pool {pool})"
                # The run's token is valid from the claim on, before its job can use it.
                if advance(session, run_id, RunState.PENDING, actor=context.actor,
                           why=f"claimed by {context.name} for the {backend_name} backend{where}",
                           worker=context.name, backend=backend_name,
                           token_hash=hash_token(run_token(context.token_key, run_id,
                                                           queued_at))):
                    claimed.append(run_id)
            return claimed
