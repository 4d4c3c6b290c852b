"""The Swarm backend's pure parts: the service a run becomes, and how swarm task states
(with the scheduler's reasons and the container's exit) become engine-neutral states."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.jobs.states import outcome
from dockyard.models import RunState
from spawner.jobs.base import EngineState, JobSpec, JobStartError
from spawner.jobs.swarm import (
    LABEL_STOPPED,
    service_name,
    service_options,
    status_from_task,
    status_of_service,
)

STAMP = "2024-05-01T12:00:00.123456789Z"


def spec(**changes: Any) -> JobSpec:
    values: dict[str, Any] = dict(run_id=9, attempt=2, owner="alice", image="img:1",
                                  argv=("/bin/sh", "-c", "echo hi"), cpu=0.5, memory_mb=256,
                                  env={"DOCKYARD_RUN_ID": "9"})
    values.update(changes)
    return JobSpec(**values)


def test_a_run_is_one_job_task_with_reservations_equal_to_limits() -> None:
    options = service_options(spec(), namespace="ns", user="1000:1000", pids_limit=512,
                              stop_grace_seconds=7)
    assert options["name"] == service_name("ns", 9) == "dockyard-ns-run-9"
    assert options["mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert options["labels"] == {"dockyard.namespace": "ns", "dockyard.role": "job",
                                 "dockyard.run-id": "9", "dockyard.attempt": "2",
                                 "dockyard.owner": "alice"}
    template = options["task_template"]
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 2**20, "Pids": 512},
        "Reservations": {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 2**20}}
    container = template["ContainerSpec"]
    assert container["Image"] == "img:1"
    assert container["Command"] == ["/bin/sh", "-c", "echo hi"]
    assert container["Env"] == ["DOCKYARD_RUN_ID=9"]
    assert (container["User"], container["Init"]) == ("1000:1000", True)
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["StopGracePeriod"] == 7 * 10**9
    # The task's container is labelled for the run, under a role a Docker pool ignores.
    assert container["Labels"]["dockyard.run-id"] == "9"
    assert container["Labels"]["dockyard.role"] == "swarm-task"
    assert "Placement" not in template and "Networks" not in template


def test_network_constraints_and_gpus() -> None:
    options = service_options(spec(gpu=2), namespace="ns", user="u", network="jobs-net",
                              constraints=["node.labels.jobs==true"], gpu_resource="NVIDIA-GPU")
    template = options["task_template"]
    assert template["Placement"] == {"Constraints": ["node.labels.jobs==true"]}
    assert [network["Target"] for network in template["Networks"]] == ["jobs-net"]
    assert template["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}]
    with pytest.raises(JobStartError, match="this swarm pool offers no GPUs"):
        service_options(spec(gpu=1), namespace="ns", user="u")


def task(state: str, *, err: str = "", exit_code: int | None = None, container: bool = True,
         **fields: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Timestamp": STAMP, "Message": state}
    if err:
        status["Err"] = err
    if container:
        status["ContainerStatus"] = {"ContainerID": "c0ffee", "ExitCode": exit_code or 0}
    return {"ID": "t1", "Status": status, "NodeID": "node1", **fields}


@pytest.mark.parametrize(("described", "state", "exit_code", "reason"), [
    (task("new", container=False), EngineState.PENDING, None, ""),
    (task("pending", container=False,
          err="no suitable node (insufficient resources on 1 node)"),
     EngineState.PENDING, None, "no suitable node (insufficient resources on 1 node)"),
    (task("assigned", container=False), EngineState.PENDING, None, ""),
    (task("accepted", container=False), EngineState.PENDING, None, ""),
    (task("preparing", container=False), EngineState.PENDING, None, ""),
    (task("starting"), EngineState.PENDING, None, ""),
    (task("running"), EngineState.RUNNING, None, ""),
    (task("complete", exit_code=0), EngineState.EXITED, 0, ""),
    (task("failed", err="task: non-zero exit (3)", exit_code=3), EngineState.EXITED, 3, ""),
    (task("failed", err="task: non-zero exit (137)", exit_code=137), EngineState.EXITED, 137,
     "killed (SIGKILL), most often for going over its memory limit"),
    (task("failed", err="starting container failed: OCI runtime create failed", exit_code=128),
     EngineState.EXITED, 128, "starting container failed: OCI runtime create failed"),
    (task("rejected", err="No such image: nosuch/image:1", container=False),
     EngineState.EXITED, None, "the swarm could not start the task: No such image: nosuch"),
    (task("shutdown", exit_code=143), EngineState.EXITED, 143, "the swarm stopped the task"),
    (task("shutdown", container=False), EngineState.EXITED, None,
     "the swarm stopped the task before it ran"),
    (task("orphaned"), EngineState.EXITED, 0, "the node running the task stopped answering"),
    (task("remove", exit_code=137), EngineState.EXITED, 137, "the swarm stopped the task"),
])
def test_task_states(described: dict[str, Any], state: EngineState, exit_code: int | None,
                     reason: str) -> None:
    status = status_from_task(described, handle="svc1", node="vm")
    assert (status.state, status.handle) == (state, "svc1")
    assert status.exit_code == exit_code
    assert reason in status.reason
    if not reason:
        assert status.reason == ""


def test_times_are_taken_from_the_task() -> None:
    running = status_from_task(task("running"), handle="s")
    assert running.started_at is not None and running.started_at.microsecond == 123456
    ended = status_from_task(task("complete"), handle="s")
    assert ended.finished_at == running.started_at and ended.started_at is None


def test_a_service_is_judged_by_its_latest_task() -> None:
    service = {"ID": "svc1", "Spec": {"Labels": {}}}
    old = {**task("shutdown", exit_code=143), "Version": {"Index": 10}}
    new = {**task("running"), "Version": {"Index": 12}}
    status = status_of_service(service, [new, old], node_name=lambda node: f"host-of-{node}")
    assert (status.state, status.node) == (EngineState.RUNNING, "host-of-node1")
    waiting = status_of_service(service, [])
    assert (waiting.state, waiting.reason) == (EngineState.PENDING,
                                               "waiting for the swarm to schedule the task")
    stopped = status_of_service({"ID": "svc1", "Spec": {"Labels": {LABEL_STOPPED: "true"}},
                                 "UpdatedAt": STAMP}, [])
    assert stopped.state == EngineState.EXITED and stopped.finished_at is not None


@pytest.mark.parametrize(("described", "run_state", "why"), [
    (task("complete", exit_code=0), RunState.SUCCEEDED, ""),
    (task("failed", err="task: non-zero exit (3)", exit_code=3), RunState.FAILED,
     "exit code 3"),
    (task("rejected", err="No such image: x:1", container=False), RunState.FAILED,
     "no exit code; the swarm could not start the task: No such image: x:1"),
])
def test_what_the_run_becomes(described: dict[str, Any], run_state: RunState,
                              why: str) -> None:
    final, reason = outcome(status_from_task(described, handle="s"), intent=None,
                            cancel_requested=False, deadline=None)
    assert (final, reason) == (run_state, why)
