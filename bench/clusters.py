"""Clusters benchmark, as ratios against a raw baseline in the same run.

1. Ray: time until a 1-head + 2-worker cluster accepts tasks. Both sides run the same
   driver check: a container of the same image (alias ``driver``) connects to
   ``ray://head:10001``, retrying while the head is not there, waits for three alive
   nodes and runs a tiny task pinned to each; timed from t0 until it has printed the three
   node ids and exited.

   - The headline, like for like (the goal's criterion): on both sides that driver
     container is started at t0 and waits in the same way, so the sides differ only in how
     fast the cluster comes to accept tasks, not in when the driver starts.
     By hand (the baseline): at t0 ``docker network create``, the driver started on that
     network at once, then ``docker run`` of the head and of two workers with the same
     commands, sizes, user, limits, hardening and workers' restart policy as Dockyard's
     containers (read from the ones it ran in the warm-up round; spawner.clusters' own
     when that round failed). No healthcheck: nothing by hand says when it is ready.
     Dockyard: at t0 ``POST /api/v1/clusters`` (a real HTTP server on loopback, SQLite as
     with ``make up``; the worker as its own process on the Docker backend starts the
     cluster) and the same driver started on a scratch network; the engine is polled
     every 0.15 s for the cluster's network (by the name spawner.clusters gives it) and
     the driver is connected to it (``docker network connect --alias driver``) as soon
     as it exists. Reported: p50 of each side and their ratio (goal ≤ 1.2×), with when
     the API said "running" beside Dockyard's.
   - The user's flow, not the goal's criterion: Dockyard until the API says "running"
     (what ``dockyard_data.cluster(name)`` waits for), and until a driver started only
     then has run its tasks; the headline's hand-wired time is printed beside it for
     context.
2. Spark: a job summing a range on a 2-worker standalone cluster (started by Dockyard as
   above, 1 core each) against the same job in ``local[2]``, in the same driver container
   (2 CPUs); timed from ``docker run`` of the driver until it exits, and inside the job
   (session start; the sum).

The series alternate run by run (which goes first rotates too), after one untimed
warm-up round; prints p50 / max and the ratio of the p50s. No assertions: the numbers
are the result.

    .venv/bin/python bench/clusters.py [--runs 5] [--image dockyard/notebook:latest]
    .venv/bin/python bench/clusters.py --quick     # 2 runs, a smaller Spark range
    .venv/bin/python bench/clusters.py --via backend   # spawner.clusters instead of the API
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results  # noqa: E402
from dockyard.settings import Settings  # noqa: E402

TOKEN = "bench-alice"
WORKERS, CPU, MEMORY_MB = 2, 1.0, 2048
DRIVER_CPU, DRIVER_MEMORY_MB = 2.0, 2048
START_LIMIT = 300.0  # seconds a cluster (or a driver) may take before the benchmark stops
LABEL = "dockyard.bench"
DOCKER_DEFAULT_SHM = 64 * 2**20
COPIED = "copied from the containers Dockyard ran"

# The driver check: connect (retrying while the head starts), wait for every node, run a
# tiny task on each. Prints the node ids the tasks ran on.
RAY_CHECK = """
import json, os, socket, sys, time
deadline = time.monotonic() + float(os.environ["CHECK_LIMIT"])
want = int(os.environ["WANT_NODES"])
while True:  # the client server's port first: a refused connection costs nothing
    try:
        socket.create_connection(("head", 10001), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the head never listened on 10001")
        time.sleep(0.1)
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
while True:
    try:
        ray.init(os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
        break
    except Exception as exc:  # noqa: BLE001 - the head is still starting
        if time.monotonic() > deadline:
            sys.exit(f"could not connect: {exc}")
        time.sleep(0.2)
while True:
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    if len(nodes) >= want:
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {len(nodes)} of {want} nodes joined")
    time.sleep(0.1)

@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()

ran = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
               .remote() for node in nodes])
print("RAN-ON " + json.dumps(sorted(set(ran))))
"""

# The Spark job: the same code whatever the master (SPARK_MASTER, see spark-env.sh).
SPARK_JOB = """
import json, os, time
started = time.perf_counter()
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("bench-sum").getOrCreate()
session = time.perf_counter()
n, partitions = int(os.environ["RANGE"]), int(os.environ["PARTITIONS"])
total = spark.range(0, n, 1, partitions).selectExpr("sum(id)").collect()[0][0]
done = time.perf_counter()
sc = spark.sparkContext
executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # less the driver's own
print("SPARK " + json.dumps({"master": sc.master, "sum": total, "ok": total == n * (n - 1) // 2,
      "executors": executors, "session": session - started, "job": done - session}))
