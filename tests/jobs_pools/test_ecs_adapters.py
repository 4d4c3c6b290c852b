"""The ECS backend's pure parts: Fargate sizes, the requests it builds, and how ECS
task states, stop codes and exit codes become a run's state and reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dockyard.jobs.states import outcome
from dockyard.models import RunState
from spawner.jobs.base import EngineState, JobSpec, JobStartError
from spawner.jobs.config import EcsOptions
from spawner.jobs.ecs import (
    explain_stop,
    fargate_size,
    log_stream_name,
    run_task_request,
    status_from_task,
    task_definition_family,
    task_definition_request,
)

ARN = "arn:aws:ecs:us-east-1:123456789012:task/batch/0123456789abcdef0123456789abcdef"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
FARGATE = EcsOptions(cluster="batch", subnets=("subnet-1",), security_groups=("sg-1",),
                     execution_role_arn="arn:aws:iam::1:role/exec", log_group="/jobs")


def spec(**changes: Any) -> JobSpec:
    values: dict[str, Any] = dict(run_id=42, attempt=1, owner="alice", image="img:1",
                                  argv=("python", "train.py"), cpu=1.0, memory_mb=2048,
                                  env={"B": "2", "A": "1"})
    values.update(changes)
    return JobSpec(**values)


@pytest.mark.parametrize(("cpu", "memory", "size"), [
    (0.25, 512, (256, 512)),
    (0.1, 100, (256, 512)),
    (0.5, 1024, (512, 1024)),
    (0.25, 3000, (512, 3072)),  # more memory than 0.25 vCPU allows: the next CPU size
    (1, 3000, (1024, 3072)),
    (2, 1000, (2048, 4096)),
    (4, 30720, (4096, 30720)),
    (8, 20000, (8192, 20480)),  # 4 GB steps at 8 vCPUs
    (16, 122880, (16384, 122880)),
])
def test_fargate_sizes(cpu: float, memory: int, size: tuple[int, int]) -> None:
    assert fargate_size(cpu, memory) == size


def test_no_fargate_size_is_refused_clearly() -> None:
    with pytest.raises(JobStartError, match="no Fargate task size has 16 CPUs and 200000 MB"):
        fargate_size(16, 200000)
    with pytest.raises(JobStartError, match="no Fargate task size"):
        fargate_size(32, 1024)


def test_task_definition_for_fargate() -> None:
    request = task_definition_request("img:1", 1.0, 2048, 0, FARGATE)
    assert request == {
        "containerDefinitions": [{
            "name": "job", "image": "img:1", "essential": True, "memory": 2048,
            "user": "1000:1000",
            "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
            "stopTimeout": 10,
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": "/jobs", "awslogs-stream-prefix": "dockyard"}},
        }],
        "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
        "cpu": "1024", "memory": "2048",
        "executionRoleArn": "arn:aws:iam::1:role/exec",
    }


def test_task_definition_for_ec2_keeps_the_docker_hardening() -> None:
    options = EcsOptions(cluster="gpu", launch_type="EC2", log_group="/jobs", region="eu-west-1",
                         task_role_arn="arn:aws:iam::1:role/job")
    request = task_definition_request("img:1", 0.5, 512, 1, options, stop_grace_seconds=300)
    container = request["containerDefinitions"][0]
    assert request["networkMode"] == "bridge" and request["requiresCompatibilities"] == ["EC2"]
    assert "cpu" not in request and "memory" not in request
    assert container["cpu"] == 512 and container["memory"] == 512
    assert container["dockerSecurityOptions"] == ["no-new-privileges"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert container["stopTimeout"] == 120  # ECS's ceiling
    assert container["logConfiguration"]["options"]["awslogs-region"] == "eu-west-1"
    assert request["taskRoleArn"] == "arn:aws:iam::1:role/job"


def test_fargate_has_no_gpus() -> None:
    with pytest.raises(JobStartError, match="Fargate offers no GPUs"):
        task_definition_request("img:1", 1, 2048, 1, FARGATE)


def test_family_names_follow_the_content() -> None:
    one = task_definition_request("img:1", 1, 2048, 0, FARGATE)
    family, digest = task_definition_family("ns", one)
    assert family == f"dockyard-ns-{digest[:16]}"
    assert task_definition_family("ns", task_definition_request("img:1", 1, 2048, 0,
                                                                FARGATE))[0] == family
    assert task_definition_family("ns", task_definition_request("img:2", 1, 2048, 0,
                                                                FARGATE))[0] != family
    assert task_definition_family("ns", task_definition_request("img:1", 1, 4096, 0,
                                                                FARGATE))[0] != family


def test_run_task_request_for_fargate() -> None:
    request = run_task_request(spec(), "arn:td:1", FARGATE, "ns")
    assert request == {
        "cluster": "batch", "taskDefinition": "arn:td:1", "count": 1,
        "overrides": {"containerOverrides": [{
            "name": "job", "command": ["python", "train.py"],
            "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]},
        "startedBy": "dockyard-ns",
        "tags": [{"key": "dockyard.namespace", "value": "ns"},
                 {"key": "dockyard.role", "value": "job"},
                 {"key": "dockyard.run-id", "value": "42"},
                 {"key": "dockyard.attempt", "value": "1"},
                 {"key": "dockyard.owner", "value": "alice"}],
        "clientToken": "dockyard-ns-run-42",
        "launchType": "FARGATE",
        "networkConfiguration": {"awsvpcConfiguration": {
            "subnets": ["subnet-1"], "assignPublicIp": "DISABLED", "securityGroups": ["sg-1"]}},
    }


def test_run_task_request_with_a_capacity_provider() -> None:
    options = EcsOptions(cluster="batch", capacity_provider="FARGATE_SPOT",
                         subnets=("subnet-1",), platform_version="1.4.0", log_group="/jobs")
    request = run_task_request(spec(), "arn:td:1", options, "ns")
    assert request["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT",
                                                    "weight": 1}]
    assert "launchType" not in request and request["platformVersion"] == "1.4.0"


def test_overrides_over_ecs_limit_are_refused_before_any_call() -> None:
    big = spec(env={"DATA": "x" * 9000})
    with pytest.raises(JobStartError, match="ECS takes at most 8192"):
        run_task_request(big, "arn:td:1", FARGATE, "ns")


def test_log_stream_is_prefix_container_task_id() -> None:
    assert log_stream_name("dockyard", ARN) == "dockyard/job/0123456789abcdef0123456789abcdef"


def task(last: str, **fields: Any) -> dict[str, Any]:
    container = fields.pop("container", {})
    return {"taskArn": ARN, "lastStatus": last,
            "containers": [{"name": "sidecar", "exitCode": 99},
                           {"name": "job", **container}], **fields}


@pytest.mark.parametrize(("described", "state", "exit_code", "reason"), [
    (task("PROVISIONING"), EngineState.PENDING, None, ""),
    (task("PENDING", pullStartedAt=T0), EngineState.PENDING, None, "pulling the image"),
    (task("ACTIVATING"), EngineState.PENDING, None, ""),
    (task("RUNNING", startedAt=T0), EngineState.RUNNING, None, ""),
    (task("DEACTIVATING", startedAt=T0), EngineState.RUNNING, None, ""),
    (task("STOPPING"), EngineState.PENDING, None, ""),
    (task("STOPPED", startedAt=T0, stoppedAt=T1, stopCode="EssentialContainerExited",
          container={"exitCode": 0}), EngineState.EXITED, 0, ""),
    (task("STOPPED", stopCode="EssentialContainerExited", container={"exitCode": 3}),
     EngineState.EXITED, 3, ""),
    (task("STOPPED", stopCode="EssentialContainerExited",
          container={"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to "
                     "memory usage"}), EngineState.EXITED, 137, "out of memory"),
    (task("STOPPED", stopCode="TaskFailedToStart",
          stoppedReason="CannotPullContainerError: pull image manifest has been retried 5 "
          "time(s)"), EngineState.EXITED, None,
     "ECS could not start the task: CannotPullContainerError"),
    (task("STOPPED", stopCode="UserInitiated", stoppedReason="Dockyard: the run was "
          "cancelled or timed out", container={"exitCode": 143}), EngineState.EXITED, 143,
     "stopped through the ECS API: Dockyard"),
    (task("STOPPED", stopCode="SpotInterruption", container={"exitCode": 143}),
     EngineState.EXITED, 143, "reclaimed the Spot capacity"),
    (task("STOPPED", stopCode="TerminationNotice"), EngineState.EXITED, None,
     "instance running the task was being terminated"),
    (task("STOPPED", stopCode="ServiceSchedulerInitiated", stoppedReason="scaled in"),
     EngineState.EXITED, None, "ECS service scheduler: scaled in"),
    (task("STOPPED", stopCode="InfrastructureHealth", stoppedReason="host unhealthy"),
     EngineState.EXITED, None, "infrastructure problem: host unhealthy"),
])
def test_task_states(described: dict[str, Any], state: EngineState, exit_code: int | None,
                     reason: str) -> None:
    status = status_from_task(described)
    assert status.state == state
    assert status.handle == ARN
    assert status.exit_code == exit_code  # the job container's, never a sidecar's
    assert reason in status.reason
    if not reason:
        assert status.reason == ""


def test_times_and_where_it_ran() -> None:
    ended = status_from_task(task("STOPPED", startedAt=T0, stoppedAt=T1,
                                  availabilityZone="us-east-1a", container={"exitCode": 0}))
    assert (ended.started_at, ended.finished_at, ended.node) == (T0, T1, "Fargate, us-east-1a")
    on_ec2 = status_from_task(task("RUNNING", startedAt=T0,
                                   containerInstanceArn="arn:aws:ecs:ci/abc"))
    assert on_ec2.node == "arn:aws:ecs:ci/abc"


@pytest.mark.parametrize(("described", "run_state", "why"), [
    (task("STOPPED", stopCode="EssentialContainerExited", container={"exitCode": 0}),
     RunState.SUCCEEDED, ""),
    (task("STOPPED", stopCode="EssentialContainerExited", container={"exitCode": 2}),
     RunState.FAILED, "exit code 2"),
    (task("STOPPED", stopCode="TaskFailedToStart", stoppedReason="ResourceInitializationError"),
     RunState.FAILED, "no exit code; ECS could not start the task: ResourceInitializationError"),
    (task("STOPPED", stopCode="SpotInterruption", container={"exitCode": 143}),
     RunState.FAILED, "exit code 143; AWS reclaimed the Spot capacity running the task"),
])
def test_what_the_run_becomes(described: dict[str, Any], run_state: RunState,
                              why: str) -> None:
    final, reason = outcome(status_from_task(described), intent=None, cancel_requested=False,
                            deadline=None)
    assert final == run_state
    assert reason == why


def test_stop_codes_without_detail() -> None:
    assert explain_stop(None, "", "") == ""
    assert explain_stop("UserInitiated", "", "") == "stopped through the ECS API: no reason given"
    assert explain_stop("SomethingNew", "odd", "") == "odd"
