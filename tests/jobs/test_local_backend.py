"""The local-process backend (development mode) on its own, and under the worker."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from dockyard.models import RunState
from dockyard.settings import Settings
from dockyard.worker.loop import Worker
from spawner.jobs.base import EngineState, JobSpec, JobStatus
from spawner.jobs.local import LocalJobBackend
from tests.conftest import auth
from tests.jobs.conftest import SHELL_IMAGE, RunsDb, log_file


def spec(run_id: int, argv: tuple[str, ...], **env: str) -> JobSpec:
    return JobSpec(run_id=run_id, attempt=1, owner="alice", image="ignored:1", argv=argv,
                   cpu=1, memory_mb=64, env=env)


def wait_ended(backend: LocalJobBackend, handle: str, timeout: float = 20) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = backend.status(handle)
        if status.ended:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {handle} did not end: {backend.status(handle)}")


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalJobBackend]:
    local = LocalJobBackend("jtlocal", "http://127.0.0.1:9/", root=tmp_path / "jobs-local")
    yield local
    for status in local.list_jobs().values():
        if status.handle and not status.ended:
            local.stop(status.handle, 0)


def test_exit_code_output_and_environment(backend: LocalJobBackend,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_WORKER_SECRET", "must-not-leak")
    status = backend.start(spec(1, ("sh", "-c", 'echo "hi $MINE"; echo "[$DOCKYARD_WORKER_SECRET]";'
                                                ' pwd; exit 4'), MINE="mine"))
    assert status.handle == "run-1"
    ended = wait_ended(backend, "run-1")
    assert (ended.state, ended.exit_code) == (EngineState.EXITED, 4)
    assert ended.started_at is not None and ended.finished_at is not None
    lines = b"".join(backend.logs("run-1")).decode().splitlines()
    assert lines[:2] == ["hi mine", "[]"]  # the job's env is its own, not the worker's
    assert lines[2].endswith("jtlocal/run-1/work")


def test_start_is_idempotent_per_run(backend: LocalJobBackend, tmp_path: Path) -> None:
    marker = tmp_path / "starts.txt"
    job = spec(2, ("sh", "-c", f"echo started >> {marker}; sleep 1"))
    first = backend.start(job)
    second = backend.start(job)
    assert first.handle == second.handle
    wait_ended(backend, "run-2")
    assert marker.read_text() == "started\n"
    assert set(backend.list_jobs()) == {2}


def test_stop_sends_term_then_kill(backend: LocalJobBackend) -> None:
    backend.start(spec(3, ("sleep", "30")))
    stopped = backend.stop("run-3", grace_seconds=5)
    assert (stopped.state, stopped.exit_code) == (EngineState.EXITED, 143)
    backend.start(spec(4, ("sh", "-c", "trap '' TERM; sleep 30")))
    time.sleep(0.3)  # let the shell install its trap
    started = time.monotonic()
    killed = backend.stop("run-4", grace_seconds=1)
    assert (killed.state, killed.exit_code) == (EngineState.EXITED, 137)
    assert time.monotonic() - started < 10


def test_jobs_outlive_the_backend_object(backend: LocalJobBackend, tmp_path: Path) -> None:
    backend.start(spec(5, ("sh", "-c", "sleep 1; echo later")))
    again = LocalJobBackend("jtlocal", "http://127.0.0.1:9/", root=tmp_path / "jobs-local")
    assert again.list_jobs()[5].state == EngineState.RUNNING
    assert wait_ended(again, "run-5").exit_code == 0
    assert b"".join(again.logs("run-5")) == b"later\n"
    again.remove("run-5")
    assert again.status("run-5").state == EngineState.MISSING
    assert again.list_jobs() == {}


def test_a_command_that_does_not_exist(backend: LocalJobBackend) -> None:
    backend.start(spec(6, ("no-such-program-here",)))
    status = wait_ended(backend, "run-6")
    assert status.exit_code == 127
    assert b"cannot run 'no-such-program-here'" in b"".join(backend.logs("run-6"))
    with pytest.raises(ValueError):
        backend.status("../../etc")


def test_worker_runs_and_cancels_local_jobs(catalog: Settings, client: FlaskClient) -> None:
    settings = catalog.model_copy(update=dict(job_backend="local", job_namespace="jtlw",
                                              worker_poll_seconds=0.1,
                                              job_stop_grace_seconds=1))
    worker = Worker(settings, name="local-worker")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    db = RunsDb(settings.db_url)
    try:
        headers = auth("tok-alice")
        ok = client.post("/api/v1/runs", headers=headers, json={
            "image": SHELL_IMAGE, "command": "echo from-$DOCKYARD_OWNER"}).json["id"]
        slow = client.post("/api/v1/runs", headers=headers, json={
            "image": SHELL_IMAGE, "command": ["sleep", "30"]}).json["id"]
        assert db.wait_for(ok, RunState.SUCCEEDED, RunState.FAILED).status == RunState.SUCCEEDED
        assert log_file(settings, ok).read_text() == "from-alice\n"
        db.wait_for(slow, RunState.RUNNING)
        client.post(f"/api/v1/runs/{slow}/cancel", headers=headers)
        cancelled = db.wait_for(slow, RunState.CANCELLED, RunState.FAILED, timeout=20)
        assert cancelled.status == RunState.CANCELLED and cancelled.exit_code == 143
        assert db.run(ok).backend == "local"
        # The job's state directory is cleaned up once its log is kept.
        assert not (settings.home / "jobs-local" / "jtlw" / f"run-{ok}").exists()
    finally:
        stop.set()
        worker.wake.set()
        thread.join(timeout=30)
        worker.close()
        db.close()
    assert os.path.exists(log_file(settings, slow))


class FlakyBackend(LocalJobBackend):
    """The local backend behind an engine that fails the first ``failures`` starts."""

    def __init__(self, *args: object, failures: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.failures = failures
        self.calls = 0

    def start(self, spec: JobSpec) -> JobStatus:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("engine not answering")
        return super().start(spec)


@pytest.mark.parametrize(("failures", "outcome"), [(2, RunState.SUCCEEDED),
                                                     (5, RunState.FAILED)])
def test_engine_errors_at_start_are_retried_then_fail_the_run(
        catalog: Settings, client: FlaskClient, monkeypatch: pytest.MonkeyPatch,
        failures: int, outcome: RunState) -> None:
    import dockyard.worker.lifecycle as lifecycle_module

    monkeypatch.setattr(lifecycle_module, "START_RETRY_SECONDS", 0.2)
    settings = catalog.model_copy(update=dict(job_backend="local", worker_poll_seconds=0.05))
    backend = FlakyBackend("jtflaky", "http://127.0.0.1:9/",
                           root=settings.home / "jobs-local", failures=failures)
    worker = Worker(settings, backend=backend, name="flaky-worker")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    db = RunsDb(settings.db_url)
    try:
        run_id = client.post("/api/v1/runs", headers=auth("tok-alice"), json={
            "image": SHELL_IMAGE, "command": ["true"]}).json["id"]
        run = db.wait_for(run_id, RunState.SUCCEEDED, RunState.FAILED, timeout=30)
        assert run.status == outcome
        assert backend.calls == min(failures + 1, 3)
        if outcome == RunState.FAILED:
            assert run.reason == "could not start: engine not answering"
        assert [e.to_status for e in db.events(run_id)].count("PENDING") == 1
    finally:
        stop.set()
        worker.wake.set()
        thread.join(timeout=30)
        worker.close()
        db.close()