spark.stop()
"""


class BenchIdentity:
    """One fixed token instead of a hub (the hub's token check is not what is measured)."""

    def user_for_token(self, token: str) -> Any:
        from dockyard.web.auth import User

        return User("alice") if token == TOKEN else None

    def login_redirect(self, next_url: str) -> Any:  # pragma: no cover - API only
        raise NotImplementedError

    def finish_login(self, code: str, state: str | None) -> tuple[str, str]:  # pragma: no cover
        raise NotImplementedError


def row(label: str, values: list[float]) -> str:
    return (f"  {label:<42} p50 {statistics.median(values):6.2f} s   max {max(values):6.2f} s"
            f"   (n={len(values)})")


def docker_cli(*args: str, timeout: float = START_LIMIT) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} … failed: {done.stderr.strip()[-800:]}")
    return done.stdout


# -- what runs in the containers -------------------------------------------------------------
@dataclass
class Wiring:
    """The head's and the workers' containers, as ``docker run`` options and commands."""

    head_command: list[str]
    worker_command: list[str]
    user: str = "1000:100"
    cpu: float = CPU
    memory_mb: int = MEMORY_MB
    pids_limit: int = 1024
    shm_mb: int = 0  # 0: Docker's default
    env: dict[str, str] = field(default_factory=dict)
    #: The workers' ``--restart`` as Dockyard's: a Ray worker whose raylet did not register
    #: within Ray's 30 s on a busy machine exits 1 and joins on a second try.
    worker_restart: str = ""
    source: str = "the spec's commands"

    def run_options(self) -> list[str]:
        options = ["--user", self.user, "--init", "--cap-drop", "ALL",
                   "--security-opt", "no-new-privileges", "--cpus", str(self.cpu),
                   "--memory", f"{self.memory_mb}m", "--memory-swap", f"{self.memory_mb}m",
                   "--pids-limit", str(self.pids_limit)]
        if self.shm_mb:
            options += ["--shm-size", f"{self.shm_mb}m"]
        for name, value in self.env.items():
            options += ["--env", f"{name}={value}"]
        return options


def spec_wiring(kind: str) -> Wiring:
    """The head's and workers' commands, sizes and environment as spawner.clusters builds
    them for Dockyard's containers (the contract's plain commands without it)."""
    try:
        from spawner.clusters.base import ROLE_HEAD, ClusterSpec
        from spawner.clusters.commands import (
            WORKER_RESTARTS,
            cluster_env,
            head_argv,
            ray_sizes,
            worker_argv,
        )
    except ImportError:
        return plain_wiring(kind)
    spec = ClusterSpec(cluster_id=0, owner="bench", kind=kind, image="", workers=WORKERS,
                       worker_cpu=CPU, worker_memory_mb=MEMORY_MB, head_cpu=CPU,
                       head_memory_mb=MEMORY_MB)
    env = cluster_env(spec, ROLE_HEAD)
    env.pop("TINI_SUBREAPER", None)  # both sides run under --init
    return Wiring(head_argv(spec), worker_argv(spec), env=env,
                  shm_mb=ray_sizes(MEMORY_MB).shm_bytes // 2**20 if kind == "ray" else 0,
                  worker_restart=f"on-failure:{WORKER_RESTARTS}",
                  source="spawner.clusters' commands and sizes")


def plain_wiring(kind: str) -> Wiring:
    """The commands of the clusters contract, for a checkout without spawner.clusters."""
    if kind == "ray":
        return Wiring(
            ["ray", "start", "--head", "--port=6379", "--ray-client-server-port=10001",
             "--dashboard-host=0.0.0.0", "--dashboard-port=8265", f"--num-cpus={CPU:g}",
             "--block"],
            ["ray", "start", "--address=head:6379", f"--num-cpus={CPU:g}", "--block"])
    return Wiring(
        ["spark-class", "org.apache.spark.deploy.master.Master", "--host", "head", "--port",
         "7077", "--webui-port", "8080"],
        ["spark-class", "org.apache.spark.deploy.worker.Worker", "--cores", f"{CPU:g}",
         "--memory", f"{MEMORY_MB - 512}m", "spark://head:7077"])


