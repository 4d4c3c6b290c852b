"""Fixtures for job pools: settings with named pools, a moto server for ECS and
CloudWatch Logs, and an EC2-backed ECS cluster in it."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from dockyard.settings import Settings
from tests.jobs.conftest import catalog, runs_db  # noqa: F401  (fixtures reused here)
from tests.support.moto import moto_server as run_moto_server

REGION = "us-east-1"


# -- moto in server mode -----------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_moto_server(tmp_path_factory.mktemp("moto-ecs")) as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The standard AWS environment pointing at the moto server, fake credentials: the
    backend finds both through boto3's own chain, as it would on a real deployment."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return moto_server


def set_task_transition(endpoint: str, transition: dict[str, Any] | None) -> None:
    """How moto moves ECS tasks on (None: back to its default, one step per describe)."""
    if transition is None:
        requests.post(f"{endpoint}/moto-api/state-manager/unset-transition",
                      data=json.dumps({"model_name": "ecs::task"}), timeout=5)
    else:
        requests.post(f"{endpoint}/moto-api/state-manager/set-transition",
                      data=json.dumps({"model_name": "ecs::task", "transition": transition}),
                      timeout=5).raise_for_status()


@dataclass
class EcsCluster:
    """A cluster with one registered EC2 container instance and a log group, in moto."""

    name: str
    log_group: str
    ecs: Any
    logs: Any

    def task_arns(self, desired: str = "RUNNING") -> list[str]:
        return self.ecs.list_tasks(cluster=self.name, desiredStatus=desired)["taskArns"]

    def last_statuses(self) -> list[str]:
        """What ECS says of every task of the cluster (moto keeps a task that stopped by
        itself listed as desired RUNNING, so the listing alone tells nothing)."""
        arns = sorted(set(self.task_arns("RUNNING")) | set(self.task_arns("STOPPED")))
        if not arns:
            return []
        tasks = self.ecs.describe_tasks(cluster=self.name, tasks=arns)["tasks"]
        return [t["lastStatus"] for t in tasks]

    def put_log_lines(self, task_arn: str, lines: list[str], prefix: str = "dockyard") -> None:
        """What the awslogs driver would write for the task's container."""
        stream = f"{prefix}/job/{task_arn.rsplit('/', 1)[-1]}"
        try:
            self.logs.create_log_stream(logGroupName=self.log_group, logStreamName=stream)
        except self.logs.exceptions.ResourceAlreadyExistsException:
            pass
        now = int(time.time() * 1000)
        self.logs.put_log_events(logGroupName=self.log_group, logStreamName=stream,
                                 logEvents=[{"timestamp": now + i, "message": line}
                                            for i, line in enumerate(lines)])


@pytest.fixture
def ecs_cluster(aws_env: str) -> Iterator[EcsCluster]:
    import boto3

    name = f"jp-{uuid.uuid4().hex[:8]}"
    ecs = boto3.client("ecs", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    logs = boto3.client("logs", region_name=REGION)
    ecs.create_cluster(clusterName=name)
    # moto places EC2-launch tasks only on a registered container instance, which
    # must name an instance that exists in (moto's) EC2.
    image_id = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1,
                                 InstanceType="m5.xlarge")["Instances"][0]["InstanceId"]
    document = json.dumps({"instanceId": instance, "region": REGION,
                           "availabilityZone": f"{REGION}a"})
    ecs.register_container_instance(cluster=name, instanceIdentityDocument=document)
    group = f"/dockyard/{name}"
    logs.create_log_group(logGroupName=group)
    set_task_transition(aws_env, {"progression": "manual", "times": 10**6})
    try:
        yield EcsCluster(name, group, ecs, logs)
    finally:
        set_task_transition(aws_env, None)


def pool_settings(base: Settings, pools: dict[str, Any], **overrides: Any) -> Settings:
    """``base`` with DOCKYARD_JOB_POOLS as an admin would write it (validated the same way)."""
    return Settings(**{**base.model_dump(exclude={"job_pools"}), "job_pools": pools,
                       **overrides})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path
