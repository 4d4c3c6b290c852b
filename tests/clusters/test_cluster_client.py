"""The data client's clusters against the web app on a real loopback port: find a cluster
by name (or, in a job, the job's own), wait while it starts, say why it failed; find this
machine's address towards a head, waiting for the head to answer; tell a job on a Ray
cluster from anything else; and, in the notebook image, a SparkSession and a Ray
connection on a head and a worker started there, reading what pandas wrote (load_ray in a
job joining the job's cluster, and refusing the Ray Client with what to do instead)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import dockyard_data
import numpy as np
import pandas as pd
import pytest
import requests
from dockyard_data import Client, ClientConfig, ClusterFailed, ClusterNotFound, InvalidRequest
from dockyard_data.clusters import address_towards, job_ray_head, join_job_ray_cluster
from werkzeug.serving import make_server

from dockyard.models import ClusterState, utcnow
from dockyard.settings import Settings
from tests.clusters.web_support import add_engine_images, cluster_row, running, set_cluster
from tests.conftest import web_app
from tests.data.conftest import served
from tests.data.incontainer import NOTEBOOK_IMAGE
from tests.support.ports import free_ports
from tests.support.requirements import require_image


@pytest.fixture
def dockyard(migrated: Settings) -> Iterator[str]:
    add_engine_images(migrated)
    with served(web_app(migrated)) as url:
        yield url


@pytest.fixture
def alice(dockyard: str) -> Client:
    return Client(config=ClientConfig(url=dockyard, token="tok-alice"))


def make(dockyard: str, token: str = "tok-alice", **fields: object) -> dict:
    body = {"name": "big-join", "kind": "spark", "workers": 1, "image": "team/engines:1",
            **fields}
    answer = requests.post(f"{dockyard}/api/v1/clusters", json=body, timeout=30,
                           headers={"Authorization": f"token {token}"})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_a_running_cluster_is_found_by_name_and_counts_as_used(
        dockyard: str, alice: Client, migrated: Settings) -> None:
    made = make(dockyard)
    running(migrated, made["id"], kind="spark")
    set_cluster(migrated, made["id"], last_activity_at=utcnow() - timedelta(hours=1))
    before = cluster_row(migrated, made["id"]).last_activity_at
    cluster = alice.cluster("big-join")
    assert (cluster.id, cluster.name, cluster.kind, cluster.status, cluster.address,
            cluster.workers) == (made["id"], "big-join", "spark", "running",
                                 "spark://head:7077", 1)
    assert "spark://head:7077" in repr(cluster)
    assert cluster_row(migrated, made["id"]).last_activity_at > before
    # The module function reads DOCKYARD_URL and DOCKYARD_TOKEN, as in a notebook.
    env = {"DOCKYARD_URL": dockyard + "/", "DOCKYARD_TOKEN": "tok-alice"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert dockyard_data.cluster("big-join").address == "spark://head:7077"
    # The session of the wrong engine is refused before any engine is touched.
    with pytest.raises(InvalidRequest, match="is a spark cluster; use .spark()"):
        cluster.ray()


def test_another_users_or_a_missing_cluster_is_not_found(dockyard: str, alice: Client,
                                                         migrated: Settings) -> None:
    made = make(dockyard, token="tok-bob")
    running(migrated, made["id"])
    with pytest.raises(ClusterNotFound, match="no live cluster named 'big-join'"):
        alice.cluster("big-join")
    with pytest.raises(ClusterNotFound):
        alice.cluster("nothing-here", wait=False)


#: What Dockyard gives a job on a Ray cluster and on a Spark cluster (driver_env).
RAY_JOB = {"RAY_ADDRESS": "ray://head:10001", "DOCKYARD_CLUSTER_KIND": "ray",
           "DOCKYARD_CLUSTER_ID": "7"}
SPARK_JOB = {"SPARK_MASTER": "spark://head:7077", "SPARK_LOCAL_HOSTNAME": "driver",
             "DOCKYARD_CLUSTER_KIND": "spark", "DOCKYARD_CLUSTER_ID": "7"}


def test_a_job_on_a_ray_cluster_is_told_from_anything_else() -> None:
    assert job_ray_head(RAY_JOB) == "head"
    assert job_ray_head({**RAY_JOB, "RAY_ADDRESS": "ray://10.0.3.2:10001"}) == "10.0.3.2"
    # A Spark job, a notebook, a Ray address of the user's own without a Dockyard cluster,
    # a local Ray address: none of them joins anything.
    for environ in (SPARK_JOB, {}, {"RAY_ADDRESS": "ray://elsewhere:10001"},
                    {**RAY_JOB, "RAY_ADDRESS": "127.0.0.1:6379"}):
        assert job_ray_head(environ) is None, environ
        assert join_job_ray_cluster(environ=environ) is False, environ


def test_a_job_finds_its_own_cluster(dockyard: str, alice: Client,
                                     migrated: Settings) -> None:
    made = make(dockyard, name="for-a-run", kind="ray")
    running(migrated, made["id"], kind="ray")
    set_cluster(migrated, made["id"], name="run-41")  # as the worker names a run's cluster
    others = make(dockyard, token="tok-bob", name="theirs")
    env = {"DOCKYARD_URL": dockyard + "/", "DOCKYARD_TOKEN": "tok-alice",
           "DOCKYARD_CLUSTER_ID": str(made["id"])}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        here = dockyard_data.cluster_here()
        assert (here.id, here.name, here.address) == (made["id"], "run-41",
                                                      "ray://head:10001")
        patch.setenv("DOCKYARD_CLUSTER_ID", str(others["id"]))
        with pytest.raises(ClusterNotFound, match=f"Cluster {others['id']} of this job is "
                           "not yours"):
            alice.cluster_here()
        patch.delenv("DOCKYARD_CLUSTER_ID")
        with pytest.raises(ClusterNotFound, match="not a job on a Dockyard cluster"):
            alice.cluster_here()


def test_waits_while_the_cluster_starts(dockyard: str, alice: Client,
                                        migrated: Settings) -> None:
    made = make(dockyard, kind="ray")
    assert alice.cluster("big-join", wait=False).status == "queued"
    long_ago = utcnow() - timedelta(hours=1)
    set_cluster(migrated, made["id"], last_activity_at=long_ago)
    seen = threading.Event()

    def worker_starts_it() -> None:
        # As the worker would, once the client has asked (its read counts as use).
        while cluster_row(migrated, made["id"]).last_activity_at == long_ago:
            time.sleep(0.1)
        set_cluster(migrated, made["id"], status=ClusterState.STARTING)
        time.sleep(0.5)
        running(migrated, made["id"], kind="ray")
        seen.set()

    thread = threading.Thread(target=worker_starts_it, daemon=True)
    thread.start()
    try:
        cluster = alice.cluster("big-join", timeout=120)
    finally:
        thread.join(30)
    assert seen.is_set()
    assert (cluster.status, cluster.address) == ("running", "ray://head:10001")


def test_a_failed_cluster_says_why(dockyard: str, alice: Client, migrated: Settings) -> None:
    made = make(dockyard)
    set_cluster(migrated, made["id"], status=ClusterState.STARTING)
    cluster = alice.cluster("big-join", wait=False)
    set_cluster(migrated, made["id"], status=ClusterState.FAILED, ended_at=utcnow(),
                reason="the Spark cluster did not become ready in 300 s: 1 of 2 workers")
    with pytest.raises(ClusterFailed, match="is failed: the Spark cluster did not become "
                       "ready in 300 s: 1 of 2 workers"):
        cluster.wait()


def test_a_cluster_that_stays_queued_is_given_up_after_the_timeout(
        dockyard: str, alice: Client) -> None:
    make(dockyard)
    with pytest.raises(ClusterFailed, match="still queued after 0.5 s"):
        alice.cluster("big-join", timeout=0.5)


def test_the_drivers_address_is_the_one_towards_the_head() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert address_towards("127.0.0.1", listener.getsockname()[1], timeout=5) == \
            "127.0.0.1"


def test_the_head_is_waited_for_until_it_answers() -> None:
    port = free_ports(1)[0]
    listener = socket.socket()
    opened = threading.Event()

    def head_comes_up() -> None:
        time.sleep(1.5)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        opened.set()

    thread = threading.Thread(target=head_comes_up, daemon=True)
    thread.start()
    try:
        assert address_towards("127.0.0.1", port, timeout=60) == "127.0.0.1"
        assert opened.is_set()
    finally:
        thread.join(10)
        listener.close()


def test_a_head_that_never_answers_is_said() -> None:
    with pytest.raises(ClusterFailed, match="cannot reach the cluster's head at "
                       "head.invalid:7077"):
        address_towards("head.invalid", 7077, timeout=1)


# -- in the notebook image: real Spark and Ray ----------------------------------------------
SCRIPT = """
import socket
import dockyard_data
from dockyard_data import load_ray, load_spark