def copied_wiring(engine: Any, head: str, worker: str, image: str) -> Wiring:
    """The options Dockyard gave its head and a worker, to run the same by hand."""
    image_env = set(engine.images.get(image).attrs["Config"].get("Env") or [])

    def command(attrs: dict[str, Any]) -> list[str]:
        config = attrs["Config"]
        return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]

    head_attrs = engine.api.inspect_container(head)
    worker_attrs = engine.api.inspect_container(worker)
    host = head_attrs["HostConfig"]
    shm = host.get("ShmSize") or 0
    env = dict(item.split("=", 1) for item in head_attrs["Config"].get("Env") or []
               if item not in image_env)
    env.pop("TINI_SUBREAPER", None)  # both sides run under --init
    restart = worker_attrs["HostConfig"].get("RestartPolicy") or {}
    worker_restart = restart.get("Name") or ""
    if worker_restart == "on-failure" and restart.get("MaximumRetryCount"):
        worker_restart += f":{restart['MaximumRetryCount']}"
    return Wiring(
        command(head_attrs), command(worker_attrs), worker_restart=worker_restart,
        user=head_attrs["Config"].get("User") or "1000:100",
        cpu=(host.get("NanoCpus") or CPU * 1e9) / 1e9,
        memory_mb=(host.get("Memory") or MEMORY_MB * 2**20) // 2**20,
        pids_limit=host.get("PidsLimit") or 1024,
        shm_mb=0 if shm in (0, DOCKER_DEFAULT_SHM) else shm // 2**20,
        env=env, source=COPIED)


# -- the baseline: wired by hand --------------------------------------------------------------
class ByHand:
    """A cluster of ``docker run`` containers on a bridge network made for it."""

    name = "docker CLI, wired by hand"

    def __init__(self, image: str, label: str) -> None:
        self.image = image
        self.label = label
        self.wiring: dict[str, Wiring] = {"ray": spec_wiring("ray"),
                                          "spark": spec_wiring("spark")}
        self.count = 0

    def start(self, kind: str) -> str:
        """Starts the containers; returns the network (nothing tells when it is ready)."""
        network = self.create_network()
        self.run_containers(kind, network)
        return network

    def create_network(self) -> str:
        self.count += 1
        network = f"bench-{self.label}-{self.count}"
        docker_cli("network", "create", "--label", f"{LABEL}={self.label}", network)
        return network

    def run_containers(self, kind: str, network: str) -> None:
        """``docker run`` of the head, then of each worker, on the network."""
        wiring = self.wiring[kind]
        labels = ["--label", f"{LABEL}={self.label}"]
        docker_cli("run", "-d", "--name", f"{network}-head", "--hostname", "head",
                   "--network", network, "--network-alias", "head", *labels,
                   *wiring.run_options(), self.image, *wiring.head_command)
        for index in range(WORKERS):
            restart = ["--restart", wiring.worker_restart] if wiring.worker_restart else []
            docker_cli("run", "-d", "--name", f"{network}-worker-{index}", "--network", network,
                       *restart, *labels, *wiring.run_options(), self.image, *wiring.worker_command)

    def remove(self) -> None:
        remove_labelled(self.label)


def remove_labelled(label: str) -> None:
    found = docker_cli("ps", "-aq", "--filter", f"label={LABEL}={label}").split()
    if found:
        docker_cli("rm", "-f", *found)
    networks = docker_cli("network", "ls", "-q", "--filter", f"label={LABEL}={label}").split()
    if networks:
        docker_cli("network", "rm", *networks)


