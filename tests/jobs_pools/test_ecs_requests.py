"""The exact requests the ECS backend sends (botocore's Stubber on the backend's own
clients, built from a pool configured as an admin would): registration once per image
and size, run_task for Fargate, batched describes, a task ECS no longer knows, stop
with a reason, and throttling that is waited out rather than fatal."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber

from dockyard.settings import Settings
from dockyard.worker.backends import JobPool, JobPools
from spawner.jobs.base import EngineState, JobSpec, JobStartError
from spawner.jobs.config import EcsOptions
from spawner.jobs.ecs import (
    RETRY_CONFIG,
    EcsJobBackend,
    EcsThrottled,
    task_definition_family,
)
from tests.jobs_pools.conftest import pool_settings

NS = "jp"
REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
POOL = {"backend": "ecs", "cluster": "batch", "region": "eu-west-1",
        "subnets": ["subnet-1", "subnet-2"], "security_groups": ["sg-1"],
        "task_role_arn": "arn:aws:iam::123456789012:role/job",
        "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
        "log_group": "/dockyard/jobs", "image_prefix": REGISTRY}
TD_ARN = "arn:aws:ecs:eu-west-1:123456789012:task-definition/dockyard-jp-x:1"


def arn(n: int) -> str:
    return f"arn:aws:ecs:eu-west-1:123456789012:task/batch/{n:032x}"


def spec(run_id: int = 7, **changes: Any) -> JobSpec:
    values: dict[str, Any] = dict(run_id=run_id, attempt=1, owner="alice",
                                  image="dockyard/test:latest", argv=("/bin/sh", "-c", "echo hi"),
                                  cpu=0.5, memory_mb=1024, env={"DOCKYARD_RUN_ID": str(run_id)})
    values.update(changes)
    return JobSpec(**values)


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def pool(settings: Settings, fake_credentials: None) -> Iterator[JobPool]:
    pools = JobPools.from_settings(
        pool_settings(settings, {"ecs-fargate": POOL}, job_backend="local",
                      job_stop_grace_seconds=20), namespace=NS)
    yield pools.get("ecs-fargate")
    pools.close()


class Stubbed:
    def __init__(self, backend: EcsJobBackend) -> None:
        self.backend = backend
        self.ecs = Stubber(backend.ecs)
        self.logs = Stubber(backend.cloudwatch)
        self.sleeps: list[float] = []
        backend._sleep = self.sleeps.append  # throttling waits are recorded, not slept
        self.ecs.activate()
        self.logs.activate()

    def done(self) -> None:
        self.ecs.assert_no_pending_responses()
        self.logs.assert_no_pending_responses()


@pytest.fixture
def stub(pool: JobPool) -> Iterator[Stubbed]:
    assert isinstance(pool.backend, EcsJobBackend)
    stubbed = Stubbed(pool.backend)
    yield stubbed
    stubbed.ecs.deactivate()
    stubbed.logs.deactivate()


def expected_registration(image: str, cpu: str = "512", memory: str = "1024",
                          container_memory: int = 1024) -> dict[str, Any]:
    body = {
        "containerDefinitions": [{
            "name": "job", "image": image, "essential": True, "memory": container_memory,
            "user": "1000:1000",
            "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
            "stopTimeout": 20,
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": "/dockyard/jobs", "awslogs-stream-prefix": "dockyard",
                "awslogs-region": "eu-west-1"}},
        }],
        "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
        "cpu": cpu, "memory": memory,
        "taskRoleArn": "arn:aws:iam::123456789012:role/job",
        "executionRoleArn": "arn:aws:iam::123456789012:role/exec",
    }
    family, digest = task_definition_family(NS, body)
    return {"family": family, **body,
            "tags": [{"key": "dockyard.namespace", "value": NS},
                     {"key": "dockyard.content-hash", "value": digest}]}


def expected_run_task(run_id: int, td_arn: str = TD_ARN) -> dict[str, Any]:
    return {
        "cluster": "batch", "taskDefinition": td_arn, "count": 1,
        "overrides": {"containerOverrides": [{
            "name": "job", "command": ["/bin/sh", "-c", "echo hi"],
            "environment": [{"name": "DOCKYARD_RUN_ID", "value": str(run_id)}]}]},
        "startedBy": "dockyard-jp",
        "tags": [{"key": "dockyard.namespace", "value": NS},
                 {"key": "dockyard.role", "value": "job"},
                 {"key": "dockyard.run-id", "value": str(run_id)},
                 {"key": "dockyard.attempt", "value": "1"},
                 {"key": "dockyard.owner", "value": "alice"}],
        "clientToken": f"dockyard-jp-run-{run_id}",
        "launchType": "FARGATE",
        "networkConfiguration": {"awsvpcConfiguration": {
            "subnets": ["subnet-1", "subnet-2"], "assignPublicIp": "DISABLED",
            "securityGroups": ["sg-1"]}},
    }


def task(n: int, last: str = "PROVISIONING", **fields: Any) -> dict[str, Any]:
    return {"taskArn": arn(n), "lastStatus": last, "containers": [{"name": "job", **fields}]}


def not_found(stub: Stubbed) -> None:
    stub.ecs.add_client_error("describe_task_definition", service_error_code="ClientException",
                              service_message="Unable to describe task definition.",
                              http_status_code=400)


def test_client_uses_botocores_adaptive_retries(pool: JobPool) -> None:
    config = pool.backend.ecs.meta.config  # type: ignore[attr-defined]
    assert config.retries == RETRY_CONFIG and config.region_name == "eu-west-1"
    assert pool.backend.cloudwatch.meta.config.retries == RETRY_CONFIG  # type: ignore


def test_first_fargate_run_registers_then_runs_with_exact_parameters(pool: JobPool,
                                                                       stub: Stubbed) -> None:
    image = f"{REGISTRY}/dockyard/test:latest"
    registration = expected_registration(image)
    not_found(stub)
    stub.ecs.add_response("register_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN}}, registration)
    stub.ecs.add_response("run_task", {"tasks": [task(1)], "failures": []},
                          expected_run_task(7))
    status = pool.backend.start(pool.prepare(spec(7)))  # the pool puts its registry first
    assert (status.state, status.handle) == (EngineState.PENDING, arn(1))
    stub.done()

    # Same image and size: the task definition is reused, only run_task is sent.
    stub.ecs.add_response("run_task", {"tasks": [task(2)], "failures": []},
                          expected_run_task(8))
    assert pool.backend.start(pool.prepare(spec(8))).handle == arn(2)
    stub.done()

    # More memory: another task definition (2 GB does not fit a 0.5 vCPU size of 1 GB).
    bigger = expected_registration(image, cpu="512", memory="2048", container_memory=2048)
    assert bigger["family"] != registration["family"]
    not_found(stub)
    stub.ecs.add_response("register_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN + "0"}}, bigger)
    stub.ecs.add_response("run_task", {"tasks": [task(3)], "failures": []},
                          {**expected_run_task(9, TD_ARN + "0")})
    pool.backend.start(pool.prepare(spec(9, memory_mb=2048)))
    stub.done()


def test_a_restarted_worker_finds_the_task_definition_instead_of_registering(
        pool: JobPool, stub: Stubbed) -> None:
    family = expected_registration(f"{REGISTRY}/dockyard/test:latest")["family"]
    stub.ecs.add_response("describe_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN, "status": "ACTIVE"}},
                          {"taskDefinition": family})
    stub.ecs.add_response("run_task", {"tasks": [task(1)], "failures": []},
                          expected_run_task(7))
    pool.backend.start(pool.prepare(spec(7)))
    stub.done()


def test_a_run_already_started_is_not_started_again(pool: JobPool, stub: Stubbed) -> None:
    not_found(stub)
    stub.ecs.add_response("register_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN}})
    stub.ecs.add_response("run_task", {"tasks": [task(1)], "failures": []})
    first = pool.backend.start(pool.prepare(spec(7)))
    again = pool.backend.start(pool.prepare(spec(7)))  # served from what it knows
    assert again.handle == first.handle
    stub.done()


def test_no_room_on_the_cluster_is_a_clear_start_error(pool: JobPool, stub: Stubbed) -> None:
    not_found(stub)
    stub.ecs.add_response("register_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN}})
    stub.ecs.add_response("run_task", {"tasks": [], "failures": [
        {"arn": "arn:aws:ecs:eu-west-1:1:container-instance/x", "reason": "RESOURCE:MEMORY"}]})
    with pytest.raises(JobStartError, match=r"no container instance of cluster batch has room "
                                            r"for the task \(RESOURCE:MEMORY\)"):
        pool.backend.start(pool.prepare(spec(7)))


def test_ecs_refusing_the_task_is_a_start_error(pool: JobPool, stub: Stubbed) -> None:
    not_found(stub)
    stub.ecs.add_response("register_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN}})
    stub.ecs.add_client_error("run_task", service_error_code="InvalidParameterException",
                              service_message="subnet-1 does not exist", http_status_code=400)
    with pytest.raises(JobStartError, match="ECS refused the task: subnet-1 does not exist"):
        pool.backend.start(pool.prepare(spec(7)))


def test_status_is_one_describe_per_hundred_tasks(settings: Settings,
                                                 fake_credentials: None) -> None:
    options = EcsOptions(cluster="batch", subnets=("s",), log_group="/jobs", region="eu-west-1")
    backend = EcsJobBackend(NS, "http://dockyard/", options, poll_seconds=0.2)
    stub = Stubbed(backend)
    arns = [arn(n) for n in range(250)]
    stub.ecs.add_response("list_tasks", {"taskArns": arns[:100], "nextToken": "p2"},
                          {"cluster": "batch", "startedBy": "dockyard-jp",
                           "desiredStatus": "RUNNING"})
    stub.ecs.add_response("list_tasks", {"taskArns": arns[100:]},
                          {"cluster": "batch", "startedBy": "dockyard-jp",
                           "desiredStatus": "RUNNING", "nextToken": "p2"})
    stub.ecs.add_response("list_tasks", {"taskArns": []},
                          {"cluster": "batch", "startedBy": "dockyard-jp",
                           "desiredStatus": "STOPPED"})

    def tagged(n: int) -> dict[str, Any]:
        return {**task(n, "RUNNING"), "startedAt": datetime.now(UTC),
                "tags": [{"key": "dockyard.namespace", "value": NS},
                         {"key": "dockyard.run-id", "value": str(1000 + n)}]}

    ordered = sorted(arns)
    for start in (0, 100, 200):
        batch = ordered[start:start + 100]
        stub.ecs.add_response(
            "describe_tasks",
            {"tasks": [tagged(int(a.rsplit("/", 1)[1], 16)) for a in batch], "failures": []},
            {"cluster": "batch", "tasks": batch, "include": ["TAGS"]})
    jobs = backend.list_jobs()
    assert len(jobs) == 250 and jobs[1007].handle == arn(7)
    assert all(s.state == EngineState.RUNNING for s in jobs.values())
    stub.done()

    # Within the poll interval every status comes from that listing: no call at all.
    assert backend.status(arn(7)).state == EngineState.RUNNING
    stub.done()

    # After it, one status refreshes all 250 followed tasks in three calls.
    time.sleep(0.25)
    for start in (0, 100, 200):
        batch = ordered[start:start + 100]
        stub.ecs.add_response(
            "describe_tasks",
            {"tasks": [task(int(a.rsplit("/", 1)[1], 16), "STOPPED", exitCode=0)
                       for a in batch], "failures": []},
            {"cluster": "batch", "tasks": batch})
    assert backend.status(arn(7)).state == EngineState.EXITED
    assert backend.status(arn(200)).exit_code == 0  # already refreshed with the others
    stub.done()


def test_a_task_ecs_no_longer_knows_is_missing(pool: JobPool, stub: Stubbed) -> None:
    stub.ecs.add_response("describe_tasks", {"tasks": [], "failures": [
        {"arn": arn(5), "reason": "MISSING"}]}, {"cluster": "batch", "tasks": [arn(5)]})
    status = pool.backend.status(arn(5))
    assert status.state == EngineState.MISSING
    assert status.reason == "ECS has no record of the task (MISSING)"
    stub.done()


def test_stop_sends_a_reason_and_reports_what_ecs_says(pool: JobPool, stub: Stubbed) -> None:
    stub.ecs.add_response("stop_task", {"task": task(5, "RUNNING")},
                          {"cluster": "batch", "task": arn(5),
                           "reason": "Dockyard: the run was cancelled or timed out"})
    stub.ecs.add_response("describe_tasks", {"tasks": [
        {**task(5, "STOPPED", exitCode=143), "stopCode": "UserInitiated",
         "stoppedReason": "Dockyard: the run was cancelled or timed out"}], "failures": []})
    status = pool.backend.stop(arn(5), 20)
    assert (status.state, status.exit_code) == (EngineState.EXITED, 143)
    assert status.reason == ("stopped through the ECS API: Dockyard: the run was cancelled or "
                             "timed out")
    stub.done()


def test_throttling_is_waited_out(pool: JobPool, stub: Stubbed) -> None:
    for _ in range(2):
        stub.ecs.add_client_error("describe_tasks", service_error_code="ThrottlingException",
                                  service_message="Rate exceeded", http_status_code=400)
    stub.ecs.add_response("describe_tasks", {"tasks": [task(5, "RUNNING")], "failures": []},
                          {"cluster": "batch", "tasks": [arn(5)]})
    assert pool.backend.status(arn(5)).state == EngineState.RUNNING
    assert len(stub.sleeps) == 2 and stub.sleeps[0] < stub.sleeps[1] * 2 + 1
    stub.done()

    not_found(stub)
    stub.ecs.add_response("register_task_definition",
                          {"taskDefinition": {"taskDefinitionArn": TD_ARN}})
    stub.ecs.add_client_error("run_task", service_error_code="ThrottlingException",
                              http_status_code=400)
    stub.ecs.add_response("run_task", {"tasks": [task(6)], "failures": []},
                          expected_run_task(7))
    assert pool.backend.start(pool.prepare(spec(7))).handle == arn(6)
    stub.done()


def test_throttling_that_does_not_end_keeps_the_last_answer(pool: JobPool,
                                                          stub: Stubbed) -> None:
    backend = pool.backend
    assert isinstance(backend, EcsJobBackend)
    stub.ecs.add_response("describe_tasks", {"tasks": [
        {**task(5, "RUNNING"), "startedAt": datetime.now(UTC)}], "failures": []})
    assert backend.status(arn(5)).state == EngineState.RUNNING
    backend.poll_seconds = 0.0
    for _ in range(backend.throttle_attempts):
        stub.ecs.add_client_error("describe_tasks", service_error_code="ThrottlingException",
                                  http_status_code=400)
    # The worker is told the last known state, not an error and not a guess.
    assert backend.status(arn(5)).state == EngineState.RUNNING
    # With nothing known, the throttling reaches the caller as a transient error (the
    # worker tries again later), never as a start error that would fail the run.
    for _ in range(backend.throttle_attempts):
        stub.ecs.add_client_error("describe_tasks", service_error_code="ThrottlingException",
                                  http_status_code=400)
    with pytest.raises(EcsThrottled):
        backend.status(arn(6))
    assert not issubclass(EcsThrottled, JobStartError)
    stub.done()


def test_an_unknown_region_is_a_clear_setting_error(settings: Settings, fake_credentials: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    no_region = {k: v for k, v in POOL.items() if k != "region"}
    with pytest.raises(ValueError, match="an ecs pool needs a region"):
        JobPools.from_settings(pool_settings(settings, {"e": no_region}, job_backend="local"),
                               namespace=NS)

