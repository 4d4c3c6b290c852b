"""The ECS backend and the worker against moto in server mode (ECS with the EC2 launch
type, CloudWatch Logs), reached through the standard AWS environment.

moto runs a task without running anything: a task is RUNNING at once and moves on only
when a test lets it (moto's state manager), its container always exits 0, and the
awslogs driver's lines are written by the test into the stream ECS would use. Fargate
and awsvpc crash moto, so their request shape is checked with botocore's Stubber in
test_ecs_requests.py instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import update

from dockyard.models import Run, RunState
from dockyard.settings import Settings
from spawner.jobs.base import EngineState, JobSpec
from spawner.jobs.config import EcsOptions
from spawner.jobs.ecs import EcsJobBackend
from tests.jobs.conftest import (
    ALICE,
    SHELL_IMAGE,
    JobsHarness,
    eventually,
    log_file,
    unique_namespace,
)
from tests.jobs_pools.conftest import REGION, EcsCluster, set_task_transition


def options(cluster: EcsCluster, **changes: Any) -> EcsOptions:
    values: dict[str, Any] = dict(cluster=cluster.name, launch_type="EC2",
                                  log_group=cluster.log_group, region=REGION)
    values.update(changes)
    return EcsOptions(**values)


def backend(cluster: EcsCluster, namespace: str = "jpmoto") -> EcsJobBackend:
    return EcsJobBackend(namespace, "http://dockyard.example/services/dockyard/",
                         options(cluster), poll_seconds=0.2, log_poll_seconds=0.1,
                         log_settle_seconds=0.1)


def spec(run_id: int, **changes: Any) -> JobSpec:
    values: dict[str, Any] = dict(run_id=run_id, attempt=1, owner="alice", image=SHELL_IMAGE,
                                  argv=("/bin/sh", "-c", "echo hi"), cpu=0.25, memory_mb=256,
                                  env={"DOCKYARD_RUN_ID": str(run_id)})
    values.update(changes)
    return JobSpec(**values)


# -- the backend alone -------------------------------------------------------------------------
def test_start_tags_the_task_and_reconcile_finds_it(ecs_cluster: EcsCluster) -> None:
    jobs = backend(ecs_cluster)
    status = jobs.start(spec(11))
    assert status.state == EngineState.RUNNING and status.handle
    assert status.node and "container-instance" in status.node
    assert jobs.start(spec(11)).handle == status.handle  # never a second task
    assert ecs_cluster.task_arns() == [status.handle]

    described = ecs_cluster.ecs.describe_tasks(cluster=ecs_cluster.name, tasks=[status.handle],
                                              include=["TAGS"])["tasks"][0]
    tags = {t["key"]: t["value"] for t in described["tags"]}
    assert tags["dockyard.run-id"] == "11" and tags["dockyard.namespace"] == "jpmoto"
    assert described["startedBy"] == "dockyard-jpmoto"
    overrides = described["overrides"]["containerOverrides"][0]
    assert overrides["command"] == ["/bin/sh", "-c", "echo hi"]

    # A worker that restarts knows nothing; the listing by startedBy and tags finds the job.
    fresh = backend(ecs_cluster)
    found = fresh.list_jobs()
    assert list(found) == [11] and found[11].handle == status.handle
    assert fresh.start(spec(11)).handle == status.handle
    assert ecs_cluster.task_arns() == [status.handle]
    assert backend(ecs_cluster, namespace="other").list_jobs() == {}


def test_task_definitions_are_registered_once(ecs_cluster: EcsCluster) -> None:
    jobs = backend(ecs_cluster, namespace=unique_namespace("jp"))
    jobs.start(spec(21))
    jobs.start(spec(22))
    restarted = EcsJobBackend(jobs.namespace, jobs.dockyard_url, options(ecs_cluster),
                              poll_seconds=0.2)
    restarted.start(spec(23))

    def ours() -> list[str]:
        return [arn for arn in ecs_cluster.ecs.list_task_definitions()["taskDefinitionArns"]
                if f"/dockyard-{jobs.namespace}-" in arn]

    assert len(ours()) == 1 and ours()[0].endswith(":1")
    jobs.start(spec(24, memory_mb=512))
    assert len(ours()) == 2


def test_logs_come_from_cloudwatch_until_the_task_stops(ecs_cluster: EcsCluster) -> None:
    jobs = backend(ecs_cluster)
    status = jobs.start(spec(31))
    assert status.handle
    ecs_cluster.put_log_lines(status.handle, ["first line", "second line"])
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(jobs.logs(status.handle)))
    reader.start()
    eventually(lambda: len(got) == 2, timeout=10)
    assert reader.is_alive()  # following: the task still runs
    ecs_cluster.put_log_lines(status.handle, ["third line"])
    eventually(lambda: len(got) == 3, timeout=10)
    stopped = jobs.stop(status.handle, 1)
    assert stopped.state == EngineState.EXITED
    assert "Dockyard: the run was cancelled or timed out" in stopped.reason
    reader.join(10)
    assert not reader.is_alive()
    assert b"".join(got) == b"first line\nsecond line\nthird line\n"
    # Read again after the end: everything, at once.
    assert b"".join(jobs.logs(status.handle)) == b"first line\nsecond line\nthird line\n"


def test_a_job_without_a_log_stream_has_an_empty_log(ecs_cluster: EcsCluster) -> None:
    jobs = backend(ecs_cluster)
    status = jobs.start(spec(41))
    assert status.handle
    jobs.stop(status.handle, 1)
    assert list(jobs.logs(status.handle)) == []


# -- the worker with an ECS pool ----------------------------------------------------------------
class VanishingEcs:
    """The moto ECS client, except that chosen tasks are MISSING from describe_tasks: what
    ECS answers about a task it has forgotten (moto never forgets one)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.vanished: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def describe_tasks(self, **kwargs: Any) -> dict[str, Any]:
        asked = [arn for arn in kwargs["tasks"] if arn not in self.vanished]
        answer: dict[str, Any] = {"tasks": [], "failures": []}
        if asked:
            answer = self.real.describe_tasks(**{**kwargs, "tasks": asked})
        answer["failures"] = list(answer.get("failures") or []) + [
            {"arn": arn, "reason": "MISSING"} for arn in kwargs["tasks"] if arn in self.vanished]
        return answer


