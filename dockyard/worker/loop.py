"""The worker: the only process that moves runs forward.

One loop, a few threads:

- the loop (every ``DOCKYARD_WORKER_POLL_SECONDS``, or at once when woken) cancels
  queued runs that were cancelled, asks running ones to stop when they are cancelled or
  past their deadline, checks the runs the engine reported as changed, and claims queued
  runs within the global and per-user limits;
- a small pool starts, checks, stops and settles runs, so one slow engine call never
  holds up the others;
- one log follower per running job copies its output into ``HOME/logs/runs``;
- the backend's event stream (Docker events) wakes the loop when a job ends. Events
  are not trusted alone: every ``SYNC_SECONDS`` all active runs are checked anyway.

Claiming is safe with several workers: on PostgreSQL a transaction-scoped advisory lock
makes the limit check and the claim one step, ``FOR UPDATE SKIP LOCKED`` skips rows
another worker holds, and the claim itself is a compare-and-swap from QUEUED (on
SQLite, ``BEGIN IMMEDIATE`` serialises claimers). A run's row is written before its job
is started, and started only while its row says PENDING and names this worker.

On start the worker reconciles: it lists its namespace's jobs on the engine and compares
them with its unfinished runs. A job found is adopted (never started again), a job
ended while the worker was away is settled, a RUNNING run whose job is gone fails (and
is retried if it may be), a PENDING run with no job is started (the engine refuses a
second job for the same run, so that is safe even if a start was cut short).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dockyard.db import make_engine, make_session_factory, transaction, write_sessions
from dockyard.jobs.logs import LogFile, log_path, relative_log_location
from dockyard.jobs.service import new_attempt
from dockyard.jobs.states import ACTIVE_STATES, advance, deadline_of, outcome
from dockyard.jobs.tokens import hash_token, run_token, token_key
from dockyard.logs import log_context
from dockyard.models import Run, RunEvent, RunState, utcnow
from dockyard.settings import Settings
from dockyard.worker.health import start_health_server
from dockyard.worker.pools import JobPool, JobPools
from spawner.jobs.base import (
    EngineState,
    JobBackend,
    JobSpec,
    JobStartError,
    JobStatus,
    command_argv,
)

if TYPE_CHECKING:
    from dockyard.images.service import ImageWorkRunner

log = logging.getLogger(__name__)

#: Check every active run this often even when the engine sends events.
SYNC_SECONDS = 5.0
#: How often the worker's other duties (image builds) get a turn.
DUTY_SECONDS = 1.0
#: How many queued runs one claim looks at (after the per-user cut).
CLAIM_WINDOW = 500
#: Failed start attempts (engine unreachable) before a run is failed, and the pause
#: before the next attempt (times the attempts so far).
MAX_START_ERRORS = 3
START_RETRY_SECONDS = 5.0
_PG_CLAIM_LOCK = 0x646F6A62  # "dojb": one claimer at a time across workers


def job_namespace(settings: Settings) -> str:
    """The label value that marks this installation's jobs: set, or derived from where
    the database is (so all workers of one installation agree without configuration)."""
    if settings.job_namespace:
        return settings.job_namespace
    url = make_url(settings.db_url)
    where = f"{url.get_backend_name()}:{url.host}:{url.port}:{url.database}"
    return "dy" + hashlib.sha256(where.encode()).hexdigest()[:10]


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
    return JobSpec(
        run_id=run.id, attempt=run.attempt, owner=run.owner, image=run.image,
        argv=command_argv(run.command), cpu=run.cpu, memory_mb=run.memory_mb, gpu=run.gpu,
        env=env,
    )


class LogFollower(threading.Thread):
    """Copies one job's output into its log file while it runs."""

    def __init__(self, backend: JobBackend, run_id: int, handle: str, settings: Settings,
                 on_end: Callable[[int], None]) -> None:
        super().__init__(name=f"logs-{run_id}", daemon=True)
        self.backend = backend
        self.run_id = run_id
        self.handle = handle
        self.path = log_path(settings, run_id)
        self.max_bytes = settings.job_log_max_bytes
        self.on_end = on_end
        self.complete = False

    def run(self) -> None:
        try:
            with LogFile(self.path, self.max_bytes) as out:
                for chunk in self.backend.logs(self.handle):
                    out.write(chunk)
            self.complete = True
        except Exception as exc:  # the engine dropped the stream: settling reads it again
            log.warning("Log stream of run %s broke: %s", self.run_id, exc)
        finally:
            self.on_end(self.run_id)


