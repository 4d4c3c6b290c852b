"""How a run becomes a Swarm service in job mode on a Docker Swarm.

Each run is one service in ``replicated-job`` mode (one task, never restarted), named
``dockyard-<namespace>-run-<id>``: the swarm refuses a second service of that name, so a
run is never started twice. Its CPU and memory are both reservations and limits, so the
swarm places it on a node with room and holds it pending, with the scheduler's reason
("no suitable node (insufficient resources on 1 node)"), while no node has room.

The translations (run → service spec, task → JobStatus) are pure functions at the top;
``SwarmJobBackend`` is the thin part that talks to the manager.

What Engine 20.10 (API 1.41) does not offer for services, and what stands in for it:

- *no-new-privileges*: service specs of API 1.41 have no such field. All capabilities
  are dropped and the user is never root, so a setuid program gains no capability; an
  admin who wants the flag too sets ``"no-new-privileges": true`` in each node's
  daemon.json, which applies to task containers as well.
- *a swap limit*: services have none; the memory limit is the only one.
- *stopping a job*: removing a ``replicated-job`` service leaves its running task
  running (checked on 20.10; moby/moby#42789 reports the tasks are not removed either).
  ``stop`` therefore updates the job to zero completions, which makes the swarm send
  SIGTERM, wait the grace period and kill; it reads the task's real exit before the
  service is removed.
- *log streams*: ``service logs --follow`` does not end when the task does, so the
  stream is closed once the task has ended and whatever came after is read once more.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import (
    ContainerSpec,
    NetworkAttachmentConfig,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)
from docker.types.daemon import CancellableStream

from spawner.jobs.base import (
    LABEL_NAMESPACE,
    LABEL_ROLE,
    EngineState,
    JobBackend,
    JobSpec,
    JobStartError,
    JobStatus,
)
from spawner.jobs.config import BackendConfig
from spawner.jobs.docker import DEFAULT_JOB_USER, job_user, parse_docker_time, run_id_of
from spawner.jobs.polling import watch_by_polling

log = logging.getLogger(__name__)

#: Set on a service whose job Dockyard stopped (it has no task left to ask).
LABEL_STOPPED = "dockyard.stopped"
#: Task containers carry the run's labels under another role, so that a Docker pool on
#: the same engine never takes a swarm task's container for one of its own jobs.
CONTAINER_ROLE = "swarm-task"

PENDING_TASK_STATES = frozenset({"new", "allocated", "pending", "assigned", "accepted",
                                 "preparing", "ready", "starting"})
ENDED_TASK_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned",
                               "remove"})
_NON_ZERO_EXIT = re.compile(r"^task: non-zero exit \(-?\d+\)$")
#: A line the manager writes into a followed log stream when the service goes away.
_ENGINE_LOG_NOTE = b"Error grabbing logs: "
#: Time the last lines of a finished task get to arrive before its stream is closed.
LOG_SETTLE_SECONDS = 1.0
TASK_CHUNK = 50


# -- pure adapters -------------------------------------------------------------------------
def service_name(namespace: str, run_id: int) -> str:
    return f"dockyard-{namespace}-run-{run_id}"


def service_options(spec: JobSpec, *, namespace: str, user: str, network: str = "",
                    constraints: Iterable[str] = (), gpu_resource: str = "",
                    pids_limit: int = 1024, stop_grace_seconds: int = 10) -> dict[str, Any]:
    """Keyword arguments for ``APIClient.create_service``: one job task with the run's
    command, reservations equal to limits, and the hardening services allow."""
    if spec.gpu and not gpu_resource:
        raise JobStartError("this swarm pool offers no GPUs (its admin has not named the "
                            "swarm's GPU resource)")
    labels = spec.labels(namespace)
    memory = spec.memory_mb * 1024 * 1024
    nano_cpus = int(round(spec.cpu * 1e9))
    resources = Resources(
        cpu_limit=nano_cpus, mem_limit=memory, cpu_reservation=nano_cpus,
        mem_reservation=memory,
        generic_resources={gpu_resource: spec.gpu} if spec.gpu else None,
    )
    resources["Limits"]["Pids"] = pids_limit
    container = ContainerSpec(
        spec.image, command=list(spec.argv), env=dict(spec.env), user=user,
        labels={**labels, LABEL_ROLE: CONTAINER_ROLE},
        # A tiny init as PID 1 forwards SIGTERM to the job and reaps its children.
        init=True, cap_drop=["ALL"], stop_grace_period=stop_grace_seconds * 10**9,
    )
    networks = [NetworkAttachmentConfig(network)] if network else []
    networks += [NetworkAttachmentConfig(name, aliases=[alias]) for name, alias in spec.networks]
    template = TaskTemplate(
        container, resources=resources, restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=list(constraints)) if constraints else None,
        networks=networks or None,
    )
    return {
        "task_template": template,
        "name": service_name(namespace, spec.run_id),
        "labels": labels,
        "mode": ServiceMode("replicated-job", replicas=1),
    }


def latest_task(tasks: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The service's current task (a job has one; an update can leave an older one)."""
    return max(tasks, key=lambda task: ((task.get("Version") or {}).get("Index", 0),
                                        task.get("CreatedAt", "")), default=None)


