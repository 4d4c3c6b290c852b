"""Clusters on the real Docker engine, moved by the real worker, from Dockyard's notebook
image: a run's Ray and Spark clusters (the job is the driver; nothing is left after the
run, cancelled or not), reconcile of a cluster whose run ended while the worker was
away, and a user's own cluster through the service and the worker's cluster duty
(queued → scaled while starting → running → stop, idle stop, their notebook server
attached to it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import update

from dockyard.clusters.schemas import ClusterIn, ClusterScaleIn
from dockyard.clusters.service import (
    ClusterLimits,
    create_cluster,
    request_stop,
    scale_cluster,
)
from dockyard.db import transaction
from dockyard.migrate import upgrade
from dockyard.models import Cluster, ClusterState, Run, RunState
from dockyard.settings import Settings
from dockyard.web.auth import User
from dockyard.worker.backends import JobPools
from dockyard.worker.run_clusters import cluster_spec
from spawner.clusters.commands import head_name
from tests.clusters.worker_support import (
    NOTEBOOK_IMAGE,
    ClusterWorld,
    add_cluster_image,
    wait_until,
)
from tests.jobs.conftest import ALICE as ALICE_HEADERS
from tests.jobs.conftest import log_file
from tests.support.requirements import require_image

pytestmark = [pytest.mark.docker, pytest.mark.image]

ALICE = User("alice")
RAY_JOB = """
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()
nodes = [node for node in ray.nodes() if node["Alive"]]
print(f"nodes={len(ray.nodes())}", flush=True)

@ray.remote(num_cpus=0.1)
def where():
    return ray.get_runtime_context().get_node_id()

pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"],
                                                                           soft=False)).remote()
          for node in nodes]
print(f"ran_on={len(set(ray.get(pinned)))}", flush=True)
"""
SPARK_JOB = """
import time
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("cluster-sum").getOrCreate()
context = spark.sparkContext
deadline = time.monotonic() + 120
while context._jsc.sc().getExecutorMemoryStatus().size() - 1 < 2 \\
        and time.monotonic() < deadline:
    time.sleep(0.5)
executors = context._jsc.sc().getExecutorMemoryStatus().size() - 1
total = context.range(1, 1001, numSlices=8).sum()
print(f"master={context.master} executors={executors} sum={total}", flush=True)
spark.stop()
"""
#: From a notebook server: the head by its name on the cluster's network, and the Spark
#: master's own account of its workers.
SPARK_WORKERS_SEEN = """
import json, socket, sys, urllib.request
# The head by the address's name: a notebook server is on every cluster's network.
socket.create_connection((sys.argv[1], 7077), timeout=5).close()
state = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}:8080/json/", timeout=5))
print(json.dumps({"alive": sum(w["state"] == "ALIVE" for w in state["workers"])}))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterWorld]:
    """One installation for the module: its tests use runs and clusters of their own, and
    a worker started once (and the image inspected once) saves a good part of their time."""
    require_image(NOTEBOOK_IMAGE)
    tmp_path = tmp_path_factory.mktemp("clusters")
    with pytest.MonkeyPatch.context() as env:
        for var in [v for v in os.environ if v.startswith("DOCKYARD_")]:
            env.delenv(var)
        home = tmp_path / "home"
        home.mkdir()
        base = Settings(home=home)
        upgrade(base.db_url)
        add_cluster_image(base.db_url)
        harness = ClusterWorld(base, tmp_path)
        try:
            harness.start_worker()
            yield harness
        finally:
            harness.close()


def ended_run(world: ClusterWorld, run_id: int) -> tuple[Run, str]:
    run = world.wait(run_id, timeout=300)
    log = log_file(world.settings, run_id)
    return run, log.read_text() if log.exists() else ""


