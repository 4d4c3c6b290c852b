"""Fixtures for clusters on real engines: the notebook image (it has both Ray and Spark),
cluster backends on a namespace of their own, and job drivers that join a cluster's
network. Every fixture removes what it made, whatever the outcome."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from spawner.clusters import driver_env
from spawner.clusters.base import DRIVER_ALIAS, ClusterBackend, ClusterPhase, ClusterSpec
from spawner.jobs.base import LABEL_NAMESPACE, JobBackend, JobSpec
from tests.support.requirements import require_docker, require_image

NOTEBOOK_IMAGE = "dockyard/notebook:latest"
#: Time a cluster of three gets to become ready on a busy two-core machine.
READY_TIMEOUT = 240


def unique_namespace(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def wait_for(check: Callable[[], Any], *, timeout: float, what: str,
             interval: float = 0.25) -> Any:
    """``check()``'s first truthy value; fails with ``what`` when none came in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s", pytrace=False)
        time.sleep(interval)


def wait_ready(backend: ClusterBackend, cluster_id: int, workers: int) -> Any:
    last: list[Any] = [None]

    def ready() -> Any:
        status = last[0] = backend.status(cluster_id)
        assert status.phase != ClusterPhase.FAILED, status.reason
        return status if status.phase == ClusterPhase.READY \
            and status.workers_ready >= workers else None
    try:
        return wait_for(ready, timeout=READY_TIMEOUT,
                        what=f"cluster {cluster_id} with {workers} workers ready")
    except pytest.fail.Exception:
        pytest.fail(f"cluster {cluster_id} did not become ready: {last[0]}", pytrace=False)


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    require_docker()
    require_image(NOTEBOOK_IMAGE)
    client = docker.from_env(timeout=120)
    yield client
    client.close()


def cluster_spec(cluster_id: int, kind: str, *, workers: int = 2, owner: str = "alice",
                 **overrides: Any) -> ClusterSpec:
    values: dict[str, Any] = {
        "cluster_id": cluster_id, "owner": owner, "kind": kind, "image": NOTEBOOK_IMAGE,
        "workers": workers, "worker_cpu": 1.0, "worker_memory_mb": 1536, "head_cpu": 1.0,
        "head_memory_mb": 1536, "env": {"DOCKYARD_DATA_ROOT": "/dockyard/data"},
        "dashboard_path": f"/services/dockyard/clusters/{cluster_id}/dashboard",
    }
    return ClusterSpec(**{**values, **overrides})


@pytest.fixture
def started_cluster() -> Iterator[Callable[[ClusterBackend, ClusterSpec], Any]]:
    """Start clusters that are removed at the end of the test, whatever the outcome."""
    made: list[tuple[ClusterBackend, int]] = []

    def start(backend: ClusterBackend, spec: ClusterSpec) -> Any:
        made.append((backend, spec.cluster_id))
        return backend.start(spec)

    yield start
    for backend, cluster_id in made:
        backend.remove(cluster_id)


# -- drivers: jobs on the cluster's network ----------------------------------------------
# A driver prints one JSON line of what it found, then stays connected until the test
# touches /tmp/done (so that the head's "busy" can be seen), then disconnects cleanly.
RAY_DRIVER = r'''
import json, os, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

ran = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
    n["NodeID"], soft=False)).remote() for n in nodes])
print(json.dumps({"nodes": len(nodes), "node_ids": sorted(n["NodeID"] for n in nodes),
                  "ran_on": sorted(ran)}), flush=True)
while not os.path.exists("/tmp/done"):
    time.sleep(0.2)
ray.shutdown()
'''

SPARK_DRIVER = r'''
import json, os, time
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("dockyard-cluster-test").getOrCreate()
sc = spark.sparkContext
deadline = time.time() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < 2 and time.time() < deadline:
    time.sleep(0.2)
executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1
total = sc.parallelize(range(1, 1001), 4).sum()
print(json.dumps({"executors": executors, "sum": total, "master": sc.master}), flush=True)
while not os.path.exists("/tmp/done"):
    time.sleep(0.2)
spark.stop()
'''


class Drivers:
    """Job drivers started through a job backend, joined to a cluster's network."""

    def __init__(self, jobs: JobBackend, engine: docker.DockerClient) -> None:
        self.jobs = jobs
        self.engine = engine
        self.handles: list[str] = []
        self._next_run = 1

    def start(self, backend: ClusterBackend, spec: ClusterSpec, script: str, *,
              cpu: float = 1.0) -> str:
        run_id = self._next_run
        self._next_run += 1
        env = driver_env(spec.kind, spec.cluster_id, worker_memory_mb=spec.worker_memory_mb)
        status = self.jobs.start(JobSpec(
            run_id=run_id, attempt=1, owner=spec.owner, image=spec.image,
            argv=("python", "-c", script), cpu=cpu, memory_mb=2048, env=env,
            networks=((backend.driver_network(spec.cluster_id), DRIVER_ALIAS),)))
        assert status.handle
        self.handles.append(status.handle)
        return status.handle

    def output(self, handle: str) -> str:
        return self.engine.api.logs(handle, stdout=True, stderr=False).decode()

    def report(self, handle: str, timeout: float = 180) -> dict[str, Any]:
        """The driver's JSON line (fails with its log when it ended without one)."""
        def line() -> Any:
            for text in self.output(handle).splitlines():
                if text.startswith("{"):
                    return json.loads(text)
            if self.jobs.status(handle).ended:
                log = self.engine.api.logs(handle).decode()[-3000:]
                pytest.fail(f"the driver ended without a report:\n{log}", pytrace=False)
            return None
        return wait_for(line, timeout=timeout, what="the driver's report", interval=0.5)

    def finish(self, handle: str) -> int | None:
        """Let the driver disconnect and end; its exit code."""
        exec_id = self.engine.api.exec_create(handle, ["touch", "/tmp/done"])["Id"]
        self.engine.api.exec_start(exec_id)
        status = wait_for(lambda: (s := self.jobs.status(handle)).ended and s,
                          timeout=60, what="the driver's end")
        return status.exit_code

    def close(self) -> None:
        for handle in self.handles:
            self.jobs.remove(handle)


def labelled_filter(namespace: str) -> dict[str, list[str]]:
    return {"label": [f"{LABEL_NAMESPACE}={namespace}"]}