def status_from_task(task: Mapping[str, Any], *, handle: str,
                     node: str | None = None) -> JobStatus:
    """A swarm task's state as an engine-neutral JobStatus."""
    status = task.get("Status") or {}
    state = str(status.get("State", "")).lower()
    error = status.get("Err") or ""
    at = parse_docker_time(status.get("Timestamp"))
    container = status.get("ContainerStatus") or {}
    ran = bool(container.get("ContainerID"))
    if state in PENDING_TASK_STATES:
        # The scheduler's reason for holding a task back is the part worth showing.
        return JobStatus(EngineState.PENDING, handle, reason=error, node=node)
    if state == "running":
        return JobStatus(EngineState.RUNNING, handle, started_at=at, node=node)
    if state in ENDED_TASK_STATES:
        code = container.get("ExitCode") if ran and state != "rejected" else None
        reasons = []
        if state == "rejected":
            reasons.append(f"the swarm could not start the task: {error or 'rejected'}")
        elif state == "orphaned":
            reasons.append("the node running the task stopped answering")
        elif state in ("shutdown", "remove"):
            reasons.append("the swarm stopped the task" if ran
                           else "the swarm stopped the task before it ran")
        elif error and not _NON_ZERO_EXIT.match(error):
            reasons.append(error)
        if code == 137 and state == "failed":
            reasons.append("killed (SIGKILL), most often for going over its memory limit")
        return JobStatus(EngineState.EXITED, handle, exit_code=code,
                         reason="; ".join(reasons), finished_at=at, node=node)
    return JobStatus(EngineState.PENDING, handle, reason=error or state, node=node)


def status_of_service(service: Mapping[str, Any], tasks: Iterable[Mapping[str, Any]], *,
                      node_name: Callable[[str], str | None] = lambda _node: None
                      ) -> JobStatus:
    handle = service["ID"]
    task = latest_task(tasks)
    if task is None:
        labels = (service.get("Spec") or {}).get("Labels") or {}
        if labels.get(LABEL_STOPPED):
            return JobStatus(EngineState.EXITED, handle,
                             reason="stopped on request; its task is gone",
                             finished_at=parse_docker_time(service.get("UpdatedAt")))
        return JobStatus(EngineState.PENDING, handle,
                         reason="waiting for the swarm to schedule the task")
    node_id = task.get("NodeID")
    return status_from_task(task, handle=handle, node=node_name(node_id) if node_id else None)