def test_a_ray_job_drives_a_cluster_of_three_nodes_that_is_removed_after_it(
        world: ClusterWorld) -> None:
    run_id = world.submit(command=["python", "-c", RAY_JOB], cluster={
        "kind": "ray", "workers": 2, "worker_cpu": 1, "worker_memory_mb": 1024})
    run, log = ended_run(world, run_id)
    assert run.status == RunState.SUCCEEDED, (run.reason, log)
    assert "nodes=3\n" in log and "ran_on=3\n" in log
    # It waited for its cluster, saying how far it got, before its job started.
    reasons = [event.reason for event in world.db.events(run_id)]
    assert any(r.startswith("waiting: the Ray cluster is starting (") for r in reasons), reasons
    assert world.transitions(run_id) == ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED"]
    made = world.cluster_of_run(run_id)
    assert made is not None
    # Removed right after the run's outcome is kept.
    cluster = world.wait_cluster(made.id, ClusterState.STOPPED, ClusterState.FAILED)
    assert (cluster.name, cluster.owner, cluster.kind, cluster.workers) == (
        f"run-{run_id}", "alice", "ray", 2)
    assert (cluster.status, cluster.reason) == (ClusterState.STOPPED,
                                                "its run ended (SUCCEEDED)")
    assert cluster.address == f"ray://{head_name(world.namespace, cluster.id)}:10001"
    assert cluster.started_at is not None
    assert world.gone(cluster.id)
    shown = world.client.get(f"/api/v1/runs/{run_id}", headers=ALICE_HEADERS).json
    assert shown["cluster"] == {"kind": "ray", "workers": 2, "worker_cpu": 1.0,
                                "worker_memory_mb": 1024}


def test_a_spark_job_sums_and_one_cancelled_while_its_cluster_starts_leaves_nothing(
        world: ClusterWorld) -> None:
    size = {"kind": "spark", "workers": 2, "worker_cpu": 1, "worker_memory_mb": 1024}
    summed = world.submit(command=["python", "-c", SPARK_JOB], cluster=size)
    run, log = ended_run(world, summed)
    assert run.status == RunState.SUCCEEDED, (run.reason, log)
    # The executors reached the driver by its alias on the cluster's network.
    assert "master=spark://head:7077 executors=2 sum=500500\n" in log
    first = world.cluster_of_run(summed)
    assert first is not None
    assert world.wait_cluster(first.id, ClusterState.STOPPED).reason == \
        "its run ended (SUCCEEDED)"
    assert world.gone(first.id)

    # Cancelled while its cluster starts (the run PENDING, its job not started): every
    # container of the cluster and its network go, and the job never starts.
    waiting = world.submit(command=["sleep", "600"], cluster={**size, "workers": 1})
    second = wait_until(lambda: (c := world.cluster_of_run(waiting)) is not None
                        and c.status == ClusterState.STARTING and c, "its cluster starting")
    cancel = world.client.post(f"/api/v1/runs/{waiting}/cancel", headers=ALICE_HEADERS)
    assert cancel.status_code == 202 and cancel.json["status"] == "PENDING", cancel.json
    cancelled = world.wait(waiting, timeout=120)
    assert cancelled.status == RunState.CANCELLED
    assert world.wait_cluster(second.id, ClusterState.STOPPED).reason == \
        "its run ended (CANCELLED)"
    assert world.gone(second.id)
    assert world.containers() == []
    assert "RUNNING" not in world.transitions(waiting)


def test_reconcile_removes_the_cluster_of_a_run_that_ended_while_the_worker_was_away(
        world: ClusterWorld) -> None:
    world.stop_worker()
    run_id = world.submit(command=["true"])
    with transaction(world.db.sessions) as session:
        session.execute(update(Run).where(Run.id == run_id).values(
            status=RunState.FAILED.name, reason="the worker went away"))
        orphan = Cluster(name=f"run-{run_id}", owner="alice", kind="spark",
                         image=NOTEBOOK_IMAGE, workers=1, worker_cpu=0.5,
                         worker_memory_mb=768, head_cpu=0.5, head_memory_mb=768,
                         status=ClusterState.RUNNING, run_id=run_id,
                         worker=world.settings.worker_name, backend="docker")
        # And a user's cluster the database thinks is running, whose containers are gone.
        vanished = Cluster(name="vanished", owner="alice", kind="ray", image=NOTEBOOK_IMAGE,
                           workers=1, worker_cpu=1, worker_memory_mb=1024, head_cpu=1,
                           head_memory_mb=1024, status=ClusterState.RUNNING,
                           worker=world.settings.worker_name, backend="docker")
        session.add_all([orphan, vanished])
        session.flush()
        cluster_id, vanished_id = orphan.id, vanished.id
    # Its containers, as a worker left them when it stopped.
    pools = JobPools.from_settings(world.settings, namespace=world.namespace)
    backend = pools.default.clusters
    assert backend is not None
    try:
        backend.start(cluster_spec(world.cluster(cluster_id), pools.default))
        assert world.containers(cluster_id)
        world.start_worker()
        cluster = world.wait_cluster(cluster_id, ClusterState.STOPPED, ClusterState.FAILED)
        assert (cluster.status, cluster.reason) == (ClusterState.STOPPED,
                                                    "its run ended (FAILED)")
        assert world.gone(cluster_id)
        failed = world.wait_cluster(vanished_id, ClusterState.FAILED, ClusterState.STOPPED)
        assert failed.status == ClusterState.FAILED
        assert "cluster's containers" in failed.reason and "gone" in failed.reason
    finally:
        backend.remove(cluster_id)
        pools.close()