print("NOTEBOOK", socket.gethostbyname(socket.gethostname()))
# Ray first: a raylet has 30 s to start, which a busy machine with JVMs may not give it.
# As a job on the Ray cluster (RAY_ADDRESS=ray://head:10001): load_ray joins it as a node.
dataset = load_ray("sales", "orders")
print("RAY-COUNT", dataset.count())
import ray
print("RAY-NODES", len([n for n in ray.nodes() if n["Alive"]]))
print("RAY-HERE", dockyard_data.cluster_here().name)
ray.shutdown()
ray.init()  # RAY_ADDRESS: through the Ray Client, where Ray Data cannot read
try:
    load_ray("sales", "orders", cluster="tune")
except dockyard_data.clusters.RayClientMode as exc:
    print("RAY-CLIENT-REFUSED", "Call load_ray before ray.init()" in str(exc))
ray.shutdown()

cluster = dockyard_data.cluster("big-join")
spark = cluster.spark(app_name="client-test")
conf = spark.sparkContext.getConf()
print("MASTER", spark.sparkContext.master, "DRIVER", conf.get("spark.driver.host"))
frame = load_spark(namespace="sales", table="orders", cluster="big-join")
print("SPARK-COUNT", frame.count(), "SPARK-SUM", frame.groupBy().sum("id").first()[0])
spark.stop()
print("CLIENT-CLUSTERS-OK")
"""
#: A head as a cluster's head runs the engines' own commands (here both engines in one
#: container, with one Spark worker beside the master).
HEAD = (
    # Ray first: its raylet has 30 s to start, which JVMs starting beside it may not leave.
    "ray start --head --port=6379 --ray-client-server-port=10001 --num-cpus=1"
    " --include-dashboard=false --disable-usage-stats || exit 1\n"
    "spark-class org.apache.spark.deploy.master.Master --host head --port 7077"
    " --webui-port 8080 >/tmp/master.log 2>&1 &\n"
    "spark-class org.apache.spark.deploy.worker.Worker --cores 1 --memory 1g"
    " spark://head:7077 >/tmp/worker.log 2>&1 &\n"
    # Ready as a cluster's head is: both engines serve and the worker has registered.
    "until grep -q 'Registering worker' /tmp/master.log; do sleep 1; done\n"
    "touch /tmp/ready\n"
    "wait\n"
)


@contextmanager
def cluster_network() -> Iterator[tuple[str, str]]:
    """A bridge network of the test's own (as a cluster's), and its gateway: this machine's
    address on it."""
    name = f"dockyard-client-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)
    try:
        gateway = subprocess.run(
            ["docker", "network", "inspect", name, "--format",
             "{{(index .IPAM.Config 0).Gateway}}"],
            check=True, capture_output=True, text=True).stdout.strip()
        yield name, gateway
    finally:
        subprocess.run(["docker", "network", "rm", name], capture_output=True)


@contextmanager
def served_on(app: object, host: str) -> Iterator[str]:
    server = make_server(host, 0, app, threaded=True)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def wait_until_ready(head: str) -> None:
    """Until the head says it is ready (as a cluster's healthcheck would), or has died."""
    deadline = time.monotonic() + 600
    while subprocess.run(["docker", "exec", head, "test", "-f", "/tmp/ready"],
                         capture_output=True).returncode != 0:
        logs = subprocess.run(["docker", "logs", "--tail", "20", head], capture_output=True,
                              text=True)
        running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", head],
                                 capture_output=True, text=True).stdout.strip()
        assert running == "true" and time.monotonic() < deadline, logs.stdout + logs.stderr
        time.sleep(2)