# -- Dockyard --------------------------------------------------------------------------------
class ThroughApi:
    """A cluster asked for through the REST API and started by the worker process."""

    name = "Dockyard API + worker"

    def __init__(self, url: str, namespace: str, image: str, engine: Any) -> None:
        self.url = url
        self.namespace = namespace
        self.image = image
        self.engine = engine
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {TOKEN}"
        self.count = 0
        self.cluster_id: int | None = None

    def start(self, kind: str) -> str:
        """Asks for the cluster and returns its network once Dockyard says it is running."""
        self.count += 1
        response = self.api.post(f"{self.url}/api/v1/clusters", timeout=60, json={
            "name": f"bench-{kind}-{self.count}", "kind": kind, "workers": WORKERS,
            "worker_cpu": CPU, "worker_memory_mb": MEMORY_MB, "image": self.image})
        if response.status_code != 201:
            raise RuntimeError(f"cluster refused: {response.status_code} {response.text}")
        self.cluster_id = response.json()["id"]
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            cluster = self.api.get(f"{self.url}/api/v1/clusters/{self.cluster_id}",
                                   timeout=30).json()
            if cluster["status"] == "running":
                return self.network()
            if cluster["status"] in ("failed", "stopped"):
                raise RuntimeError(f"cluster {self.cluster_id} {cluster['status']}: "
                                   f"{cluster['reason']}")
            time.sleep(0.1)
        raise TimeoutError(f"cluster {self.cluster_id} was not running in {START_LIMIT:.0f} s:"
                           f"\n{what_ran(self.engine, self.namespace, self.cluster_id)}")

    def network_now(self) -> str | None:
        """The cluster's network once the engine has it (None before): by the name
        spawner.clusters gives it, or by its labels in a checkout without that module."""
        cluster_id = self.cluster_id
        if cluster_id is None:
            return None
        try:
            from spawner.clusters.commands import network_name
        except ImportError:
            found = self.engine.networks.list(filters={"label": [
                f"dockyard.namespace={self.namespace}", f"dockyard.cluster-id={cluster_id}"]})
            return str(found[0].name) if found else None
        name = network_name(self.namespace, cluster_id)
        try:
            self.engine.api.inspect_network(name)
        except docker.errors.NotFound:
            return None
        return name

    def network(self) -> str:
        found = self.engine.networks.list(filters={"label": [
            f"dockyard.namespace={self.namespace}", f"dockyard.cluster-id={self.cluster_id}"]})
        if len(found) != 1:
            raise RuntimeError(f"cluster {self.cluster_id}: {len(found)} networks carry its "
                               "labels")
        return str(found[0].name)

    def containers(self) -> tuple[str, str]:
        """The head's and one worker's container names."""
        def one(role: str) -> str:
            found = self.engine.containers.list(filters={"label": [
                f"dockyard.namespace={self.namespace}", f"dockyard.role={role}",
                f"dockyard.cluster-id={self.cluster_id}"]})
            if not found:
                raise RuntimeError(f"cluster {self.cluster_id} has no {role} container")
            return str(found[0].name)

        return one("cluster-head"), one("cluster-worker")

    def remove(self) -> None:
        """Stops the cluster through the API and waits until the worker removed it."""
        if self.cluster_id is None:
            return
        self.api.delete(f"{self.url}/api/v1/clusters/{self.cluster_id}", timeout=30)
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            status = self.api.get(f"{self.url}/api/v1/clusters/{self.cluster_id}",
                                  timeout=30).json()["status"]
            if status in ("stopped", "failed"):
                break
            time.sleep(0.2)
        self.cluster_id = None


def what_ran(engine: Any, namespace: str, cluster_id: int) -> str:
    """Each container of the cluster: its state and the last line it wrote."""
    lines = []
    for container in engine.containers.list(all=True, filters={"label": [
            f"dockyard.namespace={namespace}", f"dockyard.cluster-id={cluster_id}"]}):
        tail = container.logs(tail=1).decode(errors="replace").strip()
        lines.append(f"  {container.name}: {container.status}: {tail[-300:]}")
    return "\n".join(lines) or "  no containers"


class ThroughBackend:
    """A cluster started with spawner.clusters' Docker backend directly (no service)."""

    name = "Dockyard DockerClusterBackend"

    def __init__(self, namespace: str, image: str, engine: Any) -> None:
        from spawner.clusters.docker import DockerClusterBackend

        self.backend = DockerClusterBackend(namespace)
        self.namespace = namespace
        self.image = image
        self.engine = engine
        self.count = 0
        self.cluster_id: int | None = None

    def start(self, kind: str) -> str:
        from spawner.clusters.base import ClusterPhase, ClusterSpec

        self.count += 1
        self.cluster_id = 990000 + self.count
        self.backend.start(ClusterSpec(
            cluster_id=self.cluster_id, owner="alice", kind=kind, image=self.image,
            workers=WORKERS, worker_cpu=CPU, worker_memory_mb=MEMORY_MB, head_cpu=CPU,
            head_memory_mb=MEMORY_MB))
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            status = self.backend.status(self.cluster_id)
            if status.phase == ClusterPhase.READY:
                return self.backend.driver_network(self.cluster_id)
            if status.phase in (ClusterPhase.FAILED, ClusterPhase.MISSING):
                raise RuntimeError(f"cluster {status.phase}: {status.reason}")
            time.sleep(0.1)
        raise TimeoutError(f"cluster {self.cluster_id} was not ready in {START_LIMIT:.0f} s:"
                           f"\n{what_ran(self.engine, self.namespace, self.cluster_id)}")

    containers = ThroughApi.containers
    network_now = ThroughApi.network_now

    def remove(self) -> None:
        if self.cluster_id is not None:
            self.backend.remove(self.cluster_id)
            self.cluster_id = None


