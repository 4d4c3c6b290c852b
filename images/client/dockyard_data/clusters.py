"""A Spark or Ray cluster of yours, found by name through Dockyard, and the sessions that
use it from a notebook:

    import dockyard_data
    spark = dockyard_data.cluster("big-join").spark()
    dockyard_data.cluster("tune").ray()   # this notebook joins the Ray cluster

Dockyard attaches your notebook servers to the network of each of your running clusters,
and a cluster's address names its own head (never the ``head`` every cluster has on its
network); nothing here needs configuring. A job that runs on a cluster finds its own with
``dockyard_data.cluster_here()``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from dockyard_data.errors import DockyardError, InvalidRequest

#: Where a Ray head listens: nodes join at the first, Ray Client drivers at the second.
RAY_HEAD_PORT = 6379
RAY_CLIENT_PORT = 10001
#: What Dockyard sets in a job that runs on one of its clusters (besides RAY_ADDRESS or
#: SPARK_MASTER).
CLUSTER_ID_VARIABLE = "DOCKYARD_CLUSTER_ID"
CLUSTER_KIND_VARIABLE = "DOCKYARD_CLUSTER_KIND"
#: The cluster's status while Dockyard is still bringing it up.
SETTLING = ("queued", "starting")
POLL_SECONDS = 2.0


class ClusterNotFound(DockyardError, LookupError):
    """You have no live cluster of that name."""


class ClusterFailed(DockyardError):
    """The cluster failed, ended, or did not come up in time; the message says why."""


class RayClientMode(DockyardError, RuntimeError):
    """Ray is connected through the Ray Client here, where Ray Data cannot read."""


RAY_CLIENT_ADVICE = (
    "Ray Data cannot read through the Ray Client, and this process is connected to Ray as "
    "a client (ray.init() with RAY_ADDRESS=ray://..., as a job on a Ray cluster has it). "
    "Call load_ray before ray.init(): in a job on a Ray cluster it joins the cluster as a "
    "node first. Or connect with dockyard_data.cluster_here().ray() in such a job "
    "(dockyard_data.cluster(\"name\").ray() in a notebook) instead of ray.init(); "
    "ray.shutdown() first if Ray is already connected.")


class Cluster:
    """One of your clusters, as Dockyard last told it (``refresh()`` asks again)."""

    def __init__(self, api: Any, record: dict) -> None:
        self._api = api
        self.record = dict(record)

    def __repr__(self) -> str:
        return (f"Cluster({self.name!r}, kind={self.kind!r}, status={self.status!r}, "
                f"address={self.address!r})")

    @property
    def id(self) -> int:
        return int(self.record["id"])

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def kind(self) -> str:
        """ray or spark."""
        return str(self.record["kind"])

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def address(self) -> str:
        """What a driver connects to, e.g. spark://dockyard-prod-cluster-7-head:7077."""
        return str(self.record.get("address") or "")

    @property
    def workers(self) -> int:
        return int(self.record["workers"])

    def refresh(self) -> Cluster:
        self.record = self._api.call("GET", f"/clusters/{self.id}")
        return self

    def wait(self, timeout: float = 300, poll: float = POLL_SECONDS) -> Cluster:
        """Wait while Dockyard starts the cluster; raises ``ClusterFailed`` with the reason
        when it fails or ends, or when it is not running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.status in SETTLING:
            if time.monotonic() >= deadline:
                raise ClusterFailed(f"Cluster {self.name!r} is still {self.status} after "
                                    f"{timeout:g} s; its page on Dockyard tells how far it got")
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.05)))
            self.refresh()
        if self.status != "running":
            reason = self.record.get("reason") or ""
            raise ClusterFailed(f"Cluster {self.name!r} is {self.status}"
                                + (f": {reason}" if reason else "")
                                + "; start it again on Dockyard's Clusters page")
        return self

    # -- sessions --------------------------------------------------------------------
    def spark(self, app_name: str = "dockyard", timeout: float = 120, **config: Any) -> Any:
        """A SparkSession whose master is this cluster (a Spark cluster only). The
        executors connect back to this process, so the driver's address is the one this
        container has on the cluster's network. ``config``: more Spark settings, e.g.
        ``**{"spark.executor.memory": "1g"}``."""
        self._require("spark")
        host, port = head_of(self.address, 7077)
        driver_host = address_towards(host, port, timeout=timeout)
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None and active.sparkContext.master != self.address:
            # One SparkContext per process: a local session is in the way of this one.
            active.stop()
        builder = (SparkSession.builder.master(self.address).appName(app_name)
                   .config("spark.driver.host", driver_host)
                   .config("spark.driver.bindAddress", "0.0.0.0"))
        for key, value in config.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()

    def ray(self, timeout: float = 120, client: bool = False, **options: Any) -> Any:
        """Connect this process to the Ray cluster, unless Ray is already initialised
        here; returns what ``ray.init`` returns (None when it was already).

        This machine joins the cluster as a node without CPUs (``ray start --address``),
        so that this process is a driver like any other: Ray Data, Train and Tune work
        (they do not through the Ray Client). ``client=True`` connects through the Ray
        Client instead (``ray.init(<the address>)``): lighter, for tasks and actors.
        """
        self._require("ray")
        import ray

        if ray.is_initialized():
            return None
        host, client_port = head_of(self.address, RAY_CLIENT_PORT)
        if client:
            address_towards(host, client_port, timeout=timeout)
            return ray.init(address=self.address, **options)
        return join_ray(host, f"Ray cluster {self.name!r}", timeout=timeout, **options)

    def _require(self, kind: str) -> None:
        if self.status != "running":
            self.refresh().wait()
        if self.kind != kind:
            other = "ray()" if self.kind == "ray" else "spark()"
            raise InvalidRequest(f"Cluster {self.name!r} is a {self.kind} cluster; use "
                                 f".{other} (or start a {kind} cluster)")


def head_of(address: str, default_port: int) -> tuple[str, int]:
    """The host and port of ``spark://head:7077`` or ``ray://head:10001``."""
    parts = urlsplit(address)
    if not parts.hostname:
        raise ClusterFailed(f"Dockyard gave no address for the cluster ({address!r})")
    return parts.hostname, parts.port or default_port


