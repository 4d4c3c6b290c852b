"""How a cluster becomes Swarm services: an attachable overlay network of its own, a head
service (one replica, host name and alias ``head``, DNS round robin so that the name is
the task's own address) and one replicated workers service spread over the nodes.

The head's healthcheck is the same probe as on a Docker engine; the swarm runs it on
whichever node the head lands. A task with a healthcheck is reported ``running``, and gets
its DNS name, only once it is healthy: the workers need that name to register, so here the
head is healthy as soon as it serves, and readiness is the probe's "ready" (the wanted
workers registered once), read from the head's container when it runs on this engine, else
the count of running worker tasks. A driver's presence is known only in the first case.

The translations (cluster → service specs) are pure functions at the top;
``SwarmClusterBackend`` is the thin part that talks to the manager, sharing the network
and attach handling of the Docker engine's backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Self

import docker
from docker.errors import APIError, NotFound
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Mount,
    NetworkAttachmentConfig,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from spawner.clusters.base import (
    HEAD_ALIAS,
    ROLE_HEAD,
    ROLE_WORKER,
    ClusterPhase,
    ClusterSpec,
    ClusterStartError,
    ClusterStatus,
    cluster_address,
    cluster_id_of,
)
from spawner.clusters.commands import (
    ProbeReport,
    cluster_env,
    cluster_filter,
    head_argv,
    head_name,
    healthcheck,
    network_name,
    owner_and_run,
    ray_sizes,
    read_probe,
    worker_argv,
    workers_service_name,
)
from spawner.clusters.docker import DockerClusterBackend
from spawner.jobs.base import LABEL_ROLE
from spawner.jobs.config import BackendConfig
from spawner.jobs.swarm import (
    CONTAINER_ROLE,
    ENDED_TASK_STATES,
    PENDING_TASK_STATES,
    latest_task,
)

#: How often the swarm replaces a failed head or worker task (per replica, over the
#: service's life): a worker that lost a race on a busy node joins on a second try, and
#: one that cannot start at all ends the cluster's start instead of looping.
TASK_RESTARTS = 3
RESTART_DELAY_SECONDS = 2
_FAILED_TASK_STATES = frozenset({"failed", "rejected"})
#: Time the swarm gives a head or worker between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 5
#: Time the tasks' endpoints get to leave the network once their services are removed.
NETWORK_RELEASE_SECONDS = 60
_SERVICE_LABEL = "com.docker.swarm.service.name"


# -- pure adapters -------------------------------------------------------------------------
def service_options(spec: ClusterSpec, role: str, *, namespace: str, user: str,
                    constraints: Iterable[str] = (), pids_limit: int = 1024,
                    start_interval: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``APIClient.create_service`` of the head or the workers:
    reservations equal to limits, the hardening services allow, Ray's shm as a tmpfs, the
    head's probe, and the cluster's network (the head with the alias ``head``)."""
    network = network_name(namespace, spec.cluster_id)
    if role == ROLE_HEAD:
        name, argv, replicas = head_name(namespace, spec.cluster_id), head_argv(spec), 1
        cpu, memory_mb = spec.head_cpu, spec.head_memory_mb
    else:
        name, argv = workers_service_name(namespace, spec.cluster_id), worker_argv(spec)
        cpu, memory_mb, replicas = spec.worker_cpu, spec.worker_memory_mb, spec.workers
    labels = spec.labels(namespace, role)
    memory = memory_mb * 1024 * 1024
    nano_cpus = int(round(cpu * 1e9))
    resources = Resources(cpu_limit=nano_cpus, mem_limit=memory, cpu_reservation=nano_cpus,
                          mem_reservation=memory)
    resources["Limits"]["Pids"] = pids_limit
    mounts = []
    if spec.kind == "ray":
        mounts.append(Mount("/dev/shm", "", type="tmpfs",
                            tmpfs_size=ray_sizes(memory_mb).shm_bytes))
    container = ContainerSpec(
        spec.image, command=argv, env=cluster_env(spec, role), user=user,
        hostname=HEAD_ALIAS if role == ROLE_HEAD else None,
        # Task containers carry another role, so that a Docker pool's cluster backend on
        # the same engine never takes them for its own.
        labels={**labels, LABEL_ROLE: CONTAINER_ROLE}, mounts=mounts,
        init=True, cap_drop=["ALL"], stop_grace_period=STOP_GRACE_SECONDS * 10**9,
        healthcheck=healthcheck(spec.kind, spec.workers, start_interval=start_interval,
                                gate=False) if role == ROLE_HEAD else None,
    )
    placement = Placement(constraints=list(constraints) or None,
                          preferences=[("spread", "node.id")] if role == ROLE_WORKER else None)
    template = TaskTemplate(
        container, resources=resources, placement=placement,
        restart_policy=RestartPolicy(condition="on-failure",
                                     delay=RESTART_DELAY_SECONDS * 10**9,
                                     max_attempts=TASK_RESTARTS),
        networks=[NetworkAttachmentConfig(
            network, aliases=[HEAD_ALIAS] if role == ROLE_HEAD else None)],
    )
    return {
        "task_template": template,
        "name": name,
        "labels": labels,
        "mode": ServiceMode("replicated", replicas=replicas),
        # No virtual IP: the head's name resolves to the task itself, the address the
        # master binds and the workers dial.
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


def head_phase(task: Mapping[str, Any] | None, probe: ProbeReport | None, *,
               workers_running: int = 0, wanted: int = 0) -> tuple[ClusterPhase, str]:
    """The cluster's phase from the head service's current task and, when its container
    runs on this engine, its last probe (else the count of running worker tasks)."""
    if task is None:
        return ClusterPhase.STARTING, "waiting for the swarm to schedule the head"
    status = task.get("Status") or {}
    state = str(status.get("State", "")).lower()
    error = status.get("Err") or ""
    if state == "running":
        if probe is not None and probe.health == "unhealthy":
            return ClusterPhase.FAILED, ("the head stopped answering"
                                         + (f": {probe.error}" if probe.error else ""))
        if probe.ready if probe is not None else workers_running >= wanted:
            return ClusterPhase.READY, ""
        registered = probe.workers if probe is not None else workers_running
        return ClusterPhase.STARTING, f"{registered} of {wanted} worker(s) registered"
    if state in PENDING_TASK_STATES:
        if probe is not None and probe.error:
            return ClusterPhase.STARTING, f"waiting for the head: {probe.error}"
        if state == "starting" and probe is not None:
            return ClusterPhase.STARTING, f"{probe.workers} worker(s) registered"
        return ClusterPhase.STARTING, error or f"the head's task is {state}"
    desired = str(task.get("DesiredState", "")).lower()
    if desired == "running":  # the swarm is about to replace it
        return ClusterPhase.STARTING, f"the head's task is {state}: {error}".rstrip(": ")
    return ClusterPhase.FAILED, f"the head's task {state}" + (f": {error}" if error else "")


def _task_error(task: Mapping[str, Any]) -> str:
    status = task.get("Status") or {}
    return str(status.get("Err") or status.get("State") or "failed")


def _replaced_or_running(task: Mapping[str, Any]) -> bool:
    """The task runs, or will: the swarm has not given it up."""
    state = str((task.get("Status") or {}).get("State", "")).lower()
    desired = str(task.get("DesiredState", "")).lower()
    return state not in ENDED_TASK_STATES or desired in ("running", "ready")


def lost_workers(tasks: Iterable[Mapping[str, Any]]) -> str:
    """A sentence on the worker replicas (slots) the swarm gave up: the slot's last task
    failed or was rejected and the swarm made no other, its restarts being used up; ""
    when none. A slot removed by a scale down ends "shutdown", never as a failure."""
    slots: dict[Any, list[Mapping[str, Any]]] = {}
    for task in tasks:
        slots.setdefault(task.get("Slot"), []).append(task)
    lost = []
    for slot, slot_tasks in sorted(slots.items(), key=lambda item: int(item[0] or 0)):
        last = latest_task(slot_tasks)
        if last is None or any(_replaced_or_running(t) for t in slot_tasks):
            continue
        if str((last.get("Status") or {}).get("State", "")).lower() in _FAILED_TASK_STATES:
            tries = sum(1 for t in slot_tasks if str((t.get("Status") or {}).get(
                "State", "")).lower() in _FAILED_TASK_STATES)
            lost.append(f"worker {slot} failed {tries} time{'s' if tries != 1 else ''}, "
                        f"last: {_task_error(last)}")
    return "; ".join(lost)


def earlier_failures(tasks: Iterable[Mapping[str, Any]],
                     current: Mapping[str, Any] | None) -> str:
    """A sentence on the head's failed tasks before the current one, "" when none."""
    failed = [t for t in tasks if t is not current and str(
        (t.get("Status") or {}).get("State", "")).lower() in _FAILED_TASK_STATES]
    last = latest_task(failed)
    if last is None:
        return ""
    return (f"the head failed {len(failed)} time{'s' if len(failed) != 1 else ''} and "
            f"was restarted, last: {_task_error(last)}")


# -- the engine ----------------------------------------------------------------------------
class SwarmClusterBackend(DockerClusterBackend):
    name = "swarm"

    def __init__(self, namespace: str, *, constraints: Iterable[str] = (),
                 pids_limit: int = 1024, pool_size: int = 4,
                 client: docker.DockerClient | None = None) -> None:
        super().__init__(namespace, pids_limit=pids_limit, pool_size=pool_size, client=client)
        self.constraints = tuple(constraints)

    @classmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        return cls(namespace, constraints=config.constraints, pids_limit=config.pids_limit,
                   pool_size=min(config.pool_size, 4))

    def _services(self, cluster_id: int | None = None) -> list[dict[str, Any]]:
        return self.api.services(filters={"label": cluster_filter(self.namespace, cluster_id)})

    def start(self, spec: ClusterSpec) -> ClusterStatus:
        user = self.user_for(spec.image)
        try:
            self.ensure_network(spec, driver="overlay", attachable=True, scope="swarm")
            for role in (ROLE_HEAD, ROLE_WORKER):
                self._ensure_service(spec, role, user)
        except ClusterStartError:
            self.remove(spec.cluster_id)
            raise
        return self.status(spec.cluster_id)

    def _ensure_service(self, spec: ClusterSpec, role: str, user: str) -> None:
        options = service_options(spec, role, namespace=self.namespace, user=user,
                                  constraints=self.constraints, pids_limit=self.pids_limit,
                                  start_interval=self.engine_has_start_interval())
        try:
            self.api.create_service(**options)
        except APIError as exc:
            if exc.status_code != 409:
                raise ClusterStartError(_explain(exc)) from None
            # Made by a start cut short: adopt it, never make another.
            service = self.api.inspect_service(options["name"])
            if cluster_id_of((service.get("Spec") or {}).get("Labels")) != spec.cluster_id:
                raise ClusterStartError(f"a service named {options['name']} exists but is "
                                        "not this cluster's") from None

    def status(self, cluster_id: int) -> ClusterStatus:
        services = {s["Spec"]["Name"]: s for s in self._services(cluster_id)}
        network = network_name(self.namespace, cluster_id)
        if not services and not self.cluster_networks(cluster_id):
            return ClusterStatus(ClusterPhase.MISSING, cluster_id,
                                 reason="the swarm has no service or network of it")
        head = services.get(head_name(self.namespace, cluster_id))
        workers = services.get(workers_service_name(self.namespace, cluster_id))
        labels = ((head or workers or {}).get("Spec") or {}).get("Labels") \
            or self._network_labels(network)
        owner, run_id = owner_and_run(labels)
        wanted = int((((workers or {}).get("Spec") or {}).get("Mode") or {})
                     .get("Replicated", {}).get("Replicas") or 0)
        common = {"network": network, "workers_wanted": wanted, "owner": owner,
                  "run_id": run_id}
        if head is None:
            return ClusterStatus(ClusterPhase.FAILED, cluster_id,
                                 reason="the head service is missing", **common)
        env = head["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
        kind = "spark" if "DOCKYARD_CLUSTER_KIND=spark" in env else "ray"
        head_tasks = self._tasks(head["ID"])
        # The live task when there is one: a failed one is current only once replaced by
        # none (its restarts used up).
        task = latest_task([t for t in head_tasks if _replaced_or_running(t)] or head_tasks)
        probe = self._local_probe(task)
        tasks = self._tasks(workers["ID"]) if workers is not None else []
        running = sum(1 for t in tasks if (t.get("Status") or {}).get("State") == "running")
        phase, reason = head_phase(task, probe, workers_running=running, wanted=wanted)
        if phase == ClusterPhase.STARTING:
            # A start whose outcome is known ends now, not at the start timeout.
            if lost := lost_workers(tasks):
                phase, reason = ClusterPhase.FAILED, f"a worker could not start: {lost}"
            elif earlier := earlier_failures(head_tasks, task):
                reason = f"{reason}; {earlier}"
        ready, busy = (probe.workers, probe.busy) if probe is not None else (running, None)
        # The head service's name: without a virtual IP (dnsrr) it resolves to the task
        # itself on the overlay, as the alias "head" does.
        address = cluster_address(kind, head_name(self.namespace, cluster_id))
        return ClusterStatus(phase, cluster_id, address=address,
                             workers_ready=ready, busy=busy, reason=reason, **common)

    def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        try:
            return self.api.tasks(filters={"service": [service_id]})
        except NotFound:
            return []

    def _local_probe(self, task: Mapping[str, Any] | None) -> ProbeReport | None:
        """The head's last probe when its container runs on this engine."""
        container_id = ((task or {}).get("Status") or {}).get("ContainerStatus", {}) \
            .get("ContainerID")
        if not container_id:
            return None
        try:
            attrs = self.api.inspect_container(container_id)
        except NotFound:
            return None
        return read_probe(attrs.get("State"))

    def scale(self, cluster_id: int, spec: ClusterSpec) -> ClusterStatus:
        name = workers_service_name(self.namespace, cluster_id)
        for attempt in range(3):
            try:
                service = self.api.inspect_service(name)
            except NotFound:
                raise ClusterStartError("the cluster's workers service is gone") from None
            try:
                self.api.update_service(service["ID"], version=service["Version"]["Index"],
                                        mode=ServiceMode("replicated", replicas=spec.workers),
                                        fetch_current_spec=True)
                break
            except APIError as exc:
                # "update out of sequence": someone changed it meanwhile; read it again.
                if attempt == 2 or "out of sequence" not in str(exc.explanation or exc):
                    raise ClusterStartError(_explain(exc)) from None
        return self.status(cluster_id)

    def remove(self, cluster_id: int) -> None:
        names = []
        for service in self._services(cluster_id):
            names.append(service["Spec"]["Name"])
            try:
                self.api.remove_service(service["ID"])
            except NotFound:
                pass
        # The tasks' containers on this engine go a moment after their services; the
        # network can go once no endpoint is left on it.
        deadline = time.monotonic() + NETWORK_RELEASE_SECONDS
        while names and self._task_containers(names) and time.monotonic() < deadline:
            time.sleep(0.5)
        for network in self.cluster_networks(cluster_id):
            self.remove_network(network["Name"], wait_seconds=NETWORK_RELEASE_SECONDS)

    def _task_containers(self, service_names: list[str]) -> bool:
        for name in service_names:
            if self.api.containers(all=True, filters={"label": f"{_SERVICE_LABEL}={name}"}):
                return True
        return False

    def list_clusters(self) -> dict[int, ClusterStatus]:
        ids = {cluster_id_of((s.get("Spec") or {}).get("Labels")) for s in self._services()}
        ids |= {cluster_id_of(n.get("Labels")) for n in self.cluster_networks()}
        return {cluster_id: self.status(cluster_id) for cluster_id in ids
                if cluster_id is not None}


def _explain(exc: APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if "not a swarm manager" in str(text):
        return "the Docker engine of this pool is not a swarm manager"
    return f"the swarm refused the cluster: {text}"