# -- the driver --------------------------------------------------------------------------------
def run_driver(image: str, network: str, label: str, script: str,
               env: dict[str, str], name: str | None = None) -> str:
    """Runs ``python -c script`` in a container of the image on the cluster's network, as a
    job driver runs; returns its output (a failure raises with the output's end)."""
    argv = ["run", "--rm", *(["--name", name] if name else []), "--network", network,
            "--network-alias", "driver", "--label", f"{LABEL}={label}", "--user", "1000:100",
            "--init", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--cpus", str(DRIVER_CPU), "--memory", f"{DRIVER_MEMORY_MB}m"]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    done = subprocess.run(["docker", *argv, image, "python", "-c", script], capture_output=True,
                          text=True, timeout=START_LIMIT + 60)
    if done.returncode != 0:
        raise RuntimeError(f"driver exited {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def ray_check(image: str, network: str, label: str, name: str | None = None) -> None:
    out = run_driver(image, network, label, RAY_CHECK, {
        "RAY_ADDRESS": "ray://head:10001", "WANT_NODES": str(WORKERS + 1),
        "CHECK_LIMIT": str(START_LIMIT)}, name=name)
    line = next((line for line in out.splitlines() if line.startswith("RAN-ON ")), "")
    ran_on = json.loads(line.split(" ", 1)[1]) if line else []
    if len(ran_on) != WORKERS + 1:
        raise RuntimeError(f"tasks ran on {len(ran_on)} nodes, not {WORKERS + 1}:\n{out[-1000:]}")


class Background:
    """A call on its own thread: what it returned or raised, and when it ended (seconds
    from a shared start)."""

    def __init__(self, call: Callable[[], Any], started: float) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, args=(call, started), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any], started: float) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - started

    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def time_ray_at_once(side: ByHand | ThroughApi | ThroughBackend, image: str,
                     label: str) -> tuple[float, float]:
    """The headline: the driver check's container is started at t0 on both sides and
    retries until the cluster takes its tasks. By hand it runs on the cluster's network at
    once; for Dockyard it starts on a scratch network and is connected to the cluster's
    network as soon as the engine has it. Seconds until the check passed, and until the
    side's own start returned (by hand: the ``docker run``s; Dockyard: it said running)."""
    driver = f"bench-{label}-driver-{uuid.uuid4().hex[:8]}"
    scratch = ""
    starting: Background | None = None
    started = time.perf_counter()
    try:
        if isinstance(side, ByHand):
            network = side.create_network()
            check = Background(lambda: ray_check(image, network, label, driver), started)
            side.run_containers("ray", network)
            side_seconds = time.perf_counter() - started
            check.wait()
            return check.seconds, side_seconds
        scratch = f"bench-{label}-scratch-{uuid.uuid4().hex[:8]}"
        docker_cli("network", "create", "--label", f"{LABEL}={label}", scratch)
        check = Background(lambda: ray_check(image, scratch, label, driver), started)
        starting = Background(lambda: side.start("ray"), started)
        connected = False
        while not connected and not check.done():
            if starting.done() and starting.error is not None:
                starting.wait()  # the cluster failed: its reason
            network_now = side.network_now()
            if network_now:
                # Refused only while the driver's container is still being created.
                with contextlib.suppress(RuntimeError):
                    docker_cli("network", "connect", "--alias", "driver", network_now, driver,
                               timeout=30)
                    connected = True
            if not connected:
                time.sleep(0.15)
        check.wait()
        starting.wait()
        return check.seconds, starting.seconds
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            docker_cli("rm", "-f", driver, timeout=60)  # gone already unless it failed
        if starting is not None:
            starting.thread.join()  # the cluster's id is known before it is removed
        side.remove()
        if scratch:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                docker_cli("network", "rm", scratch, timeout=60)


def time_ray_cluster(side: ByHand | ThroughApi | ThroughBackend, image: str,
                     label: str) -> tuple[float, float]:
    """The user's flow: seconds until a driver started once the side's own start returned
    (Dockyard: it said running) ran its tasks, and until that start returned."""
    started = time.perf_counter()
    try:
        network = side.start("ray")
        started_side = time.perf_counter() - started
        ray_check(image, network, label)
        return time.perf_counter() - started, started_side
    finally:
        side.remove()


# -- Spark -------------------------------------------------------------------------------------
def spark_job(image: str, network: str, label: str, env: dict[str, str]) -> tuple[float, dict]:
    started = time.perf_counter()
    out = run_driver(image, network, label, SPARK_JOB, env)
    seconds = time.perf_counter() - started
    line = next((line for line in out.splitlines() if line.startswith("SPARK ")), "")
    if not line:
        raise RuntimeError(f"the Spark job printed no result:\n{out[-1000:]}")
    result = json.loads(line.split(" ", 1)[1])
    if not result["ok"]:
        raise RuntimeError(f"wrong sum: {result}")
    return seconds, result


def spark_driver_env() -> dict[str, str]:
    """What a job driving a Spark cluster gets from Dockyard (the contract's variables
    when spawner.clusters is missing)."""
    try:
        from spawner.clusters import driver_env
    except ImportError:
        return {"SPARK_MASTER": "spark://head:7077", "SPARK_LOCAL_HOSTNAME": "driver"}
    return driver_env("spark", 0, worker_memory_mb=MEMORY_MB)


