"""The worker against the real Docker engine: runs succeed, fail, time out, are
cancelled, retried, reconciled after a kill -9, and held back by the per-user limit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest
from sqlalchemy import update

from dockyard.models import ImageStatus, Run, RunState
from dockyard.settings import Settings
from dockyard.worker.lifecycle import build_spec
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_RUN_ID
from spawner.jobs.docker import DockerJobBackend
from tests.conftest import auth
from tests.jobs.conftest import (
    ALICE,
    FINAL,
    SHELL_IMAGE,
    UNREACHABLE_URL,
    JobsHarness,
    add_images,
    log_file,
    unique_namespace,
)
from tests.support.requirements import require_image

pytestmark = pytest.mark.docker

BOB = auth("tok-bob")


class Harness(JobsHarness):
    """The jobs suite on the Docker engine; containers are found by the suite's labels."""

    run_defaults: ClassVar[dict[str, Any]] = {"memory_mb": 128, "cpu": 0.5}

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        super().__init__(settings, tmp_path, {
            "job_backend": "docker", "job_namespace": unique_namespace("jt"),
            "worker_name": "test-worker", "job_stop_grace_seconds": 2})
        self.docker = docker.from_env(timeout=60)

    def containers(self, run_id: int | None = None) -> list[Any]:
        labels = [f"{LABEL_NAMESPACE}={self.namespace}"]
        if run_id is not None:
            labels.append(f"{LABEL_RUN_ID}={run_id}")
        return self.docker.containers.list(all=True, sparse=True, filters={"label": labels})

    engine_objects = containers  # removed() waits for a run's container to go

    def creates(self, run_id: int) -> int:
        """How many containers were ever created for this run (from the engine's events)."""
        events = self.docker.events(
            since=self.t0, until=time.time() + 0.5, decode=True,
            filters={"type": "container", "event": "create",
                     "label": [f"{LABEL_NAMESPACE}={self.namespace}",
                               f"{LABEL_RUN_ID}={run_id}"]})
        return sum(1 for _ in events)

    def set_run(self, run_id: int, **values: Any) -> None:
        with self.db.sessions() as session:
            session.execute(update(Run).where(Run.id == run_id).values(**values))
            session.commit()

    def close(self) -> None:
        super().close()
        for container in self.containers():
            container.remove(force=True)
        self.docker.close()


@pytest.fixture
def jobs(catalog: Settings, tmp_path: Path) -> Iterator[Harness]:
    require_image(SHELL_IMAGE)
    harness = Harness(catalog, tmp_path)
    yield harness
    harness.close()


