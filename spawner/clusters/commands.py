"""What runs in a cluster's containers, as pure translations tested without an engine: the
names and labels, the head's and workers' argv for Ray and Spark, their sizes from the
limits, the head's readiness probe and how its output reads, a driver's environment, and
the options of a cluster container on a Docker engine.

Sizes follow the container's limits, so that an engine never plans for more than the
container may use:

- Ray's object store lives in /dev/shm (the container gets a shm of the store's size plus
  a margin; tmpfs pages count against the memory limit like any other). Ray falls back to
  /tmp, i.e. to disk, when /dev/shm is smaller than its store, which is both slower and
  invisible to the limit's accounting: the shm is sized so that it never does.
- Ray's ``--memory`` (what tasks may reserve) is the limit less the store and a reserve for
  Ray's own processes; ``--num-cpus`` is the CPU limit, rounded, at least 1.
- A Spark worker offers its executors the limit less the worker daemon's heap and the
  executors' JVM overhead, and the CPU limit as cores.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spawner.clusters.base import (
    DRIVER_ALIAS,
    HEAD_ALIAS,
    LABEL_CLUSTER_ID,
    ROLE_HEAD,
    ROLE_NETWORK,
    ClusterSpec,
    cluster_address,
)
from spawner.environment import CONTAINER_DATA_ROOT
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_OWNER, LABEL_ROLE, LABEL_RUN_ID

MB = 1024 * 1024
RAY_GCS_PORT, RAY_CLIENT_PORT, RAY_DASHBOARD_PORT = 6379, 10001, 8265
SPARK_MASTER_PORT, SPARK_UI_PORT = 7077, 8080
#: Ray refuses an object store below 75 MiB.
RAY_MIN_OBJECT_STORE_MB = 80
#: The smallest Ray head: besides its share of tasks it runs the GCS, the dashboard and
#: its agents, the client server and a server process per connected Ray Client driver
#: (about 0.9-1.2 GB in all while one driver is connected). At 1 GiB the kernel kills
#: them one by one.
RAY_HEAD_MIN_MEMORY_MB = 2048
#: The heap of Spark's master and worker daemons (their own default is 1 GiB).
SPARK_DAEMON_MEMORY_MB = 256
#: Spark refuses an executor heap below 450 MiB.
SPARK_MIN_EXECUTOR_MB = 450
#: The smallest Spark worker container that hosts a useful executor: the worker daemon's
#: heap, the smallest executor heap and the executor JVM's own overhead (256 MiB), rounded
#: up to a whole GiB. Below it the worker registers but no executor fits.
SPARK_MIN_WORKER_MEMORY_MB = 1024
#: How often a Docker engine restarts a worker container that failed (a Ray worker whose
#: raylet did not register within Ray's own 30 s on a busy machine exits 1; it joins
#: on a second try). Bounded, so that a worker that cannot start ends the cluster's start
#: rather than loop.
WORKER_RESTARTS = 3
#: Written by the probe once the wanted workers registered; from then on the head is
#: healthy as long as it serves, so that a worker dying later never gets it killed.
READY_MARK = "/tmp/.dockyard-cluster-ready"
#: Time a cluster gets to register its workers before failed probes count.
START_PERIOD_SECONDS = 600
#: How long the head may stop answering before it is reported unhealthy.
UNANSWERED_SECONDS = 30


# -- names and labels ----------------------------------------------------------------------
def cluster_prefix(namespace: str, cluster_id: int) -> str:
    return f"dockyard-{namespace}-cluster-{cluster_id}"


def network_name(namespace: str, cluster_id: int) -> str:
    return cluster_prefix(namespace, cluster_id)


def head_name(namespace: str, cluster_id: int) -> str:
    return f"{cluster_prefix(namespace, cluster_id)}-head"


def worker_name(namespace: str, cluster_id: int, index: int) -> str:
    """A worker container on a Docker engine (numbered from 1)."""
    return f"{cluster_prefix(namespace, cluster_id)}-worker-{index}"


def workers_service_name(namespace: str, cluster_id: int) -> str:
    """The one replicated service of a cluster's workers on a swarm."""
    return f"{cluster_prefix(namespace, cluster_id)}-workers"