def spark_bench(side: ByHand | ThroughApi | ThroughBackend, image: str, label: str,
                runs: int, size: int) -> None:
    local_network = f"bench-{label}-local"
    docker_cli("network", "create", "--label", f"{LABEL}={label}", local_network)
    job_env = {"RANGE": str(size), "PARTITIONS": "8"}
    print(f"\n2. Spark: sum of range({size:,}) in 8 partitions; a {WORKERS}-worker cluster "
          f"({CPU:g} core, {MEMORY_MB} MB each; {side.name}) against local[2], same driver "
          f"container ({DRIVER_CPU:g} CPUs, {DRIVER_MEMORY_MB} MB)", flush=True)
    try:
        network = side.start("spark")
    except (RuntimeError, TimeoutError) as exc:
        side.remove()
        print(f"  the Spark cluster did not start: {exc}")
        return
    try:
        sides: dict[str, tuple[str, dict[str, str]]] = {
            "local[2]": (local_network, {**job_env, "SPARK_MASTER": "local[2]"}),
            "cluster": (network, {**job_env, **spark_driver_env()}),
        }
        walls: dict[str, list[float]] = {name: [] for name in sides}
        inner: dict[str, list[dict]] = {name: [] for name in sides}
        for index in range(runs + 1):
            names = list(sides) if index % 2 == 0 else list(reversed(sides))
            for name in names:
                network_of, env = sides[name]
                seconds, result = spark_job(image, network_of, label, env)
                if index:
                    walls[name].append(seconds)
                    inner[name].append(result)
            print(f"  run {index or 'warm-up'}: " + ", ".join(
                f"{name} {walls[name][-1]:.2f} s" if index else f"{name} done"
                for name in sides) + f"; load average {os.getloadavg()[0]:.2f}", flush=True)
        print()
        for name in sides:
            executors = {result["executors"] for result in inner[name]}
            print(row(f"{name}: driver container, run → exit", walls[name]))
            print(row(f"{name}:   session start", [r["session"] for r in inner[name]]))
            print(row(f"{name}:   the sum (executors: {sorted(executors)})",
                      [r["job"] for r in inner[name]]))
        ratio = statistics.median(walls["cluster"]) / statistics.median(walls["local[2]"])
        job_ratio = (statistics.median([r["job"] for r in inner["cluster"]])
                     / statistics.median([r["job"] for r in inner["local[2]"]]))
        RESULTS.add(f"Spark job on a {WORKERS}-worker cluster, driver container p50",
                    statistics.median(walls["cluster"]), unit="s",
                    baseline=statistics.median(walls["local[2]"]),
                    baseline_name="the same job in local[2]",
                    note="the overhead of going distributed on one machine; no goal")
        print(f"\n  cluster / local[2]: {ratio:.2f}× (driver container p50), {job_ratio:.2f}× "
              "(the sum alone, p50)")
    finally:
        side.remove()


