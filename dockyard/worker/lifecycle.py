"""A claimed run from its job's start to its end: starting the job on its pool's engine
(after its cluster is ready, when it asks for one: ``run_clusters.py``), following it,
stopping it when it is cancelled or past its deadline, and settling its outcome (with the
next attempt, if it may be retried) once the job has ended, its cluster removed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import update

from dockyard.db import transaction
from dockyard.jobs.notebooks import failed_cell
from dockyard.jobs.run_logs import relative_log_location
from dockyard.jobs.service import new_attempt
from dockyard.jobs.states import ACTIVE_STATES, advance, deadline_of, outcome
from dockyard.jobs.tokens import hash_token, run_token
from dockyard.jobs.triggers import trigger_env
from dockyard.models import Run, RunEvent, RunKind, RunState, utcnow
from dockyard.worker.context import WorkerContext
from dockyard.worker.log_copy import RunLogs
from dockyard.worker.run_clusters import RunClusters
from spawner.jobs.base import EngineState, JobSpec, JobStartError, JobStatus, command_argv

log = logging.getLogger(__name__)

#: Failed start attempts (engine unreachable) before a run is failed, and the pause
#: before the next attempt (times the attempts so far).
MAX_START_ERRORS = 3
START_RETRY_SECONDS = 5.0


def build_spec(run: Run, *, token: str, dockyard_url: str,
               extra_env: dict[str, str] | None = None) -> JobSpec:
    """What the engine runs for ``run``: its command and limits, and its identity in env."""
    env = {**run.env, **(extra_env or {})}
    env.update(
        DOCKYARD_RUN_ID=str(run.id),
        DOCKYARD_ATTEMPT=str(run.attempt),
        DOCKYARD_OWNER=run.owner,
        DOCKYARD_URL=dockyard_url,
        DOCKYARD_TOKEN=token,
    )
    if run.trigger:
        env.update(trigger_env(run.trigger))
    if run.kind == RunKind.NOTEBOOK and run.notebook:
        # What dockyard_data.notebook_job needs besides its token: it fetches the snapshot.
        env.update(
            DOCKYARD_NOTEBOOK_NAME=run.notebook["name"],
            DOCKYARD_NOTEBOOK_KERNEL=run.notebook["kernel"],
            DOCKYARD_NOTEBOOK_PARAMETERS=json.dumps(run.notebook.get("parameters") or {}),
        )
    return JobSpec(
        run_id=run.id, attempt=run.attempt, owner=run.owner, image=run.image,
        argv=command_argv(run.command), cpu=run.cpu, memory_mb=run.memory_mb, gpu=run.gpu,
        env=env,
    )


class RunLifecycle:
    """What one worker does to its runs' jobs. Each method works on one run and is called
    from the worker's threads, never two at once for the same run."""

    def __init__(self, context: WorkerContext, logs: RunLogs, *,
                 notify: Callable[[int], None]) -> None:
        self.context = context
        self.logs = logs
        #: Called with a run's id when its job may have changed: the loop looks at it.
        self.notify = notify
        # Runs whose start met an engine error: (errors so far, when to try again).
        self._start_errors: dict[int, tuple[int, float]] = {}
        #: The clusters runs drive: started before their job, removed after.
        self.clusters = RunClusters(context, note_waiting=self._note_waiting)

    def start(self, run_id: int) -> None:
        context = self.context
        with context.reads() as session:
            run = session.get(Run, run_id)
            if run is None or run.status != RunState.PENDING or run.worker != context.name:
                return  # cancelled, or no longer ours: starting it now would be wrong
            token = run_token(context.token_key, run.id, run.queued_at)
            pool_name = run.pool
            pool = context.pools.find(pool_name)
            if pool is not None:
                spec = pool.prepare(build_spec(run, token=token, dockyard_url=pool.dockyard_url,
                                               extra_env=pool.extra_env))
            stale_hash = run.token_hash != hash_token(token)
            wants_cluster = run.cluster is not None
        if stale_hash:  # claimed before this worker's key existed: the job's token must work
            with transaction(context.writes) as session:
                session.execute(update(Run).where(Run.id == run_id).values(
                    token_hash=hash_token(token)).execution_options(synchronize_session=False))
        try:
            if wants_cluster and pool is not None:
                # The job is the cluster's driver: it starts once the cluster is ready.
                driver = self.clusters.driver_for(run, pool)
                if driver is None:
                    return  # still starting; the loop looks again
                spec = replace(spec, networks=spec.networks + driver.networks,
                               env={**spec.env, **driver.env})
            # A pool removed since the claim raises UnknownPool: the run fails, saying so.
            status = context.pools.get(pool_name).backend.start(spec)
        except JobStartError as exc:
            self.settle(run_id, JobStatus(EngineState.MISSING, reason=str(exc)),
                        intent=None, start_error=str(exc))
            return
        except Exception as exc:  # the engine did not answer: try again, then give up
            errors = self._start_errors.get(run_id, (0, 0.0))[0] + 1
            self._start_errors[run_id] = (errors, time.monotonic() + START_RETRY_SECONDS * errors)
            log.warning("Starting run %s failed (%d/%d): %s", run_id, errors, MAX_START_ERRORS, exc)
            if errors >= MAX_START_ERRORS:
                self._start_errors.pop(run_id, None)
                self.settle(run_id, JobStatus(EngineState.MISSING, reason=str(exc)),
                            intent=None, start_error=str(exc))
            return
        self._start_errors.pop(run_id, None)
        self.record_started(run_id, status)
        if status.ended:
            self.notify(run_id)

    def record_started(self, run_id: int, status: JobStatus) -> None:
        """The engine has the run's job: keep its handle, and RUNNING once it runs."""
        pool = self.context.pool_of(run_id)
        with transaction(self.context.writes) as session:
            session.execute(
                update(Run).where(Run.id == run_id, Run.status.in_(ACTIVE_STATES))
                .values(engine_handle=status.handle, node=status.node)
                .execution_options(synchronize_session=False)
            )
            if status.state != EngineState.PENDING:
                where = "" if pool.name == "default" else f" (pool {pool.name})"
                advance(session, run_id, RunState.RUNNING, actor=self.context.actor,
                        why=f"started on the {pool.backend.name} backend{where}",
                        started_at=status.started_at or utcnow(), reason="")
        if status.state == EngineState.PENDING and status.reason:
            self._note_waiting(run_id, status.reason)
        if status.handle:
            self.logs.follow(run_id, status.handle)

    def _note_waiting(self, run_id: int, reason: str) -> None:
        """The engine holds the job back (e.g. no node has room): say why on the run,
        once per reason, while it stays PENDING."""
        with transaction(self.context.writes) as session:
            changed = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunState.PENDING,
                                  Run.reason != reason)
                .values(reason=reason).execution_options(synchronize_session=False)
            ).rowcount
            if changed:
                session.add(RunEvent(run_id=run_id, from_status=RunState.PENDING.value,
                                     to_status=RunState.PENDING.value, actor=self.context.actor,
                                     reason=f"waiting: {reason}"))

    def check(self, run_id: int) -> None:
        """Ask the engine where the run's job is, and record what changed."""
        context = self.context
        with context.reads() as session:
            run = session.get(Run, run_id)
        if run is None or run.status not in ACTIVE_STATES or run.worker != context.name:
            return
        if run.engine_handle is None:
            retry = self._start_errors.get(run_id)
            if retry is None or time.monotonic() >= retry[1]:
                self.start(run_id)  # claimed but never started (or the start was cut short)
            return
        status = context.pool_named(run.pool).backend.status(run.engine_handle)
        if status.ended:
            self.settle(run_id, status, intent=None)
        elif status.state == EngineState.RUNNING:
            if run.status == RunState.PENDING:
                self.record_started(run_id, status)
            else:
                self.logs.follow(run_id, run.engine_handle)
        elif status.reason:
            self._note_waiting(run_id, status.reason)

    def stop(self, run_id: int, intent: RunState) -> None:
        """Stop the run's job because it was cancelled or timed out (``intent``)."""
        context = self.context
        with context.reads() as session:
            run = session.get(Run, run_id)
        if run is None or run.status not in ACTIVE_STATES:
            return
        backend = context.pool_named(run.pool).backend
        if run.engine_handle is None:
            found = backend.list_jobs().get(run_id)
            if found is None or found.handle is None:
                self.settle(run_id, JobStatus(EngineState.MISSING, reason="never started"),
                            intent=intent)
                return
            self.record_started(run_id, found)
            run.engine_handle = found.handle
        assert run.engine_handle is not None
        status = backend.stop(run.engine_handle, context.settings.job_stop_grace_seconds)
        if status.ended:
            self.settle(run_id, status, intent=intent)
        else:
            # Never report a stop that did not happen; the next pass tries again.
            log.warning("Run %s did not stop (engine says %s); trying again", run_id, status.state)

    def _notebook_error(self, run_id: int, status: JobStatus) -> str | None:
        """For a notebook run that ended badly: its failed cell, from the executed notebook
        its job sent (None when it sent none)."""
        if status.exit_code in (0, None):
            return None
        with self.context.reads() as session:
            run = session.get(Run, run_id)
            if run is None or run.kind != RunKind.NOTEBOOK:
                return None
            try:
                executed = self.context.artifacts.output(run)
                return failed_cell(executed) if executed else None
            except Exception as exc:  # storage down: the run still ends, with a plainer reason
                log.warning("Could not read the executed notebook of run %s: %s", run_id, exc)
                return None

    def settle(self, run_id: int, status: JobStatus, *, intent: RunState | None,
               start_error: str | None = None) -> None:
        """Keep the log, record the outcome (and the next attempt), then clean up."""
        context = self.context
        self.logs.keep(run_id, status, start_error)
        notebook_error = self._notebook_error(run_id, status) if start_error is None else None
        retry_id: int | None = None
        had_cluster = False
        final: RunState | None = None
        with transaction(context.writes) as session:
            run = session.get(Run, run_id)
            had_cluster = run is not None and run.cluster is not None
            if run is None or run.status.is_final:
                moved = False
                final = run.status if run is not None else None
            else:
                if start_error is not None:
                    final, reason = RunState.FAILED, f"could not start: {start_error}"
                    if intent == RunState.CANCELLED or run.cancel_requested:
                        final, reason = RunState.CANCELLED, "cancelled before it started"
                else:
                    deadline = deadline_of(run.started_at or status.started_at,
                                           run.timeout_seconds,
                                           context.settings.job_max_timeout_seconds)
                    final, reason = outcome(status, intent=intent,
                                            cancel_requested=run.cancel_requested,
                                            deadline=deadline)
                    if final == RunState.FAILED and notebook_error:
                        reason = f"the notebook failed in {notebook_error} ({reason})"
                values: dict[str, Any] = {
                    "exit_code": status.exit_code,
                    "finished_at": status.finished_at or utcnow(),
                    "log_location": relative_log_location(run_id),
                }
                if run.started_at is None and status.started_at is not None:
                    values["started_at"] = status.started_at
                moved = advance(session, run_id, final, actor=context.actor, why=reason,
                                **values)
                if moved and final == RunState.FAILED and run.attempt <= run.max_retries \
                        and not run.cancel_requested:
                    retry = new_attempt(
                        session, run, actor=context.actor,
                        reason=f"automatic retry {run.attempt} of {run.max_retries} after run "
                               f"#{run.id} failed: {reason}")
                    retry_id = retry.id
        if retry_id is not None:
            log.info("Run %s failed; queued attempt run %s", run_id, retry_id)
        if status.handle and status.state != EngineState.MISSING:
            try:
                context.pool_of(run_id).backend.remove(status.handle)
            except Exception as exc:  # a leftover is removed by the next reconcile
                log.warning("Could not remove the job of run %s: %s", run_id, exc)
        if had_cluster:
            # Removed after the next attempt is queued; that attempt's own cluster is not
            # held back by this one, as the limit leaves out clusters of ended runs
            # (clusters.service.workers_in_use).
            outcome_words = final.value if final is not None else "its job ended"
            self.clusters.remove_for_run(run_id, context.pool_of(run_id), outcome_words)
        self.logs.forget(run_id)
