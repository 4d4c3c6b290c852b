"""The worker's loop: the only process that moves runs forward.

One loop, a few threads:

- the loop (every ``DOCKYARD_WORKER_POLL_SECONDS``, or at once when woken) cancels
  queued runs that were cancelled, asks running ones to stop when they are cancelled or
  past their deadline, checks the runs the engine reported as changed, and claims queued
  runs within the global and per-user limits (``claims.py``);
- a small thread pool starts, checks, stops and settles runs (``lifecycle.py``), so one
  slow engine call never holds up the others;
- one log follower per running job copies its output into ``HOME/logs/runs`` (``log_copy.py``);
- the backend's event stream (Docker events) wakes the loop when a job ends. Events
  are not trusted alone: every ``SYNC_SECONDS`` all active runs are checked anyway;
- the trigger thread (``triggers.py``) queues the runs of due schedules, after-run
  chains, new batches and backfills, and wakes the loop to claim them.

On start the worker reconciles (``reconcile.py``) before its first pass; between passes
its duties (the image catalog's builds, ``images.py``) get a turn.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from dockyard.db import make_engine, make_session_factory, write_sessions
from dockyard.jobs.queue_signal import start_listening
from dockyard.jobs.states import deadline_of
from dockyard.jobs.tokens import token_key
from dockyard.logs import log_context
from dockyard.models import Run, RunState, utcnow
from dockyard.settings import Settings
from dockyard.worker.backends import JobPools
from dockyard.worker.claims import RunClaims
from dockyard.worker.context import WorkerContext, job_namespace
from dockyard.worker.lifecycle import RunLifecycle
from dockyard.worker.log_copy import RunLogs
from dockyard.worker.reconcile import Reconciler
from dockyard.worker.triggers import TriggerThread
from spawner.jobs.base import JobBackend

log = logging.getLogger(__name__)

#: Check every active run this often even when the engine sends events.
SYNC_SECONDS = 5.0
#: How often the worker's other duties (image builds) get a turn, unless a duty says
#: otherwise with a ``turn_seconds`` attribute.
DUTY_SECONDS = 1.0


class WorkerDuty(Protocol):
    """Other work the worker process does between its runs (the image catalog's builds)."""

    def __call__(self, worker: Worker) -> object:
        """One turn, every DUTY_SECONDS (or the duty's own ``turn_seconds``; 0: on every
        pass of the loop): start or look after work, without blocking."""
        ...

    def reconcile(self, worker: Worker) -> None:
        """Once at start, before the first turn: settle what the last stop cut short."""
        ...


class Worker:
    """One worker: the loop that gives each of its runs its next step, in its threads."""

    def __init__(self, settings: Settings, *, backend: JobBackend | None = None,
                 pools: JobPools | None = None, name: str | None = None,
                 duties: Sequence[WorkerDuty] = ()) -> None:
        self.settings = settings
        self.name = name or settings.worker_name or socket.gethostname()
        self.db_engine = make_engine(settings.db_url)
        self.reads = make_session_factory(self.db_engine)
        self.writes = write_sessions(self.db_engine)
        self.namespace = job_namespace(settings)
        # One backend per job pool; each run goes to its pool's (most installations have
        # only the default pool: DOCKYARD_JOB_BACKEND).
        self.pools = pools or (JobPools.of_backend(backend, settings) if backend is not None
                               else JobPools.from_settings(settings, namespace=self.namespace))
        context = WorkerContext(
            settings=settings, name=self.name, reads=self.reads, writes=self.writes,
            pools=self.pools, token_key=token_key(settings.home),
            on_postgres=self.db_engine.dialect.name == "postgresql")
        self.claims = RunClaims(context)
        self.runs = RunLifecycle(context, RunLogs(context, on_end=self.notify),
                                 notify=self.notify)
        self.reconciler = Reconciler(context, self.runs, submit=self._submit,
                                     owner_of=self._owner)
        self.threads = ThreadPoolExecutor(max_workers=settings.max_concurrent_runs + 4,
                                          thread_name_prefix="run")
        self.wake = threading.Event()
        self.triggers = TriggerThread(context, wake=self.wake.set)
        self._lock = threading.Lock()
        self._busy: set[int] = set()
        self._changed: set[int] = set()
        self._last_sync = 0.0
        # Other work the worker process does between its runs (the image catalog's builds).
        self.duties = list(duties)
        self._last_turns: dict[int, float] = {}  # id(duty) -> when it last had its turn
        # Called on every pass of the loop; /health reports a loop that stopped coming round.
        self.heartbeat: Callable[[], None] = lambda: None
        self._owners: dict[int, str | None] = {}  # run id -> owner, for log lines

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile()
                break
            except Exception as exc:  # engine or database not there yet: wait, never guess
                log.warning("Cannot reconcile yet (%s); trying again in 5 s", exc)
                stop.wait(5)
        if self.db_engine.dialect.name == "postgresql":  # a submit wakes the loop at once
            start_listening(self.settings.db_url, self.wake.set, stop)
        for pool in self.pools:
            if pool.backend.has_events:
                threading.Thread(target=pool.backend.watch, args=(self.notify, stop),
                                 name=f"engine-events-{pool.name}", daemon=True).start()
        if not stop.is_set():
            self.triggers.start(stop)
        try:
            self._loop(stop)
        finally:
            self.triggers.join()

    def _loop(self, stop: threading.Event) -> None:
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
        self.claims.cancel_queued()
        now = utcnow()
        sync_all = time.monotonic() - self._last_sync >= SYNC_SECONDS
        # Runs of pools that report no changes themselves are looked at on every pass.
        polled = {pool.name for pool in self.pools if not pool.backend.has_events}
        if sync_all:
            self._last_sync = time.monotonic()
        with self._lock:
            changed, self._changed = self._changed, set()
        for run in self.claims.active_runs():
            deadline = deadline_of(run.started_at, run.timeout_seconds,
                                   self.settings.job_max_timeout_seconds)
            if run.cancel_requested:
                self._submit(run.id, self.runs.stop, run.id, RunState.CANCELLED)
            elif run.status == RunState.RUNNING and deadline is not None and now >= deadline:
                self._submit(run.id, self.runs.stop, run.id, RunState.TIMED_OUT)
            elif sync_all or run.pool in polled or run.id in changed \
                    or run.engine_handle is None:
                self._submit(run.id, self.runs.check, run.id)
        if self.claims.queue_has_work():
            for run_id in self.claims.claim():
                self._submit(run_id, self.runs.start, run_id)
        for duty in self.duties:
            now = time.monotonic()
            every = getattr(duty, "turn_seconds", DUTY_SECONDS)
            if now - self._last_turns.get(id(duty), -math.inf) < every:
                continue
            self._last_turns[id(duty)] = now
            try:
                duty(self)
            except Exception:  # one duty's failure must not stop the runs
                log.exception("Worker duty %s failed", getattr(duty, "__name__", duty))

    def reconcile(self) -> None:
        """Compare this worker's unfinished runs with the jobs on every pool's engine, and
        let each duty settle what the last stop cut short."""
        failed = self.reconciler.reconcile_pools()
        for duty in self.duties:
            duty.reconcile(self)
        if failed:
            raise RuntimeError(f"pools not reconciled: {', '.join(failed)}")

    def drain(self, timeout: float = 60) -> None:
        """Wait until no run has work in the threads (for --once and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.05)

    def close(self, *, wait: bool = True) -> None:
        # On a stop (Ctrl-C) queued work is dropped and work in flight is not waited for
        # here: the database says where each run is, and reconcile at the next start takes
        # up whatever was cut short. (The interpreter still joins the threads at exit;
        # `dockyard up` kills a worker that is not gone within its stop budget.)
        self.threads.shutdown(wait=wait, cancel_futures=not wait)
        self.pools.close()
        self.db_engine.dispose()

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

        self.threads.submit(work)

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
