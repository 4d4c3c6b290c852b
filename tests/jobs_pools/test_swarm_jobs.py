"""Runs in a Swarm pool on a real single-node swarm: the same suite as the Docker
backend (success, failure, timeout, cancel, logs, reconcile after a kill -9 with no
double start) and a run asking for more memory than any node has, which waits PENDING
with the scheduler's reason instead of failing silently."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

from dockyard.models import RunState
from dockyard.settings import Settings
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_RUN_ID
from spawner.jobs.swarm import service_name
from tests.jobs.conftest import (
    ALICE,
    FINAL,
    SHELL_IMAGE,
    UNREACHABLE_URL,
    JobsHarness,
    eventually,
    log_file,
    unique_namespace,
)
from tests.support.requirements import require_docker, require_image
from tests.support.swarm import single_node_swarm

pytestmark = pytest.mark.docker

SWARM_POOL = {"backend": "swarm", "poll_seconds": 0.5, "description": "the team swarm"}


@pytest.fixture(scope="module")
def swarm() -> Iterator[docker.DockerClient]:
    require_docker()
    require_image(SHELL_IMAGE)
    engine = docker.from_env(timeout=120)
    with single_node_swarm(engine):
        yield engine
    engine.close()


class SwarmHarness(JobsHarness):
    """The jobs suite in a Swarm pool; services are found by the suite's labels."""

    run_defaults: ClassVar[dict[str, Any]] = {"memory_mb": 64, "cpu": 0.25, "pool": "swarm"}

    def __init__(self, settings: Settings, engine: docker.DockerClient, tmp_path: Path) -> None:
        super().__init__(settings, tmp_path, {
            "job_pools": {"swarm": SWARM_POOL}, "job_backend": "local",
            "job_namespace": unique_namespace("jps"), "worker_name": "swarm-worker",
            "job_stop_grace_seconds": 2})
        self.engine = engine

    def services(self, run_id: int | None = None) -> list[dict[str, Any]]:
        labels = [f"{LABEL_NAMESPACE}={self.namespace}"]
        if run_id is not None:
            labels.append(f"{LABEL_RUN_ID}={run_id}")
        return self.engine.api.services(filters={"label": labels})

    engine_objects = services  # removed() waits for a run's service to go

    def creates(self, run_id: int) -> int:
        """How many services were ever created for this run (the manager's events)."""
        events = self.engine.events(
            since=self.t0, until=time.time() + 0.5, decode=True,
            filters={"type": "service", "event": "create"})
        name = service_name(self.namespace, run_id)
        return sum(1 for event in events
                   if (event.get("Actor") or {}).get("Attributes", {}).get("name") == name)

    def close(self) -> None:
        super().close()
        for service in self.services():
            self.engine.api.remove_service(service["ID"])


@pytest.fixture
def jobs(catalog: Settings, swarm: docker.DockerClient, tmp_path: Path) -> Iterator[SwarmHarness]:
    harness = SwarmHarness(catalog, swarm, tmp_path)
    yield harness
    harness.close()