# -- the engine ----------------------------------------------------------------------------
class SwarmJobBackend(JobBackend):
    name = "swarm"
    #: Changes come from one batched listing per poll (Swarm reports no task events).
    has_events = True

    def __init__(
        self,
        namespace: str,
        dockyard_url: str,
        *,
        network: str = "",
        constraints: Iterable[str] = (),
        gpu_resource: str = "",
        pids_limit: int = 1024,
        stop_grace_seconds: int = 10,
        poll_seconds: float = 2.0,
        pool_size: int = 16,
        client: docker.DockerClient | None = None,
    ) -> None:
        super().__init__(namespace, dockyard_url)
        self.network = network
        self.constraints = tuple(constraints)
        self.gpu_resource = gpu_resource
        self.pids_limit = pids_limit
        self.stop_grace_seconds = stop_grace_seconds
        self.poll_seconds = poll_seconds
        self.client = client or docker.from_env(timeout=60, max_pool_size=pool_size)
        # Followed log streams may stay quiet for hours: no read timeout on them.
        self.streams = docker.from_env(timeout=None, max_pool_size=pool_size)
        self._node_names: dict[str, str] = {}
        self._image_users: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        return cls(namespace, config.dockyard_url, network=config.network,
                   constraints=config.constraints, gpu_resource=config.gpu_resource,
                   pids_limit=config.pids_limit, stop_grace_seconds=config.stop_grace_seconds,
                   poll_seconds=config.poll_seconds, pool_size=config.pool_size)

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def _label_filter(self) -> list[str]:
        return [f"{LABEL_NAMESPACE}={self.namespace}", f"{LABEL_ROLE}=job"]

    def _user_for(self, image: str) -> str:
        """The image's own user (never root) when the manager has the image; otherwise
        uid 1000, as the node that runs the task may be the only one holding it."""
        cached = self._image_users.get(image)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        try:
            config = self.client.images.get(image).attrs.get("Config") or {}
            user = job_user(config.get("User"))
        except ImageNotFound:
            user = DEFAULT_JOB_USER
        self._image_users[image] = (time.monotonic(), user)
        return user

    def _node_name(self, node_id: str) -> str | None:
        if node_id not in self._node_names:
            try:
                node = self.api.inspect_node(node_id)
            except APIError:
                return node_id
            self._node_names[node_id] = (node.get("Description") or {}).get("Hostname") \
                or node_id
        return self._node_names[node_id]

    # -- the interface --------------------------------------------------------------------
    def start(self, spec: JobSpec) -> JobStatus:
        options = service_options(
            spec, namespace=self.namespace, user=self._user_for(spec.image),
            network=self.network, constraints=self.constraints,
            gpu_resource=self.gpu_resource, pids_limit=self.pids_limit,
            stop_grace_seconds=self.stop_grace_seconds)
        try:
            service_id = self.api.create_service(**options)["ID"]
        except APIError as exc:
            if exc.status_code != 409:
                raise JobStartError(_explain(exc)) from None
            # Already created for this run (a start cut short): adopt it, never make another.
            service = self.api.inspect_service(options["name"])
            labels = (service.get("Spec") or {}).get("Labels")
            if run_id_of(labels) != spec.run_id:
                raise JobStartError(f"a service named {options['name']} exists but is not "
                                    "this run's") from None
            service_id = service["ID"]
            log.info("Run %s already has service %s; adopting it", spec.run_id, service_id)
        return self.status(service_id)

    def status(self, handle: str) -> JobStatus:
        try:
            service = self.api.inspect_service(handle)
            tasks = self.api.tasks(filters={"service": [handle]})
        except NotFound:
            return JobStatus(EngineState.MISSING, handle, reason="the service no longer exists")
        return status_of_service(service, tasks, node_name=self._node_name)

    def logs(self, handle: str) -> Iterator[bytes]:
        status = self.status(handle)
        if status.state == EngineState.MISSING:
            return
        sent = 0
        if not status.ended:
            stream = self._follow(handle)
            if stream is None:
                return
            ended = threading.Event()
            closer = threading.Thread(target=self._close_when_ended,
                                      args=(handle, stream, ended), daemon=True,
                                      name=f"swarm-logs-{handle[:12]}")
            closer.start()
            try:
                for chunk in stream:
                    if chunk.startswith(_ENGINE_LOG_NOTE):
                        continue
                    sent += len(chunk)
                    yield chunk
            finally:
                ended.set()
                stream.close()
        # What came after the stream was closed (or all of it, for a job already ended).
        rest = self._read_all(handle)
        if len(rest) > sent:
            yield rest[sent:]

    def _follow(self, handle: str) -> CancellableStream | None:
        # The SDK's service_logs gives a bare generator; the response is kept here so
        # that the stream can be closed from another thread once the task has ended.
        params = {"details": False, "follow": True, "stdout": True, "stderr": True,
                  "tail": "all", "timestamps": False}
        api = self.streams.api
        response = api._get(api._url("/services/{0}/logs", handle), params=params,
                            stream=True)
        try:
            api._raise_for_status(response)
        except NotFound:
            return None
        return CancellableStream(api._multiplexed_response_stream_helper(response), response)

    def _close_when_ended(self, handle: str, stream: CancellableStream,
                          done: threading.Event) -> None:
        while not done.wait(1.0):
            try:
                ended = self.status(handle).ended
            except DockerException:
                continue
            if ended:
                done.wait(LOG_SETTLE_SECONDS)
                break
        try:
            stream.close()
        except Exception:  # closing a stream that already ended is fine
            pass

    def _read_all(self, handle: str) -> bytes:
        try:
            chunks = self.api.service_logs(handle, stdout=True, stderr=True, follow=False)
            return b"".join(chunk for chunk in chunks if not chunk.startswith(_ENGINE_LOG_NOTE))
        except NotFound:
            return b""

    def stop(self, handle: str, grace_seconds: int) -> JobStatus:
        try:
            service = self.api.inspect_service(handle)
            tasks = self.api.tasks(filters={"service": [handle]})
        except NotFound:
            return JobStatus(EngineState.MISSING, handle, reason="the service no longer exists")
        current = status_of_service(service, tasks, node_name=self._node_name)
        if current.ended:
            return current
        task = latest_task(tasks)
        try:
            self._zero_completions(service, grace_seconds)
        except NotFound:
            return JobStatus(EngineState.MISSING, handle, reason="the service no longer exists")
        if task is None:
            return JobStatus(EngineState.EXITED, handle,
                             reason="stopped before the swarm scheduled it")
        # The swarm sends SIGTERM, waits the grace period, then kills; the stopped task
        # shows its exit code briefly before the swarm deletes it.
        deadline = time.monotonic() + grace_seconds + 15
        found: list[Mapping[str, Any]] = [task]
        while time.monotonic() < deadline:
            found = self.api.tasks(filters={"id": [task["ID"]]})
            if not found:
                return JobStatus(EngineState.EXITED, handle, reason="stopped on request; the "
                                 "swarm removed the task before reporting its exit code")
            status = status_from_task(found[0], handle=handle, node=current.node)
            if status.ended:
                return status
            time.sleep(0.1)
        return status_from_task(found[0], handle=handle, node=current.node)

    def _zero_completions(self, service: Mapping[str, Any], grace_seconds: int) -> None:
        """Ask the swarm to stop the job: no completions wanted, a new spec version."""
        for attempt in range(3):
            spec = service["Spec"]
            template = dict(spec["TaskTemplate"])
            template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
            template["ContainerSpec"] = {**template["ContainerSpec"],
                                         "StopGracePeriod": grace_seconds * 10**9}
            try:
                self.api.update_service(
                    service["ID"], version=service["Version"]["Index"],
                    task_template=template, name=spec["Name"],
                    labels={**(spec.get("Labels") or {}), LABEL_STOPPED: "true"},
                    mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 0}})
                return
            except NotFound:
                raise
            except APIError as exc:
                # "update out of sequence": someone changed it meanwhile; read it again.
                if attempt == 2 or "out of sequence" not in str(exc.explanation or exc):
                    raise
                service = self.api.inspect_service(service["ID"])

    def remove(self, handle: str) -> None:
        try:
            tasks = self.api.tasks(filters={"service": [handle]})
        except NotFound:
            return
        if any(str((t.get("Status") or {}).get("State")) not in ENDED_TASK_STATES
               for t in tasks):
            # Removing the service would leave a live task behind: stop it first.
            self.stop(handle, self.stop_grace_seconds)
        try:
            self.api.remove_service(handle)
        except NotFound:
            pass

    def list_jobs(self) -> dict[int, JobStatus]:
        services = self.api.services(filters={"label": self._label_filter()})
        tasks_of: dict[str, list[Mapping[str, Any]]] = {s["ID"]: [] for s in services}
        ids = list(tasks_of)
        for start in range(0, len(ids), TASK_CHUNK):
            chunk = ids[start:start + TASK_CHUNK]
            try:
                found = self.api.tasks(filters={"service": chunk})
            except NotFound:  # one of them went meanwhile: ask one by one
                found = []
                for service_id in chunk:
                    try:
                        found += self.api.tasks(filters={"service": [service_id]})
                    except NotFound:
                        tasks_of.pop(service_id, None)
            for task in found:
                if task.get("ServiceID") in tasks_of:
                    tasks_of[task["ServiceID"]].append(task)
        jobs: dict[int, JobStatus] = {}
        for service in services:
            run_id = run_id_of((service.get("Spec") or {}).get("Labels"))
            if run_id is not None and service["ID"] in tasks_of:
                jobs[run_id] = status_of_service(service, tasks_of[service["ID"]],
                                                 node_name=self._node_name)
        return jobs

    def watch(self, notify: Callable[[int], None], stop: threading.Event) -> None:
        watch_by_polling(self.list_jobs, notify, stop, interval=self.poll_seconds,
                         what="the swarm")

    def close(self) -> None:
        self.client.close()
        self.streams.close()


def _explain(exc: APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if "not a swarm manager" in str(text):
        return "the Docker engine of this pool is not a swarm manager"
    return f"the swarm refused the job: {text}"