# -- setting Dockyard up ----------------------------------------------------------------------
def serve(app: Any) -> tuple[str, Any]:
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the output
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def start_worker(home: Path, namespace: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(home), DOCKYARD_JOB_BACKEND="docker",
               DOCKYARD_JOB_NAMESPACE=namespace, DOCKYARD_LOG_LEVEL="WARNING",
               DOCKYARD_CLUSTER_IDLE_TIMEOUT="0",
               DOCKYARD_CLUSTER_START_TIMEOUT=str(int(START_LIMIT)))
    log = open(home / "worker.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def add_image(settings: Settings, reference: str) -> None:
    """The image in the catalog, with its contents as the worker's inspection records them
    (a cluster request checks that the image has Ray or Spark)."""
    from dockyard.db import make_engine, make_session_factory
    from dockyard.models import Image, ImageStatus, utcnow
    from spawner.images.inspect import inspect_image

    contents = inspect_image(reference, timeout_seconds=120)
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            session.add(Image(reference=reference, for_jobs=True, status=ImageStatus.READY,
                              contents=contents, inspected_at=utcnow(), created_by="admin"))
            session.commit()
    finally:
        engine.dispose()


def api_available() -> str | None:
    """Why the clusters API cannot be used in this checkout, or None."""
    try:
        for module in ("dockyard.web.api.clusters", "dockyard.worker.clusters"):
            importlib.import_module(module)
    except ImportError as exc:
        return f"the clusters API or the worker's cluster duty is missing ({exc})"
    return None


def backend_missing() -> str | None:
    """Why spawner.clusters' Docker backend cannot be used in this checkout, or None."""
    try:
        importlib.import_module("spawner.clusters.docker")
    except ImportError as exc:
        return f"spawner.clusters' Docker backend is missing ({exc})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (≥ 3)")
    parser.add_argument("--image", default="dockyard/notebook:latest")
    parser.add_argument("--quick", action="store_true",
                        help="2 runs per side and a smaller Spark range")
    parser.add_argument("--via", choices=("api", "backend"), default="api",
                        help="Dockyard's side: the REST API with a worker (what a user "
                        "uses), or spawner.clusters' Docker backend alone")
    parser.add_argument("--spark-range", type=int, default=0,
                        help="numbers summed by the Spark job (default 200M, 20M quick)")
    parser.add_argument("--skip", choices=("ray", "spark"), action="append", default=[])
    parser.add_argument("--keep", action="store_true", help="keep the temporary home "
                        "(database, worker log) and print where it is")
    args = parser.parse_args()
    runs = 2 if args.quick else max(3, args.runs)
    spark_range = args.spark_range or (20_000_000 if args.quick else 200_000_000)

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-clusters-"))
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    label = namespace
    settings = Settings(home=home)
    engine = docker.from_env(timeout=START_LIMIT)
    server = worker = None
    try:
        via = args.via
        missing = api_available() if via == "api" else None
        if missing:
            print(f"Dockyard's side goes through spawner.clusters' Docker backend: {missing}")
            via = "backend"
        if via == "backend" and backend_missing():
            print(f"No Dockyard side: {backend_missing()}; only the hand-wired clusters run")
            via = "none"
        ours: ThroughApi | ThroughBackend | None = None
        if via == "api":
            from dockyard.migrate import upgrade
            from dockyard.web import create_app

            upgrade(settings.db_url)
            add_image(settings, args.image)
            url, server = serve(create_app(settings, identity=BenchIdentity()))
            worker = start_worker(home, namespace)
            ours = ThroughApi(url, namespace, args.image, engine)
        elif via == "backend":
            ours = ThroughBackend(namespace, args.image, engine)
        bare = ByHand(args.image, label)
        print(f"Clusters benchmark: 1 head + {WORKERS} workers ({CPU:g} CPU, {MEMORY_MB} MB "
              f"each) of {args.image}, {runs} runs per side, interleaved; {os.cpu_count()} "
              f"CPUs, load average {os.getloadavg()[0]:.2f}; Dockyard's side: "
              f"{ours.name if ours else 'none'}", flush=True)
        if "ray" not in args.skip:
            ray_bench(ours, bare, engine, args.image, label, runs)
        if "spark" not in args.skip:
            spark_bench(ours or bare, args.image, label, runs, spark_range)
        print(f"\n  load average {os.getloadavg()[0]:.2f} at the end")
        RESULTS.write()
        return 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        if server is not None:
            server.shutdown()
        remove_labelled(label)
        for kind in ("container", "network"):
            # Whatever the worker or the backend left behind in this namespace.
            listing = "ps" if kind == "container" else "network"
            found = docker_cli(*([listing, "-aq"] if kind == "container" else
                                 [listing, "ls", "-q"]),
                               "--filter", f"label=dockyard.namespace={namespace}").split()
            if found:
                docker_cli(*(["rm", "-f"] if kind == "container" else ["network", "rm"]),
                           *found)
        engine.close()
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


#: The figures for docs/benchmarks.md.
RESULTS = Results("clusters")

#: The Ray series: the headline's two sides, and Dockyard in the user's flow.
HAND, OURS, FLOW = "hand", "ours", "flow"