def test_a_users_cluster_runs_scales_serves_their_notebook_and_stops(
        world: ClusterWorld) -> None:
    limits = ClusterLimits.from_settings(world.settings)
    with world.db.sessions() as session:
        kept = create_cluster(session, ALICE, ClusterIn(
            name="analysis", kind="spark", workers=1, worker_cpu=0.5, worker_memory_mb=1024),
            limits).id
        # A second one that nothing uses, stopped after two idle seconds.
        idle = create_cluster(session, ALICE, ClusterIn(
            name="idle", kind="spark", workers=1, worker_cpu=0.5, worker_memory_mb=1024),
            replace(limits, idle_timeout_seconds=2)).id
    assert world.cluster(kept).status == ClusterState.QUEUED
    # Scaled while it starts: the row changes now, the engine once it runs (the head's
    # readiness counts the workers it was made with).
    world.wait_cluster(kept, ClusterState.STARTING, ClusterState.RUNNING, ClusterState.FAILED)
    with world.db.sessions() as session:
        assert scale_cluster(session, ALICE, kept, ClusterScaleIn(workers=2),
                             limits).workers == 2
    running = world.wait_cluster(kept, ClusterState.RUNNING, ClusterState.FAILED)
    assert running.status == ClusterState.RUNNING, running.reason
    assert running.address == f"spark://{head_name(world.namespace, kept)}:7077"
    assert running.dashboard_url
    assert running.worker == world.settings.worker_name and running.backend == "docker"

    # Alice's notebook server joins her cluster's network and reaches its head; Bob's
    # is never attached, and cannot even resolve the name.
    mine = world.notebook_server("alice", "nb-alice")
    theirs = world.notebook_server("bob", "nb-bob")
    network = world.networks(kept)[0]
    head = head_name(world.namespace, kept)

    def attached() -> bool:
        network.reload()
        return mine.id in (network.attrs.get("Containers") or {})

    wait_until(attached, "alice's notebook server attached", 60)

    def two_workers_alive() -> bool:
        result = mine.exec_run(["python", "-c", SPARK_WORKERS_SEEN, head])
        return result.exit_code == 0 and b'"alive": 2' in result.output

    wait_until(two_workers_alive, "the master sees two workers", 120, interval=1)
    assert len(world.containers(kept)) == 3
    refused = theirs.exec_run(["python", "-c", SPARK_WORKERS_SEEN, head])
    assert refused.exit_code != 0 and b"gaierror" in refused.output, refused.output
    assert theirs.id not in (network.attrs.get("Containers") or {})

    stopped_idle = world.wait_cluster(idle, ClusterState.STOPPED, ClusterState.FAILED)
    assert stopped_idle.reason == ("idle for 2 s: no driver connected and nobody looked "
                                   "at it")
    assert world.gone(idle)

    with world.db.sessions() as session:
        request_stop(session, ALICE, kept)
    stopped = world.wait_cluster(kept, ClusterState.STOPPED, ClusterState.FAILED)
    assert (stopped.status, stopped.reason) == (ClusterState.STOPPED, "stopped on request")
    assert stopped.ended_at is not None
    wait_until(lambda: world.gone(kept), "the stopped cluster removed", 60)
    mine.reload()
    assert mine.status == "running"  # the notebook server stays, off the network
