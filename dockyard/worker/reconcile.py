"""What a worker does when it starts again: it lists its namespace's jobs on every pool's
engine and compares them with its unfinished runs.

A job found is adopted (never started again), a job ended while the worker was away is
settled, a RUNNING run whose job is gone fails (and is retried if it may be), a PENDING
run with no job is started (the engine refuses a second job for the same run, so that is
safe even if a start was cut short). Runs of a pool no longer configured fail, and the
jobs of runs that ended are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import or_, select, update

from dockyard.db import transaction
from dockyard.jobs.run_logs import log_path
from dockyard.jobs.states import ACTIVE_STATES, advance
from dockyard.models import Run, RunState, utcnow
from dockyard.worker.backends import JobPool
from dockyard.worker.context import WorkerContext
from dockyard.worker.lifecycle import RunLifecycle
from spawner.jobs.base import EngineState, JobBackend, JobStatus

log = logging.getLogger(__name__)


class Reconciler:
    """Takes up, after a restart, what one worker's last stop cut short."""

    def __init__(self, context: WorkerContext, runs: RunLifecycle, *,
                 submit: Callable[..., None],
                 owner_of: Callable[[int], str | None]) -> None:
        self.context = context
        self.runs = runs
        #: ``submit(run_id, task, *args)``: the work on each run is done in the worker's
        #: threads, one task per run at a time, as the loop does it.
        self.submit = submit
        self.owner_of = owner_of

    def reconcile_pools(self) -> list[str]:
        """Compare this worker's unfinished runs with the jobs on every pool's engine;
        the names of the pools that could not be reached."""
        failed: list[str] = []
        for pool in self.context.pools:
            try:
                self._reconcile_pool(pool)
            except Exception as exc:  # try the other pools; the caller tries again
                log.warning("Reconcile: pool %s is not reachable: %s", pool.name, exc)
                failed.append(pool.name)
        self._fail_runs_of_removed_pools()
        return failed

    def _fail_runs_of_removed_pools(self) -> None:
        context = self.context
        with transaction(context.writes) as session:
            orphans = list(session.execute(
                select(Run.id, Run.pool).where(Run.status.in_(ACTIVE_STATES),
                                               Run.worker == context.name,
                                               Run.pool.not_in(context.pools.names))))
            for run_id, pool in orphans:
                advance(session, run_id, RunState.FAILED, actor=context.actor,
                        why=f"its pool '{pool}' is no longer configured; its job may still "
                            "be on that engine", finished_at=utcnow())

    def _reconcile_pool(self, pool: JobPool) -> None:
        jobs = pool.backend.list_jobs()
        with self.context.reads() as session:
            mine = list(session.execute(
                select(Run.id, Run.status, Run.engine_handle)
                .where(Run.status.in_(ACTIVE_STATES), Run.pool == pool.name,
                       Run.backend == pool.backend.name,
                       or_(Run.worker == self.context.name, Run.worker.is_(None)))
            ))
        for run_id, status, handle in mine:
            job = jobs.pop(run_id, None)
            about = {"run_id": run_id, "user": self.owner_of(run_id)}  # for the log lines
            if job is None:
                if status == RunState.PENDING:
                    log.info("Reconcile: run %s was claimed but never started; starting it",
                             run_id, extra=about)
                    self.submit(run_id, self._start_claimed, run_id)
                else:
                    log.info("Reconcile: run %s has no job on the engine any more", run_id,
                             extra=about)
                    self.submit(run_id, self._settle_ended, run_id, JobStatus(
                        EngineState.MISSING, handle,
                        reason="the job was gone when the worker came back"))
                continue
            log.info("Reconcile: run %s has job %s (%s); adopting it", run_id, job.handle,
                     job.state, extra=about)
            if job.ended:
                self.submit(run_id, self._settle_ended, run_id, job)
            elif job.state == EngineState.PENDING:
                self.submit(run_id, self._start_claimed, run_id)
            else:
                self.submit(run_id, self.runs.record_started, run_id, job)
        self._remove_leftovers(jobs, pool.backend)

    def _settle_ended(self, run_id: int, status: JobStatus) -> None:
        self.runs.settle(run_id, status, intent=None)

    def _start_claimed(self, run_id: int) -> None:
        # A run with no worker recorded (claimed by an older version) becomes ours.
        with transaction(self.context.writes) as session:
            session.execute(update(Run).where(Run.id == run_id, Run.worker.is_(None))
                            .values(worker=self.context.name)
                            .execution_options(synchronize_session=False))
        self.runs.start(run_id)

    def _remove_leftovers(self, jobs: dict[int, JobStatus], backend: JobBackend) -> None:
        """Jobs on the engine whose runs have ended (the worker stopped before cleaning up)."""
        if not jobs:
            return
        with self.context.reads() as session:
            rows = dict(session.execute(
                select(Run.id, Run.status).where(Run.id.in_(list(jobs)))
            ).all())
        for run_id, job in jobs.items():
            state = rows.get(run_id)
            if state is None or not state.is_final or job.handle is None:
                continue  # another worker's run, or one this database does not know: leave it
            if not log_path(self.context.settings, run_id).exists():
                self.runs.logs.keep(run_id, job, None)
            log.info("Reconcile: removing the leftover job of ended run %s", run_id)
            try:
                backend.remove(job.handle)
            except Exception as exc:
                log.warning("Could not remove the leftover job of run %s: %s", run_id, exc)