def ray_bench(ours: ThroughApi | ThroughBackend | None, bare: ByHand, engine: Any, image: str,
              label: str, runs: int) -> None:
    print(f"\n1. Ray: until a driver's tiny task ran on each of the {WORKERS + 1} nodes",
          flush=True)
    times: dict[str, list[float]] = {HAND: [], OURS: [], FLOW: []}
    said_running: dict[str, list[float]] = {OURS: [], FLOW: []}
    failures: dict[str, list[str]] = {HAND: [], OURS: [], FLOW: []}
    hand_name = "by hand: driver at t0 on its network"
    if ours is None:
        for index in range(runs + 1):
            outcome = attempt(lambda: time_ray_at_once(bare, image, label), failures[HAND])
            if outcome and index:
                times[HAND].append(outcome[0])
        print(row(hand_name, times[HAND]))
        return
    warm_up = warm_up_and_copy(ours, bare, engine, image, label)
    warm_up_bare = attempt(lambda: time_ray_at_once(bare, image, label), [])
    print(f"  warm-up: Dockyard {describe(warm_up)}, by hand {describe(warm_up_bare)} "
          f"(by hand: {bare.wiring['ray'].source})", flush=True)
    print(f"    head:    {' '.join(bare.wiring['ray'].head_command)}")
    print(f"    worker:  {' '.join(bare.wiring['ray'].worker_command)}")
    print(f"    options: {' '.join(bare.wiring['ray'].run_options())}; workers' --restart "
          f"{bare.wiring['ray'].worker_restart or 'none'}", flush=True)
    timed: dict[str, Callable[[], tuple[float, float]]] = {
        OURS: lambda: time_ray_at_once(ours, image, label),
        HAND: lambda: time_ray_at_once(bare, image, label),
        FLOW: lambda: time_ray_cluster(ours, image, label),
    }
    short = {OURS: "Dockyard", HAND: "by hand", FLOW: "Dockyard, driver after running"}
    series = list(timed)
    for index in range(1, runs + 1):
        # Each series goes first, second and third in turn.
        shift = (index - 1) % len(series)
        said: dict[str, str] = {}
        for name in series[shift:] + series[:shift]:
            outcome = attempt(timed[name], failures[name])
            said[name] = describe(outcome)
            if outcome:
                times[name].append(outcome[0])
                if name in said_running:
                    said_running[name].append(outcome[1])
                    said[name] += f" (running after {outcome[1]:.2f} s)"
        print(f"  run {index}: " + ", ".join(f"{short[name]} {said[name]}" for name in series)
              + f"; load average {os.getloadavg()[0]:.2f}", flush=True)
    said_what = "the API said running" if isinstance(ours, ThroughApi) else "it said ready"
    print("\n  Until the cluster accepts tasks (the goal's criterion): the same driver "
          "container,\n  started at t0 on both sides, retries until 3 nodes are alive and a "
          "task ran on each")
    if times[HAND]:
        print(row(hand_name, times[HAND]))
    if times[OURS]:
        print(row("Dockyard: driver at t0, connected", times[OURS]))
        print(row(f"  ({said_what} after)", said_running[OURS]))
    if times[OURS] and times[HAND]:
        ratio = statistics.median(times[OURS]) / statistics.median(times[HAND])
        print(f"  Dockyard / by hand: {ratio:.2f}× (p50)   goal ≤ 1.2×: "
              f"{'met' if ratio <= 1.2 else 'NOT met'}")
        RESULTS.add(f"Ray cluster (1 head + {WORKERS} workers) until a task ran on each node, "
                    "p50", statistics.median(times[OURS]), unit="s",
                    baseline=statistics.median(times[HAND]),
                    baseline_name="the same containers wired by hand", goal_ratio=1.2,
                    note=f"{len(times[OURS])} of {runs} runs started")
    print(f"\n  The user's flow (not the goal's criterion): wait until {said_what} (as\n"
          "  dockyard_data.cluster(name) does), then start the driver")
    if said_running[FLOW]:
        print(row(f"Dockyard: until {said_what}", said_running[FLOW]))
    if times[FLOW]:
        print(row("Dockyard: until a driver started then ran", times[FLOW]))
    if times[HAND]:
        print(row("by hand, driver at t0 (for context)", times[HAND]))
    for name in series:
        for reason in failures[name]:
            print(f"  {short[name]}: a start failed: {reason}")
    print(flush=True)


def attempt(timed: Callable[[], tuple[float, float]],
            failures: list[str]) -> tuple[float, float] | None:
    """One timed cluster; a cluster that did not come up is counted as a failure (with
    its reason), not as a time."""
    try:
        return timed()
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        failures.append(" | ".join(line.strip() for line in str(exc).splitlines()[:4]))
        return None


def describe(outcome: tuple[float, float] | None) -> str:
    return f"{outcome[0]:.2f} s" if outcome else "FAILED"


def warm_up_and_copy(ours: ThroughApi | ThroughBackend, bare: ByHand, engine: Any, image: str,
                     label: str) -> tuple[float, float] | None:
    """One untimed Dockyard cluster whose containers the hand-wired side copies (commands,
    user, limits, environment), so that both sides run the same containers."""
    started = time.perf_counter()
    failures: list[str] = []
    try:
        network = ours.start("ray")
        ready = time.perf_counter() - started
        bare.wiring["ray"] = copied_wiring(engine, *ours.containers(), image)
        ray_check(image, network, label)
        return time.perf_counter() - started, ready
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        failures.append(str(exc).splitlines()[0])
        if ours.cluster_id is not None and bare.wiring["ray"].source != COPIED:
            # The containers are still there when only the start was slow.
            with contextlib.suppress(RuntimeError, docker.errors.DockerException):
                bare.wiring["ray"] = copied_wiring(engine, *ours.containers(), image)
        print(f"  warm-up: Dockyard's cluster failed: {failures[0]}", flush=True)
        return None
    finally:
        ours.remove()


if __name__ == "__main__":
    sys.exit(main())