class EcsHarness(JobsHarness):
    """The jobs suite in an ECS pool (EC2 launch type) on moto's cluster."""

    run_defaults: ClassVar[dict[str, Any]] = {"command": "echo hi", "memory_mb": 256,
                                              "cpu": 0.25, "pool": "ecs-ec2"}

    def __init__(self, settings: Settings, cluster: EcsCluster, tmp_path: Path) -> None:
        super().__init__(settings, tmp_path, {
            "job_pools": {"ecs-ec2": {"backend": "ecs", "cluster": cluster.name,
                                      "launch_type": "EC2", "log_group": cluster.log_group,
                                      "region": REGION, "poll_seconds": 0.2,
                                      "description": "batch cluster on EC2"}},
            "job_backend": "local", "job_namespace": unique_namespace("jpe"),
            "worker_name": "ecs-worker", "job_stop_grace_seconds": 1})
        self.cluster = cluster

    def wait(self, run_id: int, *states: RunState, timeout: float = 30) -> Run:
        return super().wait(run_id, *states, timeout=timeout)


@pytest.fixture
def ecs(catalog: Settings, ecs_cluster: EcsCluster, tmp_path: Path) -> Iterator[EcsHarness]:
    harness = EcsHarness(catalog, ecs_cluster, tmp_path)
    yield harness
    harness.close()


def test_a_run_in_an_ecs_pool_succeeds_with_its_logs(ecs: EcsHarness, moto_server: str) -> None:
    ecs.start_worker()
    run_id = ecs.submit(command=["python", "-c", "print(42)"])
    running = ecs.wait(run_id, RunState.RUNNING)
    assert (running.pool, running.backend) == ("ecs-ec2", "ecs")
    assert running.engine_handle and ":task/" in running.engine_handle
    assert running.node and "container-instance" in running.node
    ecs.cluster.put_log_lines(running.engine_handle, ["42"])
    eventually(lambda: log_file(ecs.settings, run_id).exists()
               and b"42" in log_file(ecs.settings, run_id).read_bytes(), timeout=15)
    set_task_transition(moto_server, {"progression": "manual", "times": 1})  # let it end
    done = ecs.wait(run_id)
    assert (done.status, done.exit_code) == (RunState.SUCCEEDED, 0)
    assert log_file(ecs.settings, run_id).read_bytes() == b"42\n"
    assert ecs.cluster.last_statuses() == ["STOPPED"]
    events = [(e.to_status, e.reason) for e in ecs.db.events(run_id)]
    assert ("PENDING", "claimed by ecs-worker for the ecs backend (pool ecs-ec2)") in events
    shown = ecs.client.get(f"/api/v1/runs/{run_id}", headers=ALICE).json
    assert (shown["pool"], shown["engine_handle"]) == ("ecs-ec2", running.engine_handle)