def cluster_filter(namespace: str, cluster_id: int | None = None,
                   role: str | None = None) -> list[str]:
    """An engine label filter for the namespace's cluster objects."""
    labels = [f"{LABEL_NAMESPACE}={namespace}"]
    if cluster_id is not None:
        labels.append(f"{LABEL_CLUSTER_ID}={cluster_id}")
    if role is not None:
        labels.append(f"{LABEL_ROLE}={role}")
    return labels


def network_labels(spec: ClusterSpec, namespace: str) -> dict[str, str]:
    return spec.labels(namespace, ROLE_NETWORK)


def owner_and_run(labels: Mapping[str, str] | None) -> tuple[str | None, int | None]:
    labels = labels or {}
    try:
        run_id = int(labels[LABEL_RUN_ID]) if labels.get(LABEL_RUN_ID) else None
    except ValueError:
        run_id = None
    return labels.get(LABEL_OWNER), run_id


# -- sizes ---------------------------------------------------------------------------------
def logical_cpus(cpu: float) -> int:
    """CPUs an engine plans with: the limit rounded half up, at least one."""
    return max(1, math.floor(cpu + 0.5))


@dataclass(frozen=True)
class RaySizes:
    memory_bytes: int  # --memory: what tasks and actors may reserve
    object_store_bytes: int  # --object-store-memory
    shm_bytes: int  # the container's /dev/shm


