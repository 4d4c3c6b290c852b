"""Ray and Spark clusters on the real Docker engine and on a single-node swarm, from the
notebook image: drivers (jobs joined to the cluster's network as ``driver``) see every
node and run work on each; the head's own probe says when the cluster is ready and when
a driver is connected; scaling adds and removes workers; another user's container cannot
reach a head; a notebook server on the networks of two clusters reaches each head by the
address the API gives; ``remove`` leaves nothing behind."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from spawner.clusters import build_cluster_backend
from spawner.clusters.base import (
    LABEL_CLUSTER_ID,
    ClusterPhase,
    ClusterStatus,
)
from spawner.clusters.commands import (
    head_name,
    network_name,
    spark_worker_memory_mb,
    worker_name,
)
from spawner.clusters.docker import DockerClusterBackend
from spawner.clusters.swarm import SwarmClusterBackend
from spawner.jobs.base import LABEL_NAMESPACE
from spawner.jobs.config import BackendConfig
from spawner.jobs.docker import DockerJobBackend
from spawner.jobs.swarm import SwarmJobBackend
from tests.clusters.conftest import (
    NOTEBOOK_IMAGE,
    RAY_DRIVER,
    SPARK_DRIVER,
    Drivers,
    cluster_spec,
    unique_namespace,
    wait_for,
    wait_ready,
)
from tests.support.swarm import single_node_swarm

pytestmark = pytest.mark.docker

RAY_ID, SPARK_ID, SWARM_ID, RESTART_ID = 7001, 7002, 7003, 7004
UNREACHABLE_URL = "http://127.0.0.1:9/services/dockyard/"
# Tries a TCP connection from inside a container; prints "open" or why not.
CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
           "    print('open')\n"
           "except OSError as exc:\n"
           "    print(type(exc).__name__, exc)\n")


@pytest.fixture(scope="module")
def namespace() -> str:
    return unique_namespace("clt")


@pytest.fixture(scope="module")
def clusters(engine: docker.DockerClient, namespace: str) -> Iterator[DockerClusterBackend]:
    backend = build_cluster_backend("docker", namespace, BackendConfig(UNREACHABLE_URL))
    assert isinstance(backend, DockerClusterBackend)
    yield backend
    for cluster_id in backend.list_clusters():
        backend.remove(cluster_id)
    backend.close()


@pytest.fixture(scope="module")
def drivers(engine: docker.DockerClient, namespace: str) -> Iterator[Drivers]:
    jobs = DockerJobBackend(namespace, UNREACHABLE_URL, network="bridge")
    made = Drivers(jobs, engine)
    yield made
    made.close()
    jobs.close()


@pytest.fixture(scope="module")
def ray_cluster(clusters: DockerClusterBackend) -> Iterator[ClusterStatus]:
    spec = cluster_spec(RAY_ID, "ray")
    try:
        clusters.start(spec)
        yield wait_ready(clusters, RAY_ID, 2)
    finally:
        clusters.remove(RAY_ID)


@pytest.fixture(scope="module")
def spark_cluster(clusters: DockerClusterBackend) -> Iterator[ClusterStatus]:
    spec = cluster_spec(SPARK_ID, "spark", worker_memory_mb=1280, head_memory_mb=1024)
    try:
        clusters.start(spec)
        yield wait_ready(clusters, SPARK_ID, 2)
    finally:
        clusters.remove(SPARK_ID)


@pytest.fixture
def containers(engine: docker.DockerClient) -> Iterator[Callable[..., Any]]:
    """Plain containers (another user's, a notebook server) and networks, removed after."""
    made: list[Any] = []

    def run(network: str | None = None, labels: dict[str, str] | None = None) -> Any:
        if network is not None and not engine.networks.list(names=[network]):
            made.append(engine.networks.create(network, driver="bridge"))
        container = engine.containers.run(
            NOTEBOOK_IMAGE, ["sleep", "600"], detach=True, network=network, labels=labels,
            init=True, cap_drop=["ALL"], mem_limit="256m")
        made.insert(0, container)
        return container

    yield run
    for thing in made:
        try:
            thing.remove(force=True) if hasattr(thing, "kill") else thing.remove()
        except docker.errors.NotFound:
            pass


def python_in(container: Any, script: str, *args: str) -> str:
    result = container.exec_run(["python", "-c", script, *args])
    return result.output.decode().strip()


def head_ip(engine: docker.DockerClient, namespace: str, cluster_id: int) -> str:
    attrs = engine.api.inspect_container(head_name(namespace, cluster_id))
    return attrs["NetworkSettings"]["Networks"][network_name(namespace, cluster_id)]["IPAddress"]


# -- Ray on the Docker engine --------------------------------------------------------------
def test_a_ray_driver_sees_every_node_and_runs_a_task_on_each(
        clusters: DockerClusterBackend, ray_cluster: ClusterStatus, drivers: Drivers,
        engine: docker.DockerClient, namespace: str) -> None:
    assert ray_cluster.address == f"ray://{head_name(namespace, RAY_ID)}:10001"
    assert ray_cluster.network == network_name(namespace, RAY_ID)
    assert (ray_cluster.workers_ready, ray_cluster.workers_wanted) == (2, 2)
    assert ray_cluster.busy is False
    assert (ray_cluster.owner, ray_cluster.run_id) == ("alice", None)

    handle = drivers.start(clusters, cluster_spec(RAY_ID, "ray"), RAY_DRIVER)
    report = drivers.report(handle)
    assert report["nodes"] == 3
    assert sorted(set(report["ran_on"])) == report["node_ids"]  # a task ran on every node
    # The head's probe sees the connected driver, and sees it go.
    wait_for(lambda: clusters.status(RAY_ID).busy is True, timeout=30,
             what="the head reporting a connected driver")
    assert drivers.finish(handle) == 0
    # The next driver connects while the head's server for the first one is still
    # winding down: each Ray Client connection forks a server in the head, and that fork
    # must not crash (it did, in grpc's fork handlers, before Dockyard turned them off).
    again = drivers.start(clusters, cluster_spec(RAY_ID, "ray"), RAY_DRIVER)
    assert drivers.report(again)["nodes"] == 3
    assert drivers.finish(again) == 0
    wait_for(lambda: clusters.status(RAY_ID).busy is False, timeout=60,
             what="the head reporting no driver")


def test_ray_containers_are_limited_hardened_and_labelled(
        ray_cluster: ClusterStatus, engine: docker.DockerClient, namespace: str) -> None:
    head = engine.api.inspect_container(head_name(namespace, RAY_ID))
    worker = engine.api.inspect_container(worker_name(namespace, RAY_ID, 2))
    for attrs in (head, worker):
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "1000"
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Init"] is True and host["PidsLimit"] == 1024
        assert host["Memory"] == 1536 * 2**20 and host["NanoCpus"] == 10**9
        assert host["ShmSize"] > 0.3 * 1536 * 2**20  # the object store fits in /dev/shm
        assert list(attrs["NetworkSettings"]["Networks"]) == [network_name(namespace, RAY_ID)]
    labels = head["Config"]["Labels"]
    assert labels[LABEL_NAMESPACE] == namespace and labels[LABEL_CLUSTER_ID] == str(RAY_ID)
    assert labels["dockyard.role"] == "cluster-head"
    assert worker["Config"]["Labels"]["dockyard.role"] == "cluster-worker"
    # The dashboard answers at the head's address on the cluster network.
    assert ray_cluster.dashboard_url == f"http://{head_ip(engine, namespace, RAY_ID)}:8265"


def test_start_again_adopts_the_cluster_and_list_finds_it(
        clusters: DockerClusterBackend, ray_cluster: ClusterStatus,
        engine: docker.DockerClient, namespace: str) -> None:
    before = {c.id for c in engine.containers.list(
        all=True, filters={"label": f"{LABEL_CLUSTER_ID}={RAY_ID}"})}
    again = clusters.start(cluster_spec(RAY_ID, "ray"))
    assert again.phase == ClusterPhase.READY
    after = {c.id for c in engine.containers.list(
        all=True, filters={"label": f"{LABEL_CLUSTER_ID}={RAY_ID}"})}
    assert after == before and len(after) == 3
    assert clusters.list_clusters()[RAY_ID].phase == ClusterPhase.READY


# -- isolation -------------------------------------------------------------------------------
def test_another_users_container_cannot_reach_a_head(
        ray_cluster: ClusterStatus, spark_cluster: ClusterStatus,
        engine: docker.DockerClient, namespace: str,
        containers: Callable[..., Any]) -> None:
    ray_head = head_ip(engine, namespace, RAY_ID)
    elsewhere = containers(network=f"{namespace}-other")
    on_other_cluster = containers(network=network_name(namespace, SPARK_ID))
    for container in (elsewhere, on_other_cluster):
        assert python_in(container, CONNECT, ray_head, "6379") != "open"
        assert python_in(container, CONNECT, head_name(namespace, RAY_ID), "6379") != "open"
    # The Spark cluster's own head is reachable from its network, by its alias.
    assert python_in(on_other_cluster, CONNECT, "head", "7077") == "open"


# -- Spark on the Docker engine ------------------------------------------------------------
def test_a_spark_job_sees_two_executors_and_computes_a_sum(
        clusters: DockerClusterBackend, spark_cluster: ClusterStatus, drivers: Drivers,
        engine: docker.DockerClient, namespace: str) -> None:
    assert spark_cluster.address == f"spark://{head_name(namespace, SPARK_ID)}:7077"
    assert spark_cluster.dashboard_url == \
        f"http://{head_ip(engine, namespace, SPARK_ID)}:8080"
    spec = cluster_spec(SPARK_ID, "spark", worker_memory_mb=1280, head_memory_mb=1024)
    handle = drivers.start(clusters, spec, SPARK_DRIVER)
    report = drivers.report(handle)
    # A job's driver is on this cluster's network only: it reaches the head as "head".
    assert report == {"executors": 2, "sum": 500500, "master": "spark://head:7077"}
    wait_for(lambda: clusters.status(SPARK_ID).busy is True, timeout=30,
             what="the master reporting the application")
    assert drivers.finish(handle) == 0
    wait_for(lambda: clusters.status(SPARK_ID).busy is False, timeout=60,
             what="the master reporting no application")
    # The master's UI carries Dockyard's public path in its links.
    head = engine.api.inspect_container(head_name(namespace, SPARK_ID))
    assert ("SPARK_MASTER_OPTS=-Dspark.ui.reverseProxy=true -Dspark.ui.reverseProxyUrl="
            f"/services/dockyard/clusters/{SPARK_ID}/dashboard") in head["Config"]["Env"]


def test_scaling_removes_and_adds_workers(
        clusters: DockerClusterBackend, spark_cluster: ClusterStatus,
        engine: docker.DockerClient, namespace: str) -> None:
    spec = cluster_spec(SPARK_ID, "spark", worker_memory_mb=1280, head_memory_mb=1024)
    down = clusters.scale(SPARK_ID, cluster_spec(SPARK_ID, "spark", workers=1,
                                                 worker_memory_mb=1280, head_memory_mb=1024))
    assert down.workers_wanted == 1
    wait_for(lambda: clusters.status(SPARK_ID).workers_ready == 1, timeout=60,
             what="the master seeing one worker")
    names = {c.name for c in engine.containers.list(
        all=True, filters={"label": f"{LABEL_CLUSTER_ID}={SPARK_ID}"})}
    assert names == {head_name(namespace, SPARK_ID), worker_name(namespace, SPARK_ID, 1)}
    up = clusters.scale(SPARK_ID, spec)
    assert up.workers_wanted == 2
    status = wait_for(lambda: (s := clusters.status(SPARK_ID)).workers_ready == 2 and s,
                      timeout=120, what="the master seeing two workers again")
    assert status.phase == ClusterPhase.READY


def test_a_job_on_the_network_reaches_the_head_as_driver(
        clusters: DockerClusterBackend, spark_cluster: ClusterStatus, drivers: Drivers) -> None:
    script = ("import json, os, socket, time\n"
              "socket.create_connection(('head', 7077), timeout=5).close()\n"
              "print(json.dumps({'head': True, 'driver': socket.gethostbyname('driver')}),\n"
              "      flush=True)\n"
              "while not os.path.exists('/tmp/done'):\n"
              "    time.sleep(0.2)\n")
    spec = cluster_spec(SPARK_ID, "spark")
    handle = drivers.start(clusters, spec, script)
    report = drivers.report(handle, timeout=60)
    assert report["head"] is True
    attrs = drivers.engine.api.inspect_container(handle)
    own = attrs["NetworkSettings"]["Networks"][network_name(clusters.namespace, SPARK_ID)]
    assert report["driver"] == own["IPAddress"]  # it answers to "driver" on the network
    assert drivers.finish(handle) == 0


# A notebook server's session on a cluster, through the data client as a notebook has it:
# prints where "head" and the address's host resolve, and what the cluster computed.
NOTEBOOK_SESSION = r'''
import json, socket, sys, time
from dockyard_data.clusters import Cluster, head_of
address, executor_memory = sys.argv[1], sys.argv[2]
cluster = Cluster(None, {"id": 0, "name": "big-join", "kind": "spark", "status": "running",
                         "address": address, "workers": 2})
resolved = {name: socket.gethostbyname(name) for name in ("head", head_of(address, 7077)[0])}
spark = cluster.spark(app_name="two-networks", timeout=30,
                      **{"spark.executor.memory": executor_memory})
sc = spark.sparkContext
deadline = time.time() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < 2 and time.time() < deadline:
    time.sleep(0.2)
executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1
print(json.dumps({"resolved": resolved, "executors": executors, "master": sc.master,
                  "sum": sc.parallelize(range(1, 1001), 4).sum()}), flush=True)
spark.stop()
'''
CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "images" / "client"


def test_a_notebook_on_two_clusters_networks_reaches_its_head_by_the_api_address(
        clusters: DockerClusterBackend, spark_cluster: ClusterStatus,
        engine: docker.DockerClient, namespace: str) -> None:
    """Dockyard joins a notebook server to the networks of all its user's running
    clusters, without an alias, and every head is "head" on its own network. Here the
    other cluster is a decoy "head" on a network whose name sorts first, the one the
    engine resolves a name on first: the API's address still reaches the Spark head."""
    address = clusters.status(SPARK_ID).address
    head = head_name(namespace, SPARK_ID)
    assert address == f"spark://{head}:7077"
    labels = {"dockyard.user": f"carol-{namespace}", "dockyard.server-container": "1"}
    made: list[Any] = []
    try:
        other = engine.networks.create(network_name(namespace, 1), driver="bridge")
        made.append(other)
        decoy = engine.containers.run(
            NOTEBOOK_IMAGE, ["sleep", "600"], detach=True, init=True, cap_drop=["ALL"],
            mem_limit="64m", network=other.name,
            networking_config={other.name: engine.api.create_endpoint_config(
                aliases=["head"])})
        made.insert(0, decoy)
        notebook = engine.containers.run(
            NOTEBOOK_IMAGE, ["sleep", "600"], detach=True, init=True, cap_drop=["ALL"],
            mem_limit="1536m", network=other.name, labels=labels,
            volumes={str(CLIENT_SOURCE): {"bind": "/dockyard-client", "mode": "ro"}},
            environment={"PYTHONPATH": "/dockyard-client"})
        made.insert(0, notebook)
        assert clusters.attach(SPARK_ID, labels) == [notebook.name]

        executor_memory = f"{spark_worker_memory_mb(1280)}m"
        result = notebook.exec_run(["python", "-c", NOTEBOOK_SESSION, address,
                                    executor_memory])
        output = result.output.decode()
        lines = [line for line in output.splitlines() if line.startswith("{")]
        assert result.exit_code == 0 and lines, output[-4000:]
        report = json.loads(lines[-1])
        decoy.reload()
        decoy_ip = decoy.attrs["NetworkSettings"]["Networks"][other.name]["IPAddress"]
        # "head" is the decoy here: an address naming "head" would reach it.
        assert report["resolved"] == {"head": decoy_ip,
                                      head: head_ip(engine, namespace, SPARK_ID)}
        assert report == {**report, "executors": 2, "sum": 500500, "master": address}
    finally:
        for thing in made:
            try:
                thing.remove(force=True) if hasattr(thing, "kill") else thing.remove()
            except docker.errors.NotFound:
                pass


def test_attach_connects_a_users_notebooks_once_and_remove_leaves_nothing(
        clusters: DockerClusterBackend, spark_cluster: ClusterStatus,
        engine: docker.DockerClient, namespace: str,
        containers: Callable[..., Any]) -> None:
    labels = {"dockyard.user": f"alice-{namespace}", "dockyard.server-container": "1"}
    notebook = containers(network=f"{namespace}-notebooks", labels=labels)
    someone_else = containers(labels={"dockyard.user": f"bob-{namespace}",
                                      "dockyard.server-container": "1"})
    # Labels a notebook server's spawner did not give: a job's container (it has a role)
    # and a container whose image claims them.
    job = containers(labels={**labels, "dockyard.role": "job"})
    forged_image = engine.images.build(
        fileobj=io.BytesIO(f"FROM {NOTEBOOK_IMAGE}\nLABEL ".encode()
                           + " ".join(f"{k}={v}" for k, v in labels.items()).encode()),
        tag=f"{namespace}-forged:latest", rm=True)[0]
    try:
        forged = engine.containers.run(forged_image.id, ["sleep", "600"], detach=True,
                                       init=True, cap_drop=["ALL"], mem_limit="256m")
        try:
            assert clusters.attach(SPARK_ID, labels) == [notebook.name]
            assert clusters.attach(SPARK_ID, labels) == []  # already attached
            assert python_in(notebook, CONNECT, "head", "7077") == "open"
            for outsider in (someone_else, job, forged):
                assert python_in(outsider, CONNECT, "head", "7077") != "open"
        finally:
            forged.remove(force=True)
    finally:
        engine.images.remove(forged_image.id, force=True)

    clusters.remove(SPARK_ID)
    left = engine.containers.list(all=True,
                                  filters={"label": f"{LABEL_CLUSTER_ID}={SPARK_ID}"})
    assert left == []
    assert engine.networks.list(names=[network_name(namespace, SPARK_ID)]) == []
    assert clusters.status(SPARK_ID).phase == ClusterPhase.MISSING
    notebook.reload()
    assert notebook.status == "running"  # the notebook only left the cluster's network
    assert network_name(namespace, SPARK_ID) not in notebook.attrs["NetworkSettings"]["Networks"]
    clusters.remove(SPARK_ID)  # again: nothing to do, no error


# -- failures ------------------------------------------------------------------------------
def signal_main_process(engine: docker.DockerClient, container: str) -> None:
    """SIGTERM to the container's init, which hands it to the engine's process: the
    container exits non-zero (143) by itself, as a worker that failed to start does."""
    exec_id = engine.api.exec_create(container, ["sh", "-c", "kill -TERM 1"])["Id"]
    engine.api.exec_start(exec_id)


def test_a_failed_worker_is_restarted_and_an_ended_head_fails_the_cluster_at_once(
        clusters: DockerClusterBackend, engine: docker.DockerClient, namespace: str,
        started_cluster: Callable[..., Any]) -> None:
    started_cluster(clusters, cluster_spec(RESTART_ID, "spark", workers=1,
                                           worker_memory_mb=1024, head_memory_mb=1024))
    worker, head = worker_name(namespace, RESTART_ID, 1), head_name(namespace, RESTART_ID)
    signal_main_process(engine, worker)
    wait_for(lambda: (attrs := engine.api.inspect_container(worker))["RestartCount"] == 1
             and attrs["State"]["Status"] == "running", timeout=60,
             what="the engine restarting the worker")
    assert clusters.status(RESTART_ID).phase != ClusterPhase.FAILED
    # Stopped (as a scale down does), a worker stays stopped.
    engine.api.stop(worker, timeout=5)
    stopped = engine.api.inspect_container(worker)
    assert (stopped["State"]["Status"], stopped["RestartCount"]) == ("exited", 1)

    signal_main_process(engine, head)
    wait_for(lambda: engine.api.inspect_container(head)["State"]["Status"] == "exited",
             timeout=60, what="the head's end")
    status = clusters.status(RESTART_ID)
    assert status.phase == ClusterPhase.FAILED
    assert status.reason.startswith("the head ended ("), status.reason
    assert engine.api.inspect_container(head)["RestartCount"] == 0  # never restarted


# -- Ray on a single-node swarm --------------------------------------------------------------
@pytest.fixture(scope="module")
def swarm(engine: docker.DockerClient) -> Iterator[docker.DockerClient]:
    with single_node_swarm(engine):
        yield engine


def test_a_ray_cluster_on_a_swarm_serves_a_driver_on_its_overlay(
        swarm: docker.DockerClient, started_cluster: Callable[..., Any]) -> None:
    namespace = unique_namespace("cls")
    backend = SwarmClusterBackend(namespace)
    jobs = SwarmJobBackend(namespace, UNREACHABLE_URL, poll_seconds=0.5)
    drivers = Drivers(jobs, swarm)
    # The swarm reserves what it limits: head and workers together fit the two-core node.
    small = {"worker_cpu": 0.5, "head_cpu": 0.75, "run_id": 42}
    spec = cluster_spec(SWARM_ID, "ray", **small)
    try:
        first = started_cluster(backend, spec)
        assert first.phase == ClusterPhase.STARTING and first.workers_wanted == 2
        network = swarm.api.inspect_network(network_name(namespace, SWARM_ID))
        assert (network["Driver"], network["Attachable"]) == ("overlay", True)
        status = wait_ready(backend, SWARM_ID, 2)
        assert (status.run_id, status.owner, status.busy) == (42, "alice", False)
        assert status.address == f"ray://{head_name(namespace, SWARM_ID)}:10001"
        head = swarm.api.inspect_service(head_name(namespace, SWARM_ID))
        assert head["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
        assert backend.list_clusters()[SWARM_ID].phase == ClusterPhase.READY

        service = drivers.start(backend, spec, RAY_DRIVER, cpu=0.25)
        container = wait_for(lambda: swarm.containers.list(
            filters={"label": f"com.docker.swarm.service.id={service}"}),
            timeout=60, what="the driver's task container")[0]
        report = wait_for(lambda: _report_of(container), timeout=180,
                          what="the swarm driver's report", interval=0.5)
        assert report["nodes"] == 3
        assert sorted(set(report["ran_on"])) == report["node_ids"]
        # The API's address: the head service's name resolves on the overlay too.
        assert container.exec_run(["getent", "hosts", head_name(namespace, SWARM_ID)]) \
            .exit_code == 0
        wait_for(lambda: backend.status(SWARM_ID).busy is True, timeout=30,
                 what="the head reporting a connected driver")
        container.exec_run(["touch", "/tmp/done"])
        wait_for(lambda: jobs.status(service).ended, timeout=60, what="the driver's end")

        scaled = backend.scale(SWARM_ID, cluster_spec(SWARM_ID, "ray", workers=1, **small))
        assert scaled.workers_wanted == 1
        wait_for(lambda: backend.status(SWARM_ID).workers_ready == 1, timeout=90,
                 what="the head seeing one worker")

        drivers.close()
        backend.remove(SWARM_ID)
        assert backend.status(SWARM_ID).phase == ClusterPhase.MISSING
        assert swarm.api.services(filters={"label": f"{LABEL_NAMESPACE}={namespace}"}) == []
        assert swarm.networks.list(names=[network_name(namespace, SWARM_ID)]) == []
        assert swarm.containers.list(
            all=True, filters={"label": f"{LABEL_CLUSTER_ID}={SWARM_ID}"}) == []
    finally:
        drivers.close()
        backend.remove(SWARM_ID)
        jobs.close()
        backend.close()


def _report_of(container: Any) -> dict[str, Any] | None:
    for line in container.logs(stdout=True, stderr=False).decode().splitlines():
        if line.startswith("{"):
            return json.loads(line)
    container.reload()
    if container.status == "exited":
        log = container.logs().decode()[-3000:]
        pytest.fail(f"the driver ended without a report:\n{log}", pytrace=False)
    return None