def address_towards(host: str, port: int, *, timeout: float = 120,
                    resolve: Callable[..., Any] = socket.getaddrinfo) -> str:
    """This machine's own IP address on the route to ``host``: the one the cluster's
    workers reach it at. Waits until ``host`` resolves and answers on ``port``, since
    Dockyard joins a notebook server to a cluster's network a moment after the cluster
    starts."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            family, _, _, _, target = resolve(host, port, 0, socket.SOCK_STREAM)[0]
            with socket.create_connection(target[:2], timeout=5):
                pass
            # A UDP "connection" sends nothing: it only picks the route, and so the
            # interface, that reaches the head.
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(target)
                return str(probe.getsockname()[0])
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise ClusterFailed(
                f"This container cannot reach the cluster's head at {host}:{port} after "
                f"{timeout:g} s ({last}); Dockyard joins your running notebook servers to "
                "the cluster's network, so a server started on another engine, or by "
                "another user, cannot reach it") from None
        time.sleep(1)


def join_ray(host: str, what: str, *, timeout: float = 120, **options: Any) -> Any:
    """Join the Ray cluster whose head is ``host`` as a node without CPUs, and connect
    this process to it as a driver; returns what ``ray.init`` returns."""
    import ray

    address_towards(host, RAY_HEAD_PORT, timeout=timeout)
    said = join_ray_cluster(f"{host}:{RAY_HEAD_PORT}")
    try:
        # The head's own address, not "auto": Ray replaces "auto" with RAY_ADDRESS, which
        # in a job on a cluster names the Ray Client's port (ray://head:10001).
        return ray.init(address=f"{host}:{RAY_HEAD_PORT}", **options)
    except ConnectionError as exc:
        raise ClusterFailed(f"Could not join {what}: {exc}"
                            + (f" ({said})" if said else "")) from None


def job_ray_head(environ: Mapping[str, str] = os.environ) -> str | None:
    """The host of the Ray head when this process is a job on one of Dockyard's Ray
    clusters (RAY_ADDRESS=ray://head:10001, DOCKYARD_CLUSTER_KIND=ray); None otherwise."""
    address = environ.get("RAY_ADDRESS", "")
    if environ.get(CLUSTER_KIND_VARIABLE) != "ray" or not address.startswith("ray://"):
        return None
    return head_of(address, RAY_CLIENT_PORT)[0]


def join_job_ray_cluster(timeout: float = 120,
                         environ: Mapping[str, str] = os.environ) -> bool:
    """In a job on a Ray cluster, before Ray is initialised: join the job's cluster as
    ``Cluster.ray()`` does, so that Ray Data reads on the cluster (it cannot through
    the Ray Client that RAY_ADDRESS would give ``ray.init()``). Returns whether it
    joined; anywhere else, or once Ray is initialised, it does nothing."""
    host = job_ray_head(environ)
    if host is None:
        return False
    import ray

    if ray.is_initialized():
        return False
    join_ray(host, f"this job's Ray cluster at {host}", timeout=timeout)
    return True


def refuse_ray_client() -> None:
    """Raise ``RayClientMode``, saying what to do instead, when this process is connected
    to Ray through the Ray Client."""
    from ray.util.client import ray as client_ray

    if client_ray.is_connected():
        raise RayClientMode(RAY_CLIENT_ADVICE)


def join_ray_cluster(head: str, attempts: int = 2) -> str:
    """Start a Ray node here, without CPUs or GPUs (no task is placed on it), joined to
    the cluster whose head is ``head``; returns what went wrong, if anything ("" when it
    started). A node already running here is kept: ``ray.init`` then finds it, or the
    caller says why not."""
    launcher = Path(sys.executable).with_name("ray")
    ray_command = str(launcher) if launcher.exists() else (shutil.which("ray") or "ray")
    said = ""
    for _ in range(attempts):
        try:
            started = subprocess.run(
                [ray_command, "start", f"--address={head}", "--num-cpus=0", "--num-gpus=0",
                 "--disable-usage-stats"], capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"ray start: {exc}"
        if started.returncode == 0:
            return ""
        output = started.stderr + started.stdout
        said = "ray start: " + " / ".join(output.strip().splitlines()[-3:])
        if "timed out during startup" not in output:
            break
        # Ray gives a node 30 s to start; on a busy machine that may not be enough, and
        # what the first try left behind is in the way of the second.
        subprocess.run([ray_command, "stop", "--force"], capture_output=True, timeout=120)
    return said


def find_cluster(api: Any, name: str, *, wait: bool = True, timeout: float = 300) -> Cluster:
    """Your live cluster called ``name``, waited for until it runs (``wait``)."""
    found = api.call("GET", "/clusters", params={"name": name})["clusters"]
    if not found:
        raise ClusterNotFound(f"You have no live cluster named {name!r}; start one on "
                              "Dockyard's Clusters page (or 'dockyard clusters create')")
    # Asked by id, the cluster counts as used: its idle timeout starts again.
    cluster = Cluster(api, found[0]).refresh()
    return cluster.wait(timeout) if wait else cluster


def find_cluster_here(api: Any, *, wait: bool = True, timeout: float = 300,
                      environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster this job runs on (DOCKYARD_CLUSTER_ID, set by Dockyard in a job that
    asked for a cluster), waited for until it runs (``wait``)."""
    cluster_id = environ.get(CLUSTER_ID_VARIABLE, "").strip()
    if not cluster_id.isdigit():
        raise ClusterNotFound("This process is not a job on a Dockyard cluster "
                              f"({CLUSTER_ID_VARIABLE} is not set); name your cluster "
                              "instead: dockyard_data.cluster(\"name\")")
    try:
        record = api.call("GET", f"/clusters/{int(cluster_id)}")
    except DockyardError as exc:
        if exc.status != 404:
            raise
        raise ClusterNotFound(f"Cluster {cluster_id} of this job is not yours, or no longer "
                              "there") from None
    cluster = Cluster(api, record)
    return cluster.wait(timeout) if wait else cluster