def ray_sizes(memory_mb: int) -> RaySizes:
    """Ray's sizes in a container limited to ``memory_mb``: 30 % for the object store (as
    Ray's own default), a reserve of a fifth (at least 256 MiB) for the raylet, agents and
    the head's GCS and dashboard, the rest for tasks."""
    store_mb = max(RAY_MIN_OBJECT_STORE_MB, int(memory_mb * 0.3))
    reserve_mb = max(256, memory_mb // 5)
    tasks_mb = max(64, memory_mb - store_mb - reserve_mb)
    return RaySizes(tasks_mb * MB, store_mb * MB, (store_mb + 64) * MB)


def spark_worker_memory_mb(memory_mb: int) -> int:
    """What a Spark worker offers its executors (heap) in a container of ``memory_mb``:
    less the worker daemon's heap and a fifth (at least 256 MiB) for the executor JVM's
    own overhead and Python workers."""
    return max(SPARK_MIN_EXECUTOR_MB,
               memory_mb - SPARK_DAEMON_MEMORY_MB - max(256, memory_mb // 5))


# -- what runs -----------------------------------------------------------------------------
# Workers advertise their own address on the cluster network, as an IP: on a swarm a task's
# host name is not resolvable by the others, and a container with two interfaces (an
# overlay and docker_gwbridge) must not advertise the one other nodes cannot reach.
_OWN_ADDRESS = "ip=$(hostname -i | cut -d' ' -f1)"
# Workers wait until the head's name resolves (a swarm may start them first), so that the
# engine's own retries are spent on the head's start, not on its DNS entry.
_WAIT_FOR_HEAD = f"until getent hosts {HEAD_ALIAS} >/dev/null; do sleep 0.5; done"


def _shell(argv: Sequence[str], *, wait_for_head: bool, own_address: str) -> list[str]:
    """``argv`` run by the container's sh with the node's own IP in ``own_address``'s
    argument (``{ip}``), exec'd so that the engine is the init's child and gets SIGTERM."""
    words = [shlex.quote(word) for word in argv]
    words.append(own_address.replace("{ip}", '"$ip"'))
    steps = ([_WAIT_FOR_HEAD] if wait_for_head else []) + [_OWN_ADDRESS, "exec " + " ".join(words)]
    return ["/bin/sh", "-c", "; ".join(steps)]


def ray_head_argv(cpu: float, memory_mb: int) -> list[str]:
    sizes = ray_sizes(memory_mb)
    return _shell([
        "ray", "start", "--head", f"--port={RAY_GCS_PORT}",
        f"--ray-client-server-port={RAY_CLIENT_PORT}", "--dashboard-host=0.0.0.0",
        f"--dashboard-port={RAY_DASHBOARD_PORT}", f"--num-cpus={logical_cpus(cpu)}",
        f"--memory={sizes.memory_bytes}", f"--object-store-memory={sizes.object_store_bytes}",
        "--disable-usage-stats", "--block",
    ], wait_for_head=False, own_address="--node-ip-address={ip}")


def ray_worker_argv(cpu: float, memory_mb: int) -> list[str]:
    sizes = ray_sizes(memory_mb)
    return _shell([
        "ray", "start", f"--address={HEAD_ALIAS}:{RAY_GCS_PORT}",
        f"--num-cpus={logical_cpus(cpu)}", f"--memory={sizes.memory_bytes}",
        f"--object-store-memory={sizes.object_store_bytes}", "--disable-usage-stats",
        "--block",
    ], wait_for_head=True, own_address="--node-ip-address={ip}")


def spark_head_argv() -> list[str]:
    # The master binds the head's own name (its host name and alias on the network).
    return ["spark-class", "org.apache.spark.deploy.master.Master", "--host", HEAD_ALIAS,
            "--port", str(SPARK_MASTER_PORT), "--webui-port", str(SPARK_UI_PORT)]


def spark_worker_argv(cpu: float, memory_mb: int) -> list[str]:
    return _shell([
        "spark-class", "org.apache.spark.deploy.worker.Worker",
        "--cores", str(logical_cpus(cpu)), "--memory", f"{spark_worker_memory_mb(memory_mb)}M",
        "--webui-port", "8081", f"spark://{HEAD_ALIAS}:{SPARK_MASTER_PORT}",
    ], wait_for_head=True, own_address="--host {ip}")


def head_argv(spec: ClusterSpec) -> list[str]:
    if spec.kind == "ray":
        return ray_head_argv(spec.head_cpu, spec.head_memory_mb)
    return spark_head_argv()


def worker_argv(spec: ClusterSpec) -> list[str]:
    if spec.kind == "ray":
        return ray_worker_argv(spec.worker_cpu, spec.worker_memory_mb)
    return spark_worker_argv(spec.worker_cpu, spec.worker_memory_mb)


def _spark_ui_options(spec: ClusterSpec) -> str:
    if not spec.dashboard_path:
        return ""
    # Behind Dockyard's proxy the UI's links (and those to workers' and applications'
    # UIs, which the master then proxies) must carry the public path.
    return (f"-Dspark.ui.reverseProxy=true "
            f"-Dspark.ui.reverseProxyUrl={spec.dashboard_path.rstrip('/')}")


def cluster_env(spec: ClusterSpec, role: str) -> dict[str, str]:
    """The environment of the head (``role`` ROLE_HEAD) or of a worker."""
    env = {
        # Images that bring tini as their entrypoint run under Docker's init here; as a
        # subreaper it still reaps and stops warning that it is not PID 1.
        "TINI_SUBREAPER": "1",
        **spec.env,
        "DOCKYARD_CLUSTER_ID": str(spec.cluster_id),
        "DOCKYARD_CLUSTER_KIND": spec.kind,
    }
    if spec.kind == "ray":
        # Ray's client server forks a server process per Ray Client connection while its
        # gRPC threads run; gRPC's fork handlers then crash the child (a segfault in
        # grpc's event engine) before it execs, and ray.init() fails with "Starting Ray
        # client server failed". Every fork here is followed by an exec, so the handlers
        # are not needed.
        env["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    if spec.kind == "spark":
        env["SPARK_DAEMON_MEMORY"] = f"{SPARK_DAEMON_MEMORY_MB}m"
        env["SPARK_WORKER_DIR"] = "/tmp/spark-work"  # the image's SPARK_HOME is not ours
        ui = _spark_ui_options(spec)
        if ui:
            env["SPARK_MASTER_OPTS" if role == ROLE_HEAD else "SPARK_WORKER_OPTS"] = ui
    return env


def driver_env(kind: str, cluster_id: int, *, worker_memory_mb: int | None = None
               ) -> dict[str, str]:
    """What a driver on the cluster's network (a job's container joined as ``driver``)
    needs so that ``ray.init()`` / ``SparkSession.builder.getOrCreate()`` use the cluster.
    With ``worker_memory_mb``, a Spark driver also asks for executors of the size the
    workers offer (Spark's own default, 1 GiB, does not fit a small worker)."""
    env = {"DOCKYARD_CLUSTER_ID": str(cluster_id), "DOCKYARD_CLUSTER_KIND": kind}
    if kind == "ray":
        env["RAY_ADDRESS"] = cluster_address(kind)
    elif kind == "spark":
        env["SPARK_MASTER"] = cluster_address(kind)
        # The host name executors connect back to: the driver's alias on the network.
        env["SPARK_LOCAL_HOSTNAME"] = DRIVER_ALIAS
        if worker_memory_mb:
            env["SPARK_EXECUTOR_MEMORY"] = f"{spark_worker_memory_mb(worker_memory_mb)}m"
    else:
        raise ValueError(f"unknown cluster kind {kind!r}")
    return env


# -- the head's probe ----------------------------------------------------------------------
# Run by the engine inside the head as its healthcheck: ``python -c PROBE <kind> <wanted>
# <gate>``. It prints one JSON line {"workers", "busy", "dashboard", "ready"} (or {"error"});
# "ready" once ``wanted`` workers registered at least once. It succeeds while the head
# serves, and with ``gate`` 1 not before it was ready.
PROBE = r'''
import json, os, socket, sys

kind, wanted, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def spark():
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:8080/json/", timeout=3) as answer:
        master = json.load(answer)
    alive = [w for w in master.get("workers", []) if w.get("state") == "ALIVE"]
    return len(alive), bool(master.get("activeapps")), True


def ray():
    import importlib.util, types
    # Importing ray itself costs a second of CPU; its generated GCS stubs a tenth.
    root = os.path.dirname(importlib.util.find_spec("ray").origin)
    for name, path in (("ray", root), ("ray.core", root + "/core"),
                       ("ray.core.generated", root + "/core/generated")):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    import grpc
    from ray.core.generated import gcs_pb2, gcs_service_pb2 as gcs, gcs_service_pb2_grpc as rpc
    fields = gcs.GetAllJobInfoRequest.DESCRIPTOR.fields_by_name
    skip = {f: True for f in ("skip_submission_job_info_field", "skip_is_running_tasks_field")
            if f in fields}
    with grpc.insecure_channel("127.0.0.1:6379") as channel:
        nodes = rpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
            gcs.GetAllNodeInfoRequest(), timeout=3).node_info_list
        jobs = rpc.JobInfoGcsServiceStub(channel).GetAllJobInfo(
            gcs.GetAllJobInfoRequest(**skip), timeout=3).job_info_list
    alive = [n for n in nodes if n.state == gcs_pb2.GcsNodeInfo.ALIVE and not n.is_head_node]
    return len(alive), any(not job.is_dead for job in jobs), answers(8265)


try:
    workers, busy, dashboard = ray() if kind == "ray" else spark()
except Exception as exc:
    print(json.dumps({"workers": 0, "busy": None, "error": f"{type(exc).__name__}: {exc}"[:300]}))
    sys.exit(1)
if workers >= wanted:
    open("READY_MARK", "w").close()
ready = os.path.exists("READY_MARK")
print(json.dumps({"workers": workers, "busy": busy, "dashboard": dashboard, "ready": ready}))
sys.exit(0 if ready or not gate else 1)
'''.replace("READY_MARK", READY_MARK)


def healthcheck(kind: str, wanted: int, *, start_interval: bool = False,
                gate: bool = True) -> dict[str, Any]:
    """The head's healthcheck, in the engine API's form (a container's and a service's
    are the same). Engines
    of API 1.44+ probe every half second while starting and every 5 s after; older ones
    know no start interval, so they probe every second throughout (a probe costs about a
    tenth of a CPU second). Without ``gate`` the head is healthy as soon as it serves
    (a swarm gives a task its DNS name only once healthy, and the workers need the head's
    name to register); the probe's "ready" then tells readiness."""
    interval = 5.0 if start_interval else 1.0
    check: dict[str, Any] = {
        "Test": ["CMD", "python", "-c", PROBE, kind, str(wanted), "1" if gate else "0"],
        "Interval": int(interval * 1e9),
        "Timeout": 10 * 10**9,
        "Retries": max(3, math.ceil(UNANSWERED_SECONDS / interval)),
        "StartPeriod": START_PERIOD_SECONDS * 10**9,
    }
    if start_interval:
        check["StartInterval"] = int(0.5e9)
    return check


@dataclass(frozen=True)
class ProbeReport:
    """What the head's last probe said (``State.Health`` of its container)."""

    health: str  # "starting" | "healthy" | "unhealthy" | "" (no probe yet / none)
    workers: int = 0
    busy: bool | None = None
    dashboard: bool = False
    ready: bool = False  # the wanted workers registered at least once
    error: str = ""


def read_probe(state: Mapping[str, Any] | None) -> ProbeReport:
    """A container's ``State`` as the head's last probe report."""
    health = (state or {}).get("Health") or {}
    status = str(health.get("Status") or "")
    entries = health.get("Log") or []
    if not entries:
        return ProbeReport(status)
    output = str(entries[-1].get("Output") or "").strip()
    try:
        report = json.loads(output.splitlines()[-1]) if output else {}
    except (ValueError, IndexError):
        report = {}
    if not isinstance(report, dict):
        report = {}
    error = str(report.get("error") or "")
    if not report and output:
        error = output.splitlines()[-1][:300]
    busy = report.get("busy")
    return ProbeReport(status, workers=int(report.get("workers") or 0),
                       busy=busy if isinstance(busy, bool) else None,
                       dashboard=bool(report.get("dashboard")),
                       ready=bool(report.get("ready")), error=error)


def dashboard_port(kind: str) -> int:
    return RAY_DASHBOARD_PORT if kind == "ray" else SPARK_UI_PORT


# -- a cluster container on a Docker engine ------------------------------------------------
def container_options(spec: ClusterSpec, role: str, *, namespace: str, user: str,
                      pids_limit: int, index: int = 0, data_root: str | None = None,
                      start_interval: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``containers.create`` of the head (``role`` ROLE_HEAD) or of
    worker ``index``: the engine's argv, the limits, the hardening of job containers, the
    local data root where jobs see it, and the head's probe. It joins only the cluster's
    network, the head under the alias ``head``."""
    network = network_name(namespace, spec.cluster_id)
    if role == ROLE_HEAD:
        name, hostname = head_name(namespace, spec.cluster_id), HEAD_ALIAS
        argv, cpu, memory_mb = head_argv(spec), spec.head_cpu, spec.head_memory_mb
    else:
        name, hostname = worker_name(namespace, spec.cluster_id, index), f"worker-{index}"
        argv, cpu, memory_mb = worker_argv(spec), spec.worker_cpu, spec.worker_memory_mb
    options: dict[str, Any] = {
        "image": spec.image,
        "command": argv,
        "name": name,
        "hostname": hostname,
        "labels": spec.labels(namespace, role),
        "environment": cluster_env(spec, role),
        "user": user,
        "init": True,
        "network": network,
        "networking_config": {network: {"Aliases": [hostname]}},
        "mem_limit": f"{memory_mb}m",
        "memswap_limit": f"{memory_mb}m",
        "nano_cpus": int(round(cpu * 1e9)),
        "pids_limit": pids_limit,
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
    }
    if spec.kind == "ray":
        options["shm_size"] = ray_sizes(memory_mb).shm_bytes
    if role == ROLE_HEAD:
        options["healthcheck"] = healthcheck(spec.kind, spec.workers,
                                             start_interval=start_interval)
    else:
        # The engine restarts a worker that failed, never one stopped or removed (scale,
        # remove). The head is not restarted: a new head is a new, empty cluster.
        options["restart_policy"] = {"Name": "on-failure", "MaximumRetryCount": WORKER_RESTARTS}
    if data_root:
        options["volumes"] = {data_root: {"bind": CONTAINER_DATA_ROOT, "mode": "rw"}}
    return options