def test_cancel_and_timeout_stop_the_task(ecs: EcsHarness) -> None:
    ecs.start_worker()
    cancelled = ecs.submit(command="sleep 600")
    ecs.wait(cancelled, RunState.RUNNING)
    assert ecs.client.post(f"/api/v1/runs/{cancelled}/cancel", headers=ALICE).status_code == 202
    run = ecs.wait(cancelled)
    assert run.status == RunState.CANCELLED
    assert "stopped with exit code 0; Dockyard: the run was cancelled or timed out" in run.reason
    timed = ecs.submit(command="sleep 600", timeout_seconds=1)
    run = ecs.wait(timed)
    assert run.status == RunState.TIMED_OUT and "exceeded its timeout" in run.reason
    assert ecs.cluster.last_statuses() == ["STOPPED", "STOPPED"]


def test_reconcile_after_a_restart_adopts_the_task(ecs: EcsHarness, moto_server: str) -> None:
    ecs.start_worker()
    run_id = ecs.submit(command="sleep 600")
    handle = ecs.wait(run_id, RunState.RUNNING).engine_handle
    ecs.stop_worker()
    # Cut short between claim and start as well: a PENDING run without a handle.
    pending = ecs.submit(command="sleep 600")
    with ecs.db.sessions() as session:
        session.execute(update(Run).where(Run.id == pending).values(
            status=RunState.PENDING, worker="ecs-worker", backend="ecs"))
        session.commit()
    ecs.start_worker()
    eventually(lambda: ecs.db.run(pending).status == RunState.RUNNING, timeout=20)
    assert ecs.db.run(run_id).engine_handle == handle
    assert len(ecs.cluster.task_arns()) == 2  # one task per run, none twice
    set_task_transition(moto_server, {"progression": "manual", "times": 1})
    assert ecs.wait(run_id).status == RunState.SUCCEEDED
    assert ecs.wait(pending).status == RunState.SUCCEEDED
    assert ecs.cluster.last_statuses() == ["STOPPED", "STOPPED"]


def test_a_task_that_disappears_fails_the_run_with_a_reason(ecs: EcsHarness) -> None:
    worker = ecs.start_worker()
    pool_backend = worker.pools.get("ecs-ec2").backend
    assert isinstance(pool_backend, EcsJobBackend)
    vanishing = VanishingEcs(pool_backend.ecs)
    pool_backend.ecs = vanishing
    run_id = ecs.submit(command="sleep 600")
    handle = ecs.wait(run_id, RunState.RUNNING).engine_handle
    assert handle
    vanishing.vanished.add(handle)
    run = ecs.wait(run_id)
    assert run.status == RunState.FAILED
    assert run.reason == ("the job vanished from the engine (ECS has no record of the task "
                          "(MISSING))")


def test_an_impossible_run_fails_at_once_with_the_reason(ecs: EcsHarness) -> None:
    ecs.start_worker()
    too_long = ecs.submit(env={"BLOB": "x" * 9000})
    run = ecs.wait(too_long)
    assert run.status == RunState.FAILED
    assert "ECS takes at most 8192" in run.reason
    assert ecs.cluster.last_statuses() == []  # refused before anything reached ECS
    carries_on = ecs.submit()
    assert ecs.wait(carries_on, RunState.RUNNING).engine_handle


# -- throttling on the wire --------------------------------------------------------------------
class ThrottlingProxy:
    """An HTTP proxy in front of moto that answers the first N calls of one ECS action
    with AWS's throttling error, as ECS does under load."""

    def __init__(self, upstream: str, action: str, throttle: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import requests

        proxy = self
        self.seen: list[str] = []
        self.throttle = throttle

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                proxy.seen.append(target.rsplit(".", 1)[-1])
                if target.endswith("." + action) and proxy.throttle > 0:
                    proxy.throttle -= 1
                    answer = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
                    self.send_response(400)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream_answer = requests.post(upstream + self.path, data=body, headers=headers,
                                                timeout=30)
                self.send_response(upstream_answer.status_code)
                for key in ("Content-Type", "x-amzn-RequestId"):
                    if key in upstream_answer.headers:
                        self.send_header(key, upstream_answer.headers[key])
                self.send_header("Content-Length", str(len(upstream_answer.content)))
                self.end_headers()
                self.wfile.write(upstream_answer.content)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_botocore_retries_throttled_calls_with_backoff(ecs_cluster: EcsCluster,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    proxy = ThrottlingProxy(os.environ["AWS_ENDPOINT_URL"], "DescribeTasks", throttle=2)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        jobs = backend(ecs_cluster)
        waits: list[float] = []
        jobs._sleep = waits.append
        handle = jobs.start(spec(51)).handle
        assert handle
        jobs.poll_seconds = 0.0
        started = time.monotonic()
        assert jobs.status(handle).state == EngineState.RUNNING
        # Two throttled answers and the third call through, all inside botocore, which
        # waited between them; Dockyard's own back-off was not needed.
        assert proxy.seen.count("DescribeTasks") == 3 and proxy.throttle == 0
        assert waits == []
        assert time.monotonic() - started > 0.05
    finally:
        proxy.close()