@pytest.mark.docker
@pytest.mark.image
@pytest.mark.timeout(900)
def test_in_the_notebook_image_spark_and_ray_sessions_use_the_clusters(
        alice: Client, migrated: Settings) -> None:
    """A head started from the notebook image with the engines' own commands, on a
    network of its own as ``head``; a notebook container on that network finds the
    clusters through Dockyard by name, becomes a Spark driver and joins the Ray cluster,
    and reads a table with each."""
    require_image(NOTEBOOK_IMAGE)
    rng = np.random.default_rng(3)
    for day in ("20240101", "20240102"):
        alice.store_dataframe(pd.DataFrame({"id": np.arange(500), "x": rng.random(500)}),
                              "sales", "orders", partition={"date": day})
    data_dir = migrated.data_dir
    client_source = Path(__file__).resolve().parents[2] / "images" / "client"
    same_user = ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp",
                 # Ray asks who it runs as: a uid without a passwd entry is told here.
                 "-e", "USER=dockyard", "-e", "LOGNAME=dockyard",
                 "-v", f"{data_dir}:{data_dir}"]
    with cluster_network() as (network, gateway), \
            served_on(web_app(migrated), gateway) as url:
        head = f"{network}-head"
        try:
            # --init and grpc's fork handlers off, as Dockyard's Ray containers have them
            # (cluster_env): Ray's client server forks a server per connection and looks
            # at its finished children, which only an init reaps.
            subprocess.run(["docker", "run", "-d", "--init", "--name", head, "--network",
                            network, "--network-alias", "head", *same_user,
                            "-e", "GRPC_ENABLE_FORK_SUPPORT=false", NOTEBOOK_IMAGE,
                            "bash", "-c", HEAD], check=True, capture_output=True)
            wait_until_ready(head)
            spark = make(url, name="big-join", kind="spark")
            ray_cluster = make(url, name="tune", kind="ray")
            running(migrated, spark["id"], kind="spark")
            running(migrated, ray_cluster["id"], kind="ray")
            result = subprocess.run(
                ["docker", "run", "--rm", "--name", f"{network}-notebook", "--network",
                 network, *same_user, "-v", f"{client_source}:/dockyard-client:ro",
                 "-e", "PYTHONPATH=/dockyard-client", "-e", f"DOCKYARD_URL={url}",
                 "-e", "DOCKYARD_TOKEN=tok-alice",
                 # As Dockyard runs a job on the Ray cluster (driver_env).
                 "-e", "RAY_ADDRESS=ray://head:10001", "-e", "DOCKYARD_CLUSTER_KIND=ray",
                 "-e", f"DOCKYARD_CLUSTER_ID={ray_cluster['id']}",
                 NOTEBOOK_IMAGE, "python", "-c", SCRIPT],
                capture_output=True, text=True, timeout=780)
            logs = subprocess.run(["docker", "logs", "--tail", "40", head],
                                  capture_output=True, text=True)
        finally:
            subprocess.run(["docker", "rm", "-f", head, f"{network}-notebook"],
                           capture_output=True)
    output = result.stdout
    assert "CLIENT-CLUSTERS-OK" in output, (output[-3000:] + result.stderr[-5000:]
                                            + logs.stdout + logs.stderr)
    notebook_ip = output.split("NOTEBOOK ", 1)[1].split()[0]
    assert f"MASTER spark://head:7077 DRIVER {notebook_ip}" in output
    assert "SPARK-COUNT 1000 SPARK-SUM 249500" in output
    assert "RAY-COUNT 1000" in output and "RAY-NODES 2" in output
    assert "RAY-HERE tune" in output and "RAY-CLIENT-REFUSED True" in output
