"""How a cluster becomes containers on one Docker engine: a bridge network of its own, the
head container (alias ``head``) and one container per worker.

Names and labels make every call idempotent: the engine refuses a second container of a
name, so ``start`` finds what a cut-short start made and completes it; ``remove`` and
``list_clusters`` find every container and network of a cluster by its labels. The
translations live in ``commands.py``; this is the thin part that talks to the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Self

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import _create_container_args

from spawner.clusters.base import (
    CLUSTER_ROLES,
    ROLE_HEAD,
    ROLE_NETWORK,
    ROLE_WORKER,
    ClusterBackend,
    ClusterPhase,
    ClusterSpec,
    ClusterStartError,
    ClusterStatus,
    cluster_address,
    cluster_id_of,
)
from spawner.clusters.commands import (
    WORKER_RESTARTS,
    ProbeReport,
    cluster_filter,
    container_options,
    dashboard_port,
    head_name,
    network_labels,
    network_name,
    owner_and_run,
    read_probe,
    worker_name,
)
from spawner.jobs.base import LABEL_ROLE
from spawner.jobs.config import BackendConfig
from spawner.jobs.docker import job_user, status_from_inspect

log = logging.getLogger(__name__)

#: Grace a worker gets to leave its cluster (Ray and Spark deregister on SIGTERM).
WORKER_STOP_SECONDS = 5
#: The lines of an ended container's log read for its last words, and how much of the
#: last one a reason keeps.
LOG_LINES, LAST_WORDS_CHARS = 20, 240
#: The first engine API whose healthchecks know a start interval.
START_INTERVAL_API = (1, 44)


def phase_of_head(head_state: Mapping[str, Any], probe: ProbeReport) -> tuple[ClusterPhase, str]:
    """The cluster's phase from its head container's state and its last probe."""
    status = status_from_inspect({"State": head_state})
    docker_status = head_state.get("Status", "")
    if docker_status in ("exited", "dead"):
        why = status.reason or f"exit code {status.exit_code}"
        return ClusterPhase.FAILED, f"the head ended ({why})"
    if docker_status != "running":
        return ClusterPhase.STARTING, "the head is being created"
    if probe.health == "healthy":
        return ClusterPhase.READY, ""
    if probe.health == "unhealthy":
        return ClusterPhase.FAILED, ("the head stopped answering"
                                     + (f": {probe.error}" if probe.error else ""))
    if probe.error:
        return ClusterPhase.STARTING, f"waiting for the head: {probe.error}"
    return ClusterPhase.STARTING, f"{probe.workers} worker(s) registered"


def ended_for_good(attrs: Mapping[str, Any]) -> str:
    """How a cluster container (its inspect attributes) ended for good, "" while it runs,
    starts or waits to be restarted. The engine decides at the exit whether to restart a
    container (its restart policy, its restarts left, not stopped by hand) and then shows
    it "restarting"; so an "exited" one will not come back."""
    state = attrs.get("State") or {}
    if state.get("Status") not in ("exited", "dead"):
        return ""
    status = status_from_inspect({"State": state})
    why = status.reason or f"exit code {status.exit_code}"
    restarts = int(attrs.get("RestartCount") or 0)
    return f"ended ({why})" + (f" after {restarts} restart{'s' if restarts != 1 else ''}"
                               if restarts else "")


def ended_workers(workers: Mapping[str, Mapping[str, Any]]) -> str:
    """A sentence on the workers (by name, with their inspect attributes) that ended for
    good, "" when none did."""
    ended = [f"{name} {why}" for name, attrs in sorted(workers.items())
             if (why := ended_for_good(attrs))]
    return "; ".join(ended)


def restarted_workers(workers: Mapping[str, Mapping[str, Any]]) -> str:
    """A sentence on the workers the engine restarted (or is about to), "" when none."""
    restarted = []
    for name, attrs in sorted(workers.items()):
        count = int(attrs.get("RestartCount") or 0)
        if count and not ended_for_good(attrs):
            restarted.append(f"{name} restarted {count} of {WORKER_RESTARTS} time"
                             f"{'s' if WORKER_RESTARTS != 1 else ''}")
    return "; ".join(restarted)


def cluster_phase(head_state: Mapping[str, Any], probe: ProbeReport,
                  workers: Mapping[str, Mapping[str, Any]]) -> tuple[ClusterPhase, str]:
    """The cluster's phase from its head and its workers (by name, with their inspect
    attributes). A starting cluster one of whose workers ended for good cannot become
    ready: it failed now rather than at the start timeout. A ready one keeps serving
    the workers it has; the reason names those that ended."""
    phase, reason = phase_of_head(head_state, probe)
    if phase == ClusterPhase.READY:
        return phase, ended_workers(workers)
    if phase == ClusterPhase.STARTING:
        if ended := ended_workers(workers):
            return ClusterPhase.FAILED, f"a worker could not start: {ended}"
        if restarted := restarted_workers(workers):
            return phase, f"{reason}; {restarted}"
    return phase, reason


class DockerClusterBackend(ClusterBackend):
    name = "docker"

    def __init__(self, namespace: str, *, pids_limit: int = 1024, pool_size: int = 4,
                 data_root: str | None = None,
                 client: docker.DockerClient | None = None) -> None:
        super().__init__(namespace)
        self.pids_limit = pids_limit
        self.data_root = data_root
        self.client = client or docker.from_env(timeout=60, max_pool_size=pool_size)
        self._start_interval: bool | None = None

    @classmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        return cls(namespace, pids_limit=config.pids_limit,
                   pool_size=min(config.pool_size, 4), data_root=config.data_root)

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    # -- shared by both engines -----------------------------------------------------------
    def driver_network(self, cluster_id: int) -> str:
        return network_name(self.namespace, cluster_id)

    def engine_has_start_interval(self) -> bool:
        if self._start_interval is None:
            # The client's API version (the engine ignores what an older one asks for).
            version = str(self.api._version)
            self._start_interval = tuple(int(p) for p in version.split(".")[:2]) \
                >= START_INTERVAL_API
        return self._start_interval

    def user_for(self, image: str) -> str:
        try:
            config = self.client.images.get(image).attrs.get("Config") or {}
        except ImageNotFound:
            raise ClusterStartError(
                f"image {image} is not on the Docker engine; an admin must build or load it "
                "(see the Images page)") from None
        return job_user(config.get("User"))

    def cluster_networks(self, cluster_id: int | None = None) -> list[dict[str, Any]]:
        return self.api.networks(filters={"label": cluster_filter(self.namespace, cluster_id,
                                                                  ROLE_NETWORK)})

    def ensure_network(self, spec: ClusterSpec, **options: Any) -> str:
        """The cluster's network, made when missing (never a second of the same name)."""
        name = network_name(self.namespace, spec.cluster_id)
        if self._network_id(name) is None:
            try:
                self.api.create_network(name, labels=network_labels(spec, self.namespace),
                                        check_duplicate=True, **options)
            except APIError as exc:
                if self._network_id(name) is None:  # not a race with another start
                    raise ClusterStartError(f"the engine refused the cluster's network: "
                                            f"{_explain(exc)}") from None
        return name

    def _network_id(self, name: str) -> str | None:
        # The engine's name filter matches substrings: keep the exact name only.
        for network in self.api.networks(names=[name]):
            if network.get("Name") == name:
                return str(network["Id"])
        return None

    def remove_network(self, name: str, *, wait_seconds: float = 0) -> None:
        """Disconnect whatever is still on the network (drivers, notebook servers) and
        remove it; on a swarm the tasks' endpoints go a moment after their services."""
        deadline = time.monotonic() + wait_seconds
        while True:
            network_id = self._network_id(name)
            if network_id is None:
                return
            try:
                attrs = self.api.inspect_network(network_id)
                for container_id in attrs.get("Containers") or {}:
                    try:
                        self.api.disconnect_container_from_network(container_id, network_id,
                                                                   force=True)
                    except APIError:
                        pass  # gone meanwhile, or a swarm task's endpoint: it goes with it
                self.api.remove_network(network_id)
                return
            except NotFound:
                return
            except APIError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def attach(self, cluster_id: int, labels: Mapping[str, str]) -> list[str]:
        network = network_name(self.namespace, cluster_id)
        network_id = self._network_id(network)
        if network_id is None or not labels:
            return []
        attached = []
        wanted = [f"{key}={value}" for key, value in labels.items()]
        forged_by_image: dict[str, bool] = {}
        for summary in self.api.containers(filters={"label": wanted, "status": "running"}):
            networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
            if network in networks:
                continue
            # A container's labels include its image's: an image can claim to be anyone's
            # notebook server. Jobs, clusters and inspections are never one (they carry a
            # role), and a label the image itself sets was not given by the spawner.
            if LABEL_ROLE in (summary.get("Labels") or {}):
                continue
            image_id = str(summary.get("ImageID") or "")
            if image_id not in forged_by_image:
                forged_by_image[image_id] = self._image_sets_any(image_id, labels)
            if forged_by_image[image_id]:
                log.warning("Not attaching container %s to cluster %s: its image sets %s",
                            summary["Id"][:12], cluster_id, ", ".join(labels))
                continue
            name = (summary.get("Names") or [summary["Id"]])[0].lstrip("/")
            try:
                self.api.connect_container_to_network(summary["Id"], network_id)
            except NotFound:
                continue  # the container went meanwhile
            except APIError as exc:
                if "already exists" in str(exc.explanation or exc):
                    continue
                raise
            attached.append(name)
        return attached

    def _image_sets_any(self, image_id: str, labels: Mapping[str, str]) -> bool:
        try:
            image_labels = (self.api.inspect_image(image_id).get("Config") or {}).get("Labels")
        except NotFound:
            return True  # nothing to vouch for the labels
        return any(key in (image_labels or {}) for key in labels)

    # -- the interface --------------------------------------------------------------------
    def start(self, spec: ClusterSpec) -> ClusterStatus:
        user = self.user_for(spec.image)
        try:
            self.ensure_network(spec, driver="bridge")
            self._ensure_container(spec, ROLE_HEAD, 0, user)
            for index in range(1, spec.workers + 1):
                self._ensure_container(spec, ROLE_WORKER, index, user)
        except ClusterStartError:
            # Nothing of a cluster the engine refused is kept half made.
            self.remove(spec.cluster_id)
            raise
        return self.status(spec.cluster_id)

    def _ensure_container(self, spec: ClusterSpec, role: str, index: int, user: str) -> None:
        options = container_options(
            spec, role, namespace=self.namespace, user=user, pids_limit=self.pids_limit,
            index=index, data_root=self.data_root,
            start_interval=self.engine_has_start_interval())
        api = self.api
        try:
            container_id = api.create_container(
                **_create_container_args({**options, "version": api._version}))["Id"]
            docker_state = "created"
        except ImageNotFound:
            raise ClusterStartError(f"image {spec.image} is not on the Docker engine") from None
        except APIError as exc:
            if exc.status_code != 409:
                raise ClusterStartError(_explain(exc)) from None
            # Made by a start cut short: adopt it, never make another.
            attrs = api.inspect_container(options["name"])
            if cluster_id_of((attrs.get("Config") or {}).get("Labels")) != spec.cluster_id:
                raise ClusterStartError(f"a container named {options['name']} exists but is "
                                        "not this cluster's") from None
            container_id, docker_state = attrs["Id"], attrs["State"]["Status"]
        if docker_state == "created":
            try:
                api.start(container_id)
            except APIError as exc:
                raise ClusterStartError(_explain(exc)) from None

    def _containers(self, cluster_id: int | None = None) -> list[dict[str, Any]]:
        listed = self.api.containers(all=True,
                                     filters={"label": cluster_filter(self.namespace, cluster_id)})
        return [c for c in listed if (c.get("Labels") or {}).get(LABEL_ROLE) in CLUSTER_ROLES]

    def status(self, cluster_id: int) -> ClusterStatus:
        containers = self._containers(cluster_id)
        network = network_name(self.namespace, cluster_id)
        if not containers and not self.cluster_networks(cluster_id):
            return ClusterStatus(ClusterPhase.MISSING, cluster_id,
                                 reason="the engine has no container or network of it")
        owner, run_id = owner_and_run((containers[0].get("Labels") if containers else None)
                                      or self._network_labels(network))
        head: dict[str, Any] | None = None
        workers: dict[str, dict[str, Any]] = {}
        for summary in containers:
            labels = summary.get("Labels") or {}
            try:
                attrs = self.api.inspect_container(summary["Id"])
            except NotFound:
                continue
            if labels.get(LABEL_ROLE) == ROLE_HEAD:
                head = attrs
            else:
                workers[attrs["Name"].lstrip("/")] = attrs
        common = {"network": network, "workers_wanted": len(workers), "owner": owner,
                  "run_id": run_id}
        if head is None:
            return ClusterStatus(ClusterPhase.FAILED, cluster_id,
                                 reason="the head container is missing", **common)
        kind = _kind_of(head)
        probe = read_probe(head.get("State"))
        phase, reason = cluster_phase(head.get("State") or {}, probe, workers)
        if phase == ClusterPhase.FAILED:
            # What the container that ended by itself (not by a signal) wrote last: Ray's
            # or Spark's own error, e.g. a Ray worker that timed out during startup.
            ended = [head] if ended_for_good(head) else \
                [attrs for _, attrs in sorted(workers.items()) if ended_for_good(attrs)][:1]
            if ended and int((ended[0].get("State") or {}).get("ExitCode") or 0) < 128 \
                    and (last := self._last_words(ended[0]["Id"])):
                reason = f"{reason}; last output: {last}"
        dashboard = None
        if phase == ClusterPhase.READY and (probe.dashboard or kind == "spark"):
            ip = (((head.get("NetworkSettings") or {}).get("Networks") or {})
                  .get(network) or {}).get("IPAddress")
            if ip:
                dashboard = f"http://{ip}:{dashboard_port(kind)}"
        # The container's name: the engine resolves it on every network the head is on.
        address = cluster_address(kind, head_name(self.namespace, cluster_id))
        return ClusterStatus(phase, cluster_id, address=address,
                             dashboard_url=dashboard, workers_ready=probe.workers,
                             busy=probe.busy, reason=reason, **common)

    def _last_words(self, container_id: str) -> str:
        """The last line a container wrote, shortened; "" when it wrote none."""
        try:
            output = self.api.logs(container_id, stdout=True, stderr=True, tail=LOG_LINES)
        except (NotFound, APIError):
            return ""
        lines = [line.strip() for line in output.decode(errors="replace").splitlines()]
        last = next((line for line in reversed(lines) if line), "")
        return last if len(last) <= LAST_WORDS_CHARS else last[:LAST_WORDS_CHARS - 1] + "…"

    def _network_labels(self, name: str) -> dict[str, str]:
        network_id = self._network_id(name)
        if network_id is None:
            return {}
        try:
            return self.api.inspect_network(network_id).get("Labels") or {}
        except NotFound:
            return {}

    def scale(self, cluster_id: int, spec: ClusterSpec) -> ClusterStatus:
        present = {}
        for summary in self._containers(cluster_id):
            if (summary.get("Labels") or {}).get(LABEL_ROLE) == ROLE_WORKER:
                present[summary["Names"][0].lstrip("/")] = summary["Id"]
        names = {worker_name(self.namespace, cluster_id, k): k
                 for k in range(1, max(spec.workers, len(present)) + 1)}
        user = self.user_for(spec.image)
        for name, index in sorted(names.items(), key=lambda item: item[1]):
            if index <= spec.workers and name not in present:
                self._ensure_container(spec, ROLE_WORKER, index, user)
        # The highest numbers go first, so that the names stay 1..N.
        for name, container_id in sorted(present.items(),
                                         key=lambda item: -names.get(item[0], 10**6)):
            if names.get(name, 10**6) > spec.workers:
                self._stop_and_remove(container_id)
        return self.status(cluster_id)

    def _stop_and_remove(self, container_id: str) -> None:
        try:
            self.api.stop(container_id, timeout=WORKER_STOP_SECONDS)
            self.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def remove(self, cluster_id: int) -> None:
        for summary in self._containers(cluster_id):
            try:
                self.api.remove_container(summary["Id"], force=True)
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code != 409:
                    raise
        for network in self.cluster_networks(cluster_id):
            self.remove_network(network["Name"])

    def list_clusters(self) -> dict[int, ClusterStatus]:
        ids = {cluster_id_of(c.get("Labels")) for c in self._containers()}
        ids |= {cluster_id_of(n.get("Labels")) for n in self.cluster_networks()}
        return {cluster_id: self.status(cluster_id) for cluster_id in ids
                if cluster_id is not None}

    def close(self) -> None:
        self.client.close()


def _kind_of(head: Mapping[str, Any]) -> str:
    env = (head.get("Config") or {}).get("Env") or []
    for item in env:
        if item.startswith("DOCKYARD_CLUSTER_KIND="):
            return item.split("=", 1)[1]
    return "ray"


def _explain(exc: APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return f"the Docker engine refused the cluster: {text}"