def test_a_run_succeeds_on_a_node_and_keeps_its_log(jobs: SwarmHarness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command='echo out; echo err >&2; id -u; echo "run=$DOCKYARD_RUN_ID"; '
                                 'sleep 1; echo done', memory_mb=96, cpu=0.5)
    running = jobs.wait(run_id, RunState.RUNNING, *FINAL)
    assert (running.pool, running.backend) == ("swarm", "swarm")
    (service,) = jobs.services(run_id)
    assert running.engine_handle == service["ID"]
    spec = service["Spec"]
    assert spec["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    resources = spec["TaskTemplate"]["Resources"]
    assert resources["Reservations"]["MemoryBytes"] == 96 * 2**20
    assert resources["Limits"]["NanoCPUs"] == 500_000_000
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["User"] == "1000:1000" and container["CapabilityDrop"] == ["ALL"]
    env = dict(item.split("=", 1) for item in container["Env"])
    assert env["DOCKYARD_URL"] == UNREACHABLE_URL and env["DOCKYARD_OWNER"] == "alice"

    run = jobs.wait(run_id)
    assert (run.status, run.exit_code) == (RunState.SUCCEEDED, 0)
    assert run.node == jobs.engine.info()["Name"]  # where it ran: the node's host name
    assert jobs.transitions(run_id) == ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED"]
    lines = log_file(jobs.settings, run_id).read_text().splitlines()
    assert lines.count("err") == 1
    assert [line for line in lines if line != "err"] == ["out", "1000", f"run={run_id}", "done"]
    assert jobs.removed(run_id)
    assert jobs.creates(run_id) == 1
    page = jobs.client.get(f"/api/v1/runs/{run_id}", headers=ALICE).json
    assert (page["pool"], page["node"]) == ("swarm", run.node)


def test_failure_keeps_the_exit_code_and_the_output(jobs: SwarmHarness) -> None:
    jobs.start_worker()
    run_id = jobs.submit(command=["sh", "-c", "echo boom >&2; exit 3"])
    run = jobs.wait(run_id)
    assert (run.status, run.exit_code, run.reason) == (RunState.FAILED, 3, "exit code 3")
    assert log_file(jobs.settings, run_id).read_text() == "boom\n"
    assert jobs.removed(run_id)


def test_an_image_no_node_has_fails_with_the_swarms_reason(jobs: SwarmHarness) -> None:
    from dockyard.models import ImageStatus
    from tests.jobs.conftest import add_images

    add_images(jobs.settings.db_url, ("dockyard-tests/absent:1", True, ImageStatus.READY))
    jobs.start_worker()
    run_id = jobs.submit(image="dockyard-tests/absent:1", command="true")
    run = jobs.wait(run_id)
    assert run.status == RunState.FAILED
    assert "the swarm could not start the task: No such image: dockyard-tests/absent:1" \
        in run.reason
    assert jobs.removed(run_id)


def test_timeout_and_cancel_stop_the_task_and_report_its_real_exit(jobs: SwarmHarness) -> None:
    jobs.start_worker()
    script = "trap 'echo got TERM; exit 5' TERM; echo started; while true; do sleep 0.2; done"
    cancelled = jobs.submit(command=script)
    timed = jobs.submit(command="echo started; exec sleep 600", timeout_seconds=2)
    jobs.wait(cancelled, RunState.RUNNING)
    eventually(lambda: "started" in _log(jobs, cancelled), timeout=20)
    assert jobs.client.post(f"/api/v1/runs/{cancelled}/cancel", headers=ALICE).status_code == 202
    run = jobs.wait(cancelled)
    assert (run.status, run.exit_code) == (RunState.CANCELLED, 5)
    assert "cancelled on request; stopped with exit code 5" in run.reason
    # What the job printed after SIGTERM is kept too.
    assert log_file(jobs.settings, cancelled).read_text() == "started\ngot TERM\n"

    run = jobs.wait(timed)
    assert run.status == RunState.TIMED_OUT
    assert "exceeded its timeout and was stopped" in run.reason
    assert run.exit_code == 143  # SIGTERM, forwarded by the task's init, ended sleep
    for run_id in (cancelled, timed):
        assert jobs.removed(run_id)
    # No task of a stopped job is left running on the node.
    left = jobs.engine.containers.list(filters={"label": f"{LABEL_NAMESPACE}={jobs.namespace}"})
    assert left == []


def test_more_memory_than_any_node_waits_pending_with_the_reason(jobs: SwarmHarness) -> None:
    jobs.start_worker()
    node_mb = jobs.engine.info()["MemTotal"] // 2**20
    big = jobs.submit(command="echo never", memory_mb=node_mb + 1024)
    run = jobs.wait(big, RunState.PENDING)
    eventually(lambda: "no suitable node" in jobs.db.run(big).reason, timeout=30)
    run = jobs.db.run(big)
    assert run.status == RunState.PENDING
    assert run.reason == "no suitable node (insufficient resources on 1 node)"
    assert ("PENDING", "waiting: no suitable node (insufficient resources on 1 node)") in [
        (e.to_status, e.reason) for e in jobs.db.events(big)]
    # The owner sees it on the run page and in the API.
    with jobs.client.session_transaction() as session:
        session["token"] = "tok-alice"
    page = jobs.client.get(f"/jobs/runs/{big}").data.decode()
    assert "no suitable node (insufficient resources on 1 node)" in page
    assert 'id="run-pool">swarm' in page
    time.sleep(3)  # still waiting: nothing failed it meanwhile
    assert jobs.db.run(big).status == RunState.PENDING
    assert len([e for e in jobs.db.events(big) if e.reason.startswith("waiting")]) == 1

    # A small run still gets through while the big one waits.
    small = jobs.submit(command="echo small")
    assert jobs.wait(small).status == RunState.SUCCEEDED

    assert jobs.client.post(f"/api/v1/runs/{big}/cancel", headers=ALICE).status_code == 202
    run = jobs.wait(big)
    assert run.status == RunState.CANCELLED
    assert jobs.removed(big)
    leftover = [t for t in jobs.engine.api.tasks()
                if t.get("ServiceID") == run.engine_handle]
    assert leftover == []  # no pending task is left to start later


def test_kill_9_mid_run_then_restart_reconciles_without_double_start(
        jobs: SwarmHarness) -> None:
    worker = jobs.start_worker_process()
    quick = jobs.submit(command="sleep 1; echo quick-done")
    slow = jobs.submit(command="sleep 8; echo slow-done")
    jobs.wait(quick, RunState.RUNNING, timeout=60)
    jobs.wait(slow, RunState.RUNNING, timeout=60)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    # While the worker is dead, one job finishes and the other keeps running.
    eventually(lambda: _task_state(jobs, quick) == "complete", timeout=30)
    assert _task_state(jobs, slow) == "running"
    assert jobs.db.run(quick).status == RunState.RUNNING  # nobody has looked yet

    jobs.start_worker_process()
    for run_id, word in ((quick, "quick-done"), (slow, "slow-done")):
        run = jobs.wait(run_id, timeout=60)
        assert run.status == RunState.SUCCEEDED, (run.status, run.reason)
        assert word in log_file(jobs.settings, run_id).read_text()
        assert jobs.transitions(run_id).count("RUNNING") == 1
        assert jobs.creates(run_id) == 1, "a run was started twice"
        assert jobs.removed(run_id)


def _log(jobs: SwarmHarness, run_id: int) -> str:
    path = log_file(jobs.settings, run_id)
    return path.read_text() if path.exists() else ""


def _task_state(jobs: SwarmHarness, run_id: int) -> str | None:
    (service,) = jobs.services(run_id)
    tasks = jobs.engine.api.tasks(filters={"service": [service["ID"]]})
    return tasks[0]["Status"]["State"] if tasks else None