class WorkerDuty(Protocol):
    """Other work the worker process does between its runs (the image catalog's builds)."""

    def __call__(self, worker: Worker) -> object:
        """One turn, every DUTY_SECONDS: start or look after work, without blocking."""
        ...

    def reconcile(self, worker: Worker) -> None:
        """Once at start, before the first turn: settle what the last stop cut short."""
        ...


class Worker:
    def __init__(self, settings: Settings, *, backend: JobBackend | None = None,
                 pools: JobPools | None = None, name: str | None = None,
                 duties: Sequence[WorkerDuty] = ()) -> None:
        self.settings = settings
        self.name = name or settings.worker_name or socket.gethostname()
        self.actor = f"worker:{self.name}"
        self.engine = make_engine(settings.db_url)
        self.reads = make_session_factory(self.engine)
        self.writes = write_sessions(self.engine)
        self.on_postgres = self.engine.dialect.name == "postgresql"
        self.namespace = job_namespace(settings)
        # One backend per job pool; each run goes to its pool's (most installations have
        # only the default pool: DOCKYARD_JOB_BACKEND).
        self.pools = pools or (JobPools.of_backend(backend, settings) if backend is not None
                               else JobPools.from_settings(settings, namespace=self.namespace))
        self.backend = self.pools.default.backend
        self.token_key = token_key(settings.home)
        # The same storage, Spark and Ray settings notebooks get.
        self.extra_env = self.pools.default.extra_env
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_runs + 4,
                                       thread_name_prefix="run")
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._busy: set[int] = set()
        self._changed: set[int] = set()
        self._followers: dict[int, LogFollower] = {}
        # Runs whose start met an engine error: (errors so far, when to try again).
        self._start_errors: dict[int, tuple[int, float]] = {}
        self._last_sync = 0.0
        # Other work the worker process does between its runs (the image catalog's builds).
        self.duties = list(duties)
        self._last_duty = 0.0
        # Called on every pass of the loop; /health reports a loop that stopped coming round.
        self.heartbeat: Callable[[], None] = lambda: None
        self._owners: dict[int, str | None] = {}  # run id -> owner, for log lines

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile()
                break
            except Exception as exc:  # engine or database not there yet: wait, never guess
                log.warning("Cannot reconcile yet (%s); trying again in 5 s", exc)
                stop.wait(5)
        for pool in self.pools:
            if pool.backend.has_events:
                threading.Thread(target=pool.backend.watch, args=(self.notify, stop),
                                 name=f"engine-events-{pool.name}", daemon=True).start()
        while not stop.is_set():
            try:
                self.tick()
            except SQLAlchemyError as exc:
                log.warning("Database unavailable, trying again shortly: %s", exc)
                stop.wait(2)
            except Exception:
                log.exception("Worker pass failed; trying again shortly")
                stop.wait(2)
            self.heartbeat()
            self.wake.wait(self.settings.worker_poll_seconds)
            self.wake.clear()

    def notify(self, run_id: int) -> None:
        """The engine says this run's job changed: look at it now."""
        with self._lock:
            self._changed.add(run_id)
        self.wake.set()

    def tick(self) -> None:
        """One pass: cancel, stop, check, claim."""
        self._cancel_queued()
        now = utcnow()
        sync_all = time.monotonic() - self._last_sync >= SYNC_SECONDS
        # Runs of pools that report no changes themselves are looked at on every pass.
        polled = {pool.name for pool in self.pools if not pool.backend.has_events}
        if sync_all:
            self._last_sync = time.monotonic()
        with self._lock:
            changed, self._changed = self._changed, set()
        for run in self._active_runs():
            deadline = deadline_of(run.started_at, run.timeout_seconds,
                                   self.settings.job_max_timeout_seconds)
            if run.cancel_requested:
                self._submit(run.id, self._stop, run.id, RunState.CANCELLED)
            elif run.status == RunState.RUNNING and deadline is not None and now >= deadline:
                self._submit(run.id, self._stop, run.id, RunState.TIMED_OUT)
            elif sync_all or run.pool in polled or run.id in changed \
                    or run.engine_handle is None:
                self._submit(run.id, self._check, run.id)
        if self._queue_has_work():
            for run_id in self._claim():
                self._submit(run_id, self._start, run_id)
        if self.duties and time.monotonic() - self._last_duty >= DUTY_SECONDS:
            self._last_duty = time.monotonic()
            for duty in self.duties:
                try:
                    duty(self)
                except Exception:  # one duty's failure must not stop the runs
                    log.exception("Worker duty %s failed", getattr(duty, "__name__", duty))

    def drain(self, timeout: float = 60) -> None:
        """Wait until no run has work in the pool (for --once and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.05)

    def close(self, *, wait: bool = True) -> None:
        # On a stop (Ctrl-C) queued work is dropped and work in flight is not waited for
        # here: the database says where each run is, and reconcile at the next start takes
        # up whatever was cut short. (The interpreter still joins the pool's threads at
        # exit; `dockyard up` kills a worker that is not gone within its stop budget.)
        self.pool.shutdown(wait=wait, cancel_futures=not wait)
        self.pools.close()
        self.engine.dispose()

    def _submit(self, run_id: int, task: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if run_id in self._busy:
                return
            self._busy.add(run_id)

        def work() -> None:
            try:
                # Every log line written while working on the run names it and its owner.
                with log_context(run_id=run_id, user=self._owner(run_id)):
                    task(*args)
            except Exception:
                log.exception("Working on run %s failed; will look again", run_id)
            finally:
                with self._lock:
                    self._busy.discard(run_id)
                self.wake.set()

        self.pool.submit(work)

    def _owner(self, run_id: int) -> str | None:
        """The run's owner, for log lines; read once per run and kept (a run's owner never
        changes)."""
        owner = self._owners.get(run_id)
        if owner is None:
            try:
                with self.reads() as session:
                    owner = session.scalar(select(Run.owner).where(Run.id == run_id))
            except SQLAlchemyError:
                return None
            self._owners[run_id] = owner
        return owner

    # -- reading the queue -----------------------------------------------------------------
    def _active_runs(self) -> list[Any]:
        with self.reads() as session:
            return list(session.execute(
                select(Run.id, Run.status, Run.engine_handle, Run.cancel_requested,
                       Run.started_at, Run.timeout_seconds, Run.pool)
                .where(Run.status.in_(ACTIVE_STATES), Run.worker == self.name,
                       self._served())
            ))

    def _served(self) -> Any:
        """Runs of the pools this worker serves, on the backend it serves them with."""
        return or_(*(and_(Run.pool == pool.name, Run.backend == pool.backend.name)
                     for pool in self.pools))

    def _pool_named(self, name: str | None) -> JobPool:
        # A pool removed since is met only by runs that reconcile fails: see there.
        return self.pools.find(name or "default") or self.pools.default

    def _pool_of(self, run_id: int) -> JobPool:
        with self.reads() as session:
            return self._pool_named(session.scalar(select(Run.pool).where(Run.id == run_id)))

    def _queue_has_work(self) -> bool:
        with self.reads() as session:
            return session.scalar(
                select(Run.id).where(Run.status == RunState.QUEUED,
                                     Run.cancel_requested.is_(False)).limit(1)
            ) is not None

    def _cancel_queued(self) -> None:
        with self.reads() as session:
            ids = list(session.scalars(
                select(Run.id).where(Run.status == RunState.QUEUED,
                                     Run.cancel_requested.is_(True)).limit(100)
            ))
        if not ids:
            return
        with transaction(self.writes) as session:
            for run_id in ids:
                advance(session, run_id, RunState.CANCELLED, actor=self.actor,
                        why="cancelled before it started", finished_at=utcnow())

    def _claim(self) -> list[int]:
        """Claim queued runs, oldest first, within the global and per-user limits."""
        per_user = self.settings.max_runs_per_user
        with transaction(self.writes) as session:
            if self.on_postgres:
                session.execute(select(func.pg_advisory_xact_lock(_PG_CLAIM_LOCK)))
            active = dict(session.execute(
                select(Run.owner, func.count()).where(Run.status.in_(ACTIVE_STATES))
                .group_by(Run.owner)
            ).all())
            free = self.settings.max_concurrent_runs - sum(active.values())
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
            if self.on_postgres:
                lockable = lockable.with_for_update(skip_locked=True)
            rows = session.execute(lockable.order_by(Run.id)).all()
            claimed: list[int] = []
            for run_id, queued_at, pool in rows:
                backend_name = self.pools.backend_name(pool)
                if backend_name is None:  # its pool was removed from the settings meanwhile
                    advance(session, run_id, RunState.FAILED, actor=self.actor,
                            why=f"could not start: no job pool named '{pool}' is configured "
                                f"(pools: {', '.join(self.pools.names)})",
                            finished_at=utcnow())
                    continue
                where = "" if pool == "default" else f" (pool {pool})"
                # The run's token is valid from the claim on, before its job can use it.
                if advance(session, run_id, RunState.PENDING, actor=self.actor,
                           why=f"claimed by {self.name} for the {backend_name} backend{where}",
                           worker=self.name, backend=backend_name,
                           token_hash=hash_token(run_token(self.token_key, run_id, queued_at))):
                    claimed.append(run_id)
            return claimed

    # -- work on one run (in the pool) -----------------------------------------------------
    def _start(self, run_id: int) -> None:
        with self.reads() as session:
            run = session.get(Run, run_id)
            if run is None or run.status != RunState.PENDING or run.worker != self.name:
                return  # cancelled, or no longer ours: starting it now would be wrong
            token = run_token(self.token_key, run.id, run.queued_at)
            pool_name = run.pool
            pool = self.pools.find(pool_name)
            if pool is not None:
                spec = pool.prepare(build_spec(run, token=token, dockyard_url=pool.dockyard_url,
                                               extra_env=pool.extra_env))
            stale_hash = run.token_hash != hash_token(token)
        if stale_hash:  # claimed before this worker's key existed: the job's token must work
            with transaction(self.writes) as session:
                session.execute(update(Run).where(Run.id == run_id).values(
                    token_hash=hash_token(token)).execution_options(synchronize_session=False))
        try:
            # A pool removed since the claim raises UnknownPool: the run fails, saying so.
            status = self.pools.get(pool_name).backend.start(spec)
        except JobStartError as exc:
            self._settle(run_id, JobStatus(EngineState.MISSING, reason=str(exc)),
                         intent=None, start_error=str(exc))
            return
        except Exception as exc:  # the engine did not answer: try again, then give up
            errors = self._start_errors.get(run_id, (0, 0.0))[0] + 1
            self._start_errors[run_id] = (errors, time.monotonic() + START_RETRY_SECONDS * errors)
            log.warning("Starting run %s failed (%d/%d): %s", run_id, errors, MAX_START_ERRORS, exc)
            if errors >= MAX_START_ERRORS:
                self._start_errors.pop(run_id, None)
                self._settle(run_id, JobStatus(EngineState.MISSING, reason=str(exc)),
                             intent=None, start_error=str(exc))
            return
        self._start_errors.pop(run_id, None)
        self._record_started(run_id, status)
        if status.ended:
            self.notify(run_id)

    def _record_started(self, run_id: int, status: JobStatus) -> None:
        pool = self._pool_of(run_id)
        with transaction(self.writes) as session:
            session.execute(
                update(Run).where(Run.id == run_id, Run.status.in_(ACTIVE_STATES))
                .values(engine_handle=status.handle, node=status.node)
                .execution_options(synchronize_session=False)
            )
            if status.state != EngineState.PENDING:
                where = "" if pool.name == "default" else f" (pool {pool.name})"
                advance(session, run_id, RunState.RUNNING, actor=self.actor,
                        why=f"started on the {pool.backend.name} backend{where}",
                        started_at=status.started_at or utcnow(), reason="")
        if status.state == EngineState.PENDING and status.reason:
            self._note_waiting(run_id, status.reason)
        if status.handle:
            self._follow(run_id, status.handle)

    def _note_waiting(self, run_id: int, reason: str) -> None:
        """The engine holds the job back (e.g. no node has room): say why on the run,
        once per reason, while it stays PENDING."""
        with transaction(self.writes) as session:
            changed = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunState.PENDING,
                                  Run.reason != reason)
                .values(reason=reason).execution_options(synchronize_session=False)
            ).rowcount
            if changed:
                session.add(RunEvent(run_id=run_id, from_status=RunState.PENDING.value,
                                     to_status=RunState.PENDING.value, actor=self.actor,
                                     reason=f"waiting: {reason}"))

    def _follow(self, run_id: int, handle: str) -> None:
        with self._lock:
            follower = self._followers.get(run_id)
            if follower is not None and (follower.is_alive() or follower.complete):
                return
            follower = LogFollower(self._pool_of(run_id).backend, run_id, handle,
                                   self.settings, self.notify)
            self._followers[run_id] = follower
        follower.start()

    def _check(self, run_id: int) -> None:
        with self.reads() as session:
            run = session.get(Run, run_id)
        if run is None or run.status not in ACTIVE_STATES or run.worker != self.name:
            return
        if run.engine_handle is None:
            retry = self._start_errors.get(run_id)
            if retry is None or time.monotonic() >= retry[1]:
                self._start(run_id)  # claimed but never started (or the start was cut short)
            return
        status = self._pool_named(run.pool).backend.status(run.engine_handle)
        if status.ended:
            self._settle(run_id, status, intent=None)
        elif status.state == EngineState.RUNNING:
            if run.status == RunState.PENDING:
                self._record_started(run_id, status)
            else:
                self._follow(run_id, run.engine_handle)
        elif status.reason:
            self._note_waiting(run_id, status.reason)

    def _stop(self, run_id: int, intent: RunState) -> None:
        with self.reads() as session:
            run = session.get(Run, run_id)
        if run is None or run.status not in ACTIVE_STATES:
            return
        backend = self._pool_named(run.pool).backend
        if run.engine_handle is None:
            found = backend.list_jobs().get(run_id)
            if found is None or found.handle is None:
                self._settle(run_id, JobStatus(EngineState.MISSING, reason="never started"),
                             intent=intent)
                return
            self._record_started(run_id, found)
            run.engine_handle = found.handle
        assert run.engine_handle is not None
        status = backend.stop(run.engine_handle, self.settings.job_stop_grace_seconds)
        if status.ended:
            self._settle(run_id, status, intent=intent)
        else:
            # Never report a stop that did not happen; the next pass tries again.
            log.warning("Run %s did not stop (engine says %s); trying again", run_id, status.state)

    def _settle(self, run_id: int, status: JobStatus, *, intent: RunState | None,
                start_error: str | None = None) -> None:
        """Keep the log, record the outcome (and the next attempt), then clean up."""
        self._keep_log(run_id, status, start_error)
        retry_id: int | None = None
        with transaction(self.writes) as session:
            run = session.get(Run, run_id)
            if run is None or run.status.is_final:
                moved = False
            else:
                if start_error is not None:
                    final, reason = RunState.FAILED, f"could not start: {start_error}"
                    if intent == RunState.CANCELLED or run.cancel_requested:
                        final, reason = RunState.CANCELLED, "cancelled before it started"
                else:
                    deadline = deadline_of(run.started_at or status.started_at,
                                           run.timeout_seconds,
                                           self.settings.job_max_timeout_seconds)
                    final, reason = outcome(status, intent=intent,
                                            cancel_requested=run.cancel_requested,
                                            deadline=deadline)
                values: dict[str, Any] = {
                    "exit_code": status.exit_code,
                    "finished_at": status.finished_at or utcnow(),
                    "log_location": relative_log_location(run_id),
                }
                if run.started_at is None and status.started_at is not None:
                    values["started_at"] = status.started_at
                moved = advance(session, run_id, final, actor=self.actor, why=reason, **values)
                if moved and final == RunState.FAILED and run.attempt <= run.max_retries \
                        and not run.cancel_requested:
                    retry = new_attempt(
                        session, run, actor=self.actor,
                        reason=f"automatic retry {run.attempt} of {run.max_retries} after run "
                               f"#{run.id} failed: {reason}")
                    retry_id = retry.id
        if retry_id is not None:
            log.info("Run %s failed; queued attempt run %s", run_id, retry_id)
        if status.handle and status.state != EngineState.MISSING:
            try:
                self._pool_of(run_id).backend.remove(status.handle)
            except Exception as exc:  # a leftover is removed by the next reconcile
                log.warning("Could not remove the job of run %s: %s", run_id, exc)
        with self._lock:
            self._followers.pop(run_id, None)

    def _keep_log(self, run_id: int, status: JobStatus, start_error: str | None) -> None:
        """Make the log file complete before the run is recorded as ended."""
        with self._lock:
            follower = self._followers.get(run_id)
        if follower is not None:
            follower.join(timeout=15)
            if follower.complete:
                return
            if follower.is_alive():  # a stuck stream still owns the file; keep what it wrote
                log.warning("Log stream of run %s did not end; keeping the log as is", run_id)
                return
        path = log_path(self.settings, run_id)
        if start_error is not None:
            with LogFile(path, self.settings.job_log_max_bytes) as out:
                out.note(f"the job could not start: {start_error}")
            return
        if status.state == EngineState.MISSING or not status.handle:
            if not path.exists():
                with LogFile(path, self.settings.job_log_max_bytes) as out:
                    out.note(f"no output was kept: {status.reason or 'the job is gone'}")
            return
        try:
            with LogFile(path, self.settings.job_log_max_bytes) as out:
                for chunk in self._pool_of(run_id).backend.logs(status.handle):
                    out.write(chunk)
        except Exception as exc:
            log.warning("Could not read the log of run %s: %s", run_id, exc)

    # -- after a restart ---------------------------------------------------------------------
    def reconcile(self) -> None:
        """Compare this worker's unfinished runs with the jobs on every pool's engine, and
        let each duty settle what the last stop cut short."""
        failed: list[str] = []
        for pool in self.pools:
            try:
                self._reconcile_pool(pool)
            except Exception as exc:  # try the other pools; the caller tries again
                log.warning("Reconcile: pool %s is not reachable: %s", pool.name, exc)
                failed.append(pool.name)
        self._fail_runs_of_removed_pools()
        for duty in self.duties:
            duty.reconcile(self)
        if failed:
            raise RuntimeError(f"pools not reconciled: {', '.join(failed)}")

    def _fail_runs_of_removed_pools(self) -> None:
        with transaction(self.writes) as session:
            orphans = list(session.execute(
                select(Run.id, Run.pool).where(Run.status.in_(ACTIVE_STATES),
                                               Run.worker == self.name,
                                               Run.pool.not_in(self.pools.names))))
            for run_id, pool in orphans:
                advance(session, run_id, RunState.FAILED, actor=self.actor,
                        why=f"its pool '{pool}' is no longer configured; its job may still "
                            "be on that engine", finished_at=utcnow())

    def _reconcile_pool(self, pool: JobPool) -> None:
        jobs = pool.backend.list_jobs()
        with self.reads() as session:
            mine = list(session.execute(
                select(Run.id, Run.status, Run.engine_handle)
                .where(Run.status.in_(ACTIVE_STATES), Run.pool == pool.name,
                       Run.backend == pool.backend.name,
                       or_(Run.worker == self.name, Run.worker.is_(None)))
            ))
        for run_id, status, handle in mine:
            job = jobs.pop(run_id, None)
            about = {"run_id": run_id, "user": self._owner(run_id)}  # for the log lines
            if job is None:
                if status == RunState.PENDING:
                    log.info("Reconcile: run %s was claimed but never started; starting it",
                             run_id, extra=about)
                    self._submit(run_id, self._start_claimed, run_id)
                else:
                    log.info("Reconcile: run %s has no job on the engine any more", run_id,
                             extra=about)
                    self._submit(run_id, self._settle_ended, run_id, JobStatus(
                        EngineState.MISSING, handle,
                        reason="the job was gone when the worker came back"))
                continue
            log.info("Reconcile: run %s has job %s (%s); adopting it", run_id, job.handle,
                     job.state, extra=about)
            if job.ended:
                self._submit(run_id, self._settle_ended, run_id, job)
            elif job.state == EngineState.PENDING:
                self._submit(run_id, self._start_claimed, run_id)
            else:
                self._submit(run_id, self._record_started, run_id, job)
        self._remove_leftovers(jobs, pool.backend)

    def _settle_ended(self, run_id: int, status: JobStatus) -> None:
        self._settle(run_id, status, intent=None)

    def _start_claimed(self, run_id: int) -> None:
        # A run with no worker recorded (claimed by an older version) becomes ours.
        with transaction(self.writes) as session:
            session.execute(update(Run).where(Run.id == run_id, Run.worker.is_(None))
                            .values(worker=self.name)
                            .execution_options(synchronize_session=False))
        self._start(run_id)

    def _remove_leftovers(self, jobs: dict[int, JobStatus], backend: JobBackend) -> None:
        """Jobs on the engine whose runs have ended (the worker stopped before cleaning up)."""
        if not jobs:
            return
        with self.reads() as session:
            rows = dict(session.execute(
                select(Run.id, Run.status).where(Run.id.in_(list(jobs)))
            ).all())
        for run_id, job in jobs.items():
            state = rows.get(run_id)
            if state is None or not state.is_final or job.handle is None:
                continue  # another worker's run, or one this database does not know: leave it
            if not log_path(self.settings, run_id).exists():
                self._keep_log(run_id, job, None)
            log.info("Reconcile: removing the leftover job of ended run %s", run_id)
            try:
                backend.remove(job.handle)
            except Exception as exc:
                log.warning("Could not remove the leftover job of run %s: %s", run_id, exc)


class ImageDuty:
    """The image catalog's builds and inspections, queued by admins, run by the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runner: ImageWorkRunner | None = None

    def runner(self, worker: Worker) -> ImageWorkRunner:
        if self._runner is None:
            from dockyard.images.service import ImageWorkRunner

            # The worker's identity goes on its inspection containers, so that its next
            # start knows which of them it left (and another installation's stay).
            self._runner = ImageWorkRunner(namespace=worker.namespace, worker_name=worker.name)
        return self._runner

    def reconcile(self, worker: Worker) -> None:
        self.runner(worker).reconcile(worker.reads, self.settings)

    def __call__(self, worker: Worker) -> object:
        return self.runner(worker).tick(worker.reads, self.settings)


def run_worker(settings: Settings, *, once: bool = False) -> None:
    stop = threading.Event()
    worker = Worker(settings, duties=[ImageDuty(settings)])
    health = start_health_server(settings, worker.engine)  # /health and /metrics, if a port
    worker.heartbeat = health.beat

    def _stop(*_: Any) -> None:
        stop.set()
        worker.wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    log.info("Worker %s started: pools %s, namespace %s, at most %d runs (%d per user)",
             worker.name, worker.pools.describe(), worker.namespace,
             settings.max_concurrent_runs, settings.max_runs_per_user)
    # Here rather than in `dockyard up`: the worker runs in every installation (compose
    # too), has the Docker socket there, and is what inspects the images it registers.
    from dockyard.images.curated import seed_at_start

    try:
        seed_at_start(worker.writes, settings, [pool.backend.name for pool in worker.pools])
        if once:
            worker.reconcile()
            worker.drain()
            worker.tick()
            worker.drain()
        else:
            worker.run(stop)
    finally:
        health.stop()
        worker.close(wait=once)
    log.info("Worker stopped")