# -- one run, start to end --------------------------------------------------------------------
def test_a_run_succeeds_hardened_with_its_identity_and_keeps_its_log(jobs: Harness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command='echo out; echo err >&2; id -u; echo "run=$DOCKYARD_RUN_ID"; '
                                 'sleep 2; echo done', memory_mb=96, cpu=0.5)
    jobs.wait(run_id, RunState.RUNNING, *FINAL)
    (container,) = jobs.containers(run_id)
    container.reload()
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 96 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 1024 and host["Init"] is True
    assert not host.get("Privileged")
    # The one host path a job sees is the local data root, at /dockyard/data.
    mounts = [(m["Source"], m["Destination"]) for m in container.attrs["Mounts"]]
    assert mounts == [(jobs.settings.data_dir, "/dockyard/data")], mounts
    config = container.attrs["Config"]
    assert config["User"] == "1000:1000"
    assert config["Cmd"][:2] == ["/bin/sh", "-c"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["DOCKYARD_RUN_ID"] == str(run_id) and env["DOCKYARD_OWNER"] == "alice"
    assert env["DOCKYARD_URL"] == UNREACHABLE_URL
    # The run's token works as alice while the run lives, and dies with it.
    token = env["DOCKYARD_TOKEN"]
    me = jobs.client.get("/api/v1/user", headers=auth(token))
    assert me.status_code == 200 and me.json == {"name": "alice", "admin": False,
                                                 "run_id": run_id}

    run = jobs.wait(run_id)
    assert run.status == RunState.SUCCEEDED and run.exit_code == 0
    assert run.started_at is not None and run.finished_at is not None
    assert run.finished_at > run.started_at
    assert jobs.transitions(run_id) == ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED"]
    assert jobs.client.get("/api/v1/user", headers=auth(token)).status_code == 401
    # The container is gone; the log is kept and served.
    assert jobs.removed(run_id)
    text = jobs.client.get(f"/api/v1/runs/{run_id}/logs", headers=ALICE).json["text"]
    lines = text.splitlines()
    # stdout and stderr are kept apart by the engine; their interleaving is not promised.
    assert lines.count("err") == 1
    assert [line for line in lines if line != "err"] == ["out", "1000", f"run={run_id}", "done"]
    assert log_file(jobs.settings, run_id).read_text() == text
    assert jobs.creates(run_id) == 1


def test_failure_keeps_the_exit_code_and_the_output(jobs: Harness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command=["sh", "-c", "echo boom >&2; exit 7"])
    run = jobs.wait(run_id)
    assert (run.status, run.exit_code, run.reason) == (RunState.FAILED, 7, "exit code 7")
    assert "boom" in log_file(jobs.settings, run_id).read_text()
    assert jobs.removed(run_id)


def test_a_run_past_its_timeout_is_stopped(jobs: Harness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command=["sleep", "60"], timeout_seconds=2)
    run = jobs.wait(run_id, timeout=40)
    assert run.status == RunState.TIMED_OUT
    assert "timeout" in run.reason and run.exit_code in (137, 143)
    assert run.finished_at is not None and run.started_at is not None
    assert (run.finished_at - run.started_at).total_seconds() < 20
    assert jobs.removed(run_id)


def test_cancel_while_running_stops_the_container(jobs: Harness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command="echo started; sleep 60")
    jobs.wait(run_id, RunState.RUNNING)
    assert jobs.client.post(f"/api/v1/runs/{run_id}/cancel", headers=ALICE).status_code == 202
    run = jobs.wait(run_id, timeout=30)
    assert run.status == RunState.CANCELLED and run.exit_code in (137, 143)
    assert str(run.exit_code) in run.reason  # the real outcome, not an assumed one
    events = jobs.db.events(run_id)
    assert any(e.actor == "alice" and e.reason == "cancel requested" for e in events)
    assert events[-1].to_status == "CANCELLED" and events[-1].actor == "worker:test-worker"
    assert jobs.removed(run_id)
    assert jobs.client.post(f"/api/v1/runs/{run_id}/cancel", headers=ALICE).status_code == 409


def test_cancel_while_queued_never_starts_it(jobs: Harness) -> None:
    jobs.start_worker(max_concurrent_runs=1)
    blocker = jobs.submit(command=["sleep", "60"])
    jobs.wait(blocker, RunState.RUNNING)
    queued = jobs.submit(command=["echo", "never"])
    time.sleep(0.5)
    assert jobs.db.run(queued).status == RunState.QUEUED  # held back by the global limit
    jobs.client.post(f"/api/v1/runs/{queued}/cancel", headers=ALICE)
    run = jobs.wait(queued, timeout=20)
    assert run.status == RunState.CANCELLED and run.engine_handle is None
    assert jobs.transitions(queued) == ["QUEUED", "CANCELLED"]
    jobs.client.post(f"/api/v1/runs/{blocker}/cancel", headers=ALICE)
    assert jobs.wait(blocker).status == RunState.CANCELLED
    assert jobs.creates(queued) == 0


def test_failed_runs_are_retried_as_new_attempts(jobs: Harness) -> None:
    jobs.start_worker()
    first = jobs.submit(command="echo try $DOCKYARD_ATTEMPT; exit 3", max_retries=2,
                        tags=["flaky"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chain = [r for r in jobs.db.runs() if r.id == first or r.retry_of_id == first]
        if len(chain) == 3 and all(r.status in FINAL for r in chain):
            break
        time.sleep(0.2)
    chain = sorted((r for r in jobs.db.runs() if r.id == first or r.retry_of_id == first),
                   key=lambda r: r.attempt)
    assert [(r.attempt, r.status, r.exit_code) for r in chain] == \
        [(1, RunState.FAILED, 3), (2, RunState.FAILED, 3), (3, RunState.FAILED, 3)]
    assert [r.retry_of_id for r in chain] == [None, first, first]
    time.sleep(1)  # the last attempt is not retried again
    assert len([r for r in jobs.db.runs() if r.retry_of_id == first]) == 2
    assert "automatic retry 1 of 2" in jobs.db.events(chain[1].id)[0].reason
    for attempt in chain:
        assert f"try {attempt.attempt}" in log_file(jobs.settings, attempt.id).read_text()
        assert jobs.creates(attempt.id) == 1
    tagged = jobs.client.get("/api/v1/runs?tag=flaky", headers=ALICE).json["runs"]
    assert len(tagged) == 3


def test_an_image_missing_from_the_engine_fails_with_the_reason(jobs: Harness) -> None:
    add_images(jobs.settings.db_url, ("dockyard-jobs-test/not-built:1", True, ImageStatus.READY))
    jobs.start_worker()
    run_id = jobs.submit(image="dockyard-jobs-test/not-built:1", command=["true"])
    run = jobs.wait(run_id)
    assert run.status == RunState.FAILED
    assert "could not start" in run.reason and "not on the Docker engine" in run.reason
    assert "could not start" in log_file(jobs.settings, run_id).read_text()


def test_per_user_limit_queues_the_excess(jobs: Harness) -> None:
    jobs.start_worker(max_runs_per_user=1, max_concurrent_runs=4)
    alice = [jobs.submit(command=["sleep", "1.5"]) for _ in range(3)]
    bob = jobs.submit(BOB, command=["sleep", "1.5"])
    runs = {run_id: jobs.wait(run_id, timeout=60) for run_id in [*alice, bob]}
    assert all(run.status == RunState.SUCCEEDED for run in runs.values())
    spans = sorted((runs[i].started_at, runs[i].finished_at) for i in alice)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two of alice's runs overlapped despite the per-user limit"
    # Bob was not stuck behind alice's queue.
    assert runs[bob].started_at < spans[-1][0]


# -- restarts ------------------------------------------------------------------------------
def test_kill_9_mid_run_then_restart_reconciles_without_double_start(jobs: Harness) -> None:
    worker = jobs.start_worker_process()
    quick = jobs.submit(command="sleep 1; echo quick-done")
    slow = jobs.submit(command="sleep 6; echo slow-done")
    jobs.wait(quick, RunState.RUNNING, timeout=60)
    jobs.wait(slow, RunState.RUNNING, timeout=60)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    # While the worker is dead, one job finishes and the other keeps running.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (container,) = jobs.containers(quick)
        if container.status == "exited":
            break
        time.sleep(0.2)
    assert container.status == "exited"
    assert jobs.containers(slow)[0].status == "running"
    assert jobs.db.run(quick).status == RunState.RUNNING  # nobody has looked yet

    jobs.start_worker_process()
    for run_id, word in ((quick, "quick-done"), (slow, "slow-done")):
        run = jobs.wait(run_id, timeout=60)
        assert run.status == RunState.SUCCEEDED, (run.status, run.reason)
        assert word in log_file(jobs.settings, run_id).read_text()
        assert jobs.transitions(run_id).count("RUNNING") == 1
        assert jobs.creates(run_id) == 1, "a run was started twice"
        assert jobs.removed(run_id)


def test_reconcile_adopts_restarts_fails_and_cleans_up(jobs: Harness) -> None:
    """The states a worker can leave behind when it dies at each step of a start."""
    settings = jobs.settings
    backend = DockerJobBackend(jobs.namespace, UNREACHABLE_URL)
    claimed = jobs.submit(command="echo claimed-then-crashed")
    created = jobs.submit(command="echo created-then-crashed")
    vanished = jobs.submit(command="true", max_retries=1)
    ended = jobs.submit(command="true")
    for run_id in (claimed, created):
        jobs.set_run(run_id, status=RunState.PENDING, worker="test-worker", backend="docker")
    jobs.set_run(vanished, status=RunState.RUNNING, worker="test-worker", backend="docker",
                 engine_handle="0123456789ab")
    # A start that reached the engine but not the database; a leftover of an ended run.
    with jobs.db.sessions() as session:
        for run_id in (created, ended):
            run = session.get(Run, run_id)
            assert run is not None
            backend.start(build_spec(run, token="dyr_x", dockyard_url=UNREACHABLE_URL))
    jobs.set_run(ended, status=RunState.SUCCEEDED, exit_code=0, worker="test-worker",
                 backend="docker")
    backend.close()

    jobs.start_worker()
    assert jobs.wait(claimed).status == RunState.SUCCEEDED
    assert jobs.wait(created).status == RunState.SUCCEEDED
    assert "created-then-crashed" in log_file(settings, created).read_text()
    gone = jobs.wait(vanished)
    assert gone.status == RunState.FAILED and "gone" in gone.reason
    retry = [r for r in jobs.db.runs() if r.retry_of_id == vanished]
    assert len(retry) == 1 and jobs.wait(retry[0].id).status == RunState.SUCCEEDED
    for run_id in (claimed, created):
        assert jobs.creates(run_id) == 1
    assert jobs.removed(ended)
    assert jobs.db.run(ended).status == RunState.SUCCEEDED  # never moved back


def test_a_stopped_worker_leaves_jobs_running(jobs: Harness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command="sleep 3; echo after-restart")
    jobs.wait(run_id, RunState.RUNNING)
    jobs.stop_worker()  # a graceful stop (SIGTERM) does not kill jobs
    assert jobs.containers(run_id)[0].status == "running"
    started = datetime.now()
    jobs.start_worker()
    run = jobs.wait(run_id)
    assert run.status == RunState.SUCCEEDED and jobs.creates(run_id) == 1
    assert "after-restart" in log_file(jobs.settings, run_id).read_text()
    assert (datetime.now() - started).total_seconds() < 30
