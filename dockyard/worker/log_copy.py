"""Copying a job's output from its engine into the run's log file (``HOME/logs/runs``):
one follower thread per running job, and a last complete copy before the run is recorded
as ended."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dockyard.jobs.run_logs import LogFile, log_path
from dockyard.settings import Settings
from dockyard.worker.context import WorkerContext
from spawner.jobs.base import EngineState, JobBackend, JobStatus

log = logging.getLogger(__name__)


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


class RunLogs:
    """The log files of one worker's runs."""

    def __init__(self, context: WorkerContext, *, on_end: Callable[[int], None]) -> None:
        self.context = context
        #: Called with the run's id when a follower's stream ends (the job may have ended).
        self.on_end = on_end
        self._lock = threading.Lock()
        self._followers: dict[int, LogFollower] = {}

    def follow(self, run_id: int, handle: str) -> None:
        """Copy the job's output while it runs, unless that is being (or was) done."""
        with self._lock:
            follower = self._followers.get(run_id)
            if follower is not None and (follower.is_alive() or follower.complete):
                return
            follower = LogFollower(self.context.pool_of(run_id).backend, run_id, handle,
                                   self.context.settings, self.on_end)
            self._followers[run_id] = follower
        follower.start()

    def keep(self, run_id: int, status: JobStatus, start_error: str | None) -> None:
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
        settings = self.context.settings
        path = log_path(settings, run_id)
        if start_error is not None:
            with LogFile(path, settings.job_log_max_bytes) as out:
                out.note(f"the job could not start: {start_error}")
            return
        if status.state == EngineState.MISSING or not status.handle:
            if not path.exists():
                with LogFile(path, settings.job_log_max_bytes) as out:
                    out.note(f"no output was kept: {status.reason or 'the job is gone'}")
            return
        try:
            with LogFile(path, settings.job_log_max_bytes) as out:
                for chunk in self.context.pool_of(run_id).backend.logs(status.handle):
                    out.write(chunk)
        except Exception as exc:
            log.warning("Could not read the log of run %s: %s", run_id, exc)

    def forget(self, run_id: int) -> None:
        """The run has ended: its follower is no longer needed."""
        with self._lock:
            self._followers.pop(run_id, None)
