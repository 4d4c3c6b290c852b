"""How a run becomes a container on one Docker engine.

The translations (run spec → container options, container state → JobStatus) are pure
functions at the top of this file, tested without an engine; ``DockerJobBackend`` is the
thin part that talks to the engine.

Containers are named ``dockyard-<namespace>-run-<id>``: the engine refuses a second
container of the same name, so a run can never be started twice, even by a worker that
restarted half-way through a start. Labels carry the namespace and run id so that
reconcile finds every job of this installation.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Self

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import _create_container_args
from docker.types import DeviceRequest

from spawner.environment import CONTAINER_DATA_ROOT
from spawner.jobs.base import (
    LABEL_NAMESPACE,
    LABEL_ROLE,
    LABEL_RUN_ID,
    EngineState,
    JobBackend,
    JobSpec,
    JobStartError,
    JobStatus,
)
from spawner.jobs.config import BackendConfig

log = logging.getLogger(__name__)

#: Who a job runs as when its image names no user (or names root): never root.
DEFAULT_JOB_USER = "1000:1000"
_RFC3339 = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$"
)


# -- pure adapters -------------------------------------------------------------------------
def container_name(namespace: str, run_id: int) -> str:
    return f"dockyard-{namespace}-run-{run_id}"


def job_user(image_user: str | None) -> str:
    """The image's own user unless it is root (or unset), in which case uid 1000."""
    user = (image_user or "").strip()
    name = user.split(":", 1)[0]
    if not name or name in ("root", "0"):
        return DEFAULT_JOB_USER
    return user


def container_options(
    spec: JobSpec, *, namespace: str, network: str, user: str, pids_limit: int,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: the run's command in exec form, its
    limits, and the same hardening as notebook containers. A local data root (a host
    directory) is the one host path a job sees, at the place notebooks see it too."""
    options: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.argv),
        "name": container_name(namespace, spec.run_id),
        "labels": spec.labels(namespace),
        # Images that bring tini as their entrypoint run under Docker's init here; as a
        # subreaper it still reaps and stops warning that it is not PID 1.
        "environment": {"TINI_SUBREAPER": "1", **spec.env},
        "user": user,
        # A tiny init as PID 1 forwards SIGTERM to the job and reaps its children.
        "init": True,
        "network": network,
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",  # no swap beyond the limit
        "nano_cpus": int(round(spec.cpu * 1e9)),
        "pids_limit": pids_limit,
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
    }
    if data_root:
        options["volumes"] = {data_root: {"bind": CONTAINER_DATA_ROOT, "mode": "rw"}}
    if spec.gpu:
        options["device_requests"] = [DeviceRequest(count=spec.gpu, capabilities=[["gpu"]])]
    return options


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds; the zero time means "never"."""
    if not value or value.startswith("0001-01-01"):
        return None
    match = _RFC3339.match(value)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    text = base + (f".{fraction[:6].ljust(6, '0')}" if fraction else "")
    text += "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(text).astimezone(UTC)


def status_from_inspect(attrs: Mapping[str, Any]) -> JobStatus:
    """A container's inspect document as an engine-neutral JobStatus."""
    state = attrs.get("State") or {}
    handle = attrs.get("Id")
    started = parse_docker_time(state.get("StartedAt"))
    finished = parse_docker_time(state.get("FinishedAt"))
    docker_status = state.get("Status", "")
    if docker_status in ("running", "paused", "restarting"):
        return JobStatus(EngineState.RUNNING, handle, started_at=started)
    if docker_status in ("exited", "dead"):
        code = state.get("ExitCode")
        reasons = []
        if state.get("OOMKilled"):
            limit = (attrs.get("HostConfig") or {}).get("Memory") or 0
            shown = f" of {limit // (1024 * 1024)} MB" if limit else ""
            reasons.append(f"out of memory: killed at the limit{shown}")
        elif killed_by(code):
            # Stopped from outside the job: a cancel or timeout, `docker stop`, or the
            # engine itself shutting down or restarting.
            reasons.append(f"killed by {killed_by(code)}")
        if state.get("Error"):
            reasons.append(str(state["Error"]))
        if docker_status == "dead":
            reasons.append("the engine reports the container dead")
        return JobStatus(
            EngineState.EXITED, handle, exit_code=code, reason="; ".join(reasons),
            started_at=started, finished_at=finished,
        )
    # "created" (not started yet) and "removing" are both not-running-yet / going away.
    if docker_status == "removing":
        return JobStatus(EngineState.MISSING, handle, reason="the container is being removed")
    return JobStatus(EngineState.PENDING, handle)


def killed_by(exit_code: int | None) -> str | None:
    """The signal an exit code of 128+N reports (as shells and the container's init do)."""
    if exit_code is None or not 128 < exit_code < 128 + signal.NSIG:
        return None
    try:
        return signal.Signals(exit_code - 128).name
    except ValueError:
        return None


def run_id_of(labels: Mapping[str, str] | None) -> int | None:
    try:
        return int((labels or {}).get(LABEL_RUN_ID, ""))
    except ValueError:
        return None


# -- the engine ----------------------------------------------------------------------------
class DockerJobBackend(JobBackend):
    name = "docker"
    has_events = True

    def __init__(
        self,
        namespace: str,
        dockyard_url: str,
        *,
        network: str = "bridge",
        pids_limit: int = 1024,
        pool_size: int = 16,
        client: docker.DockerClient | None = None,
        data_root: str | None = None,
    ) -> None:
        super().__init__(namespace, dockyard_url)
        self.network = network
        self.data_root = data_root
        self.pids_limit = pids_limit
        self.client = client or docker.from_env(timeout=60, max_pool_size=pool_size)
        # Log and event streams may stay quiet for hours: no read timeout on them.
        self.streams = docker.from_env(timeout=None, max_pool_size=pool_size)
        self._image_users: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        return cls(namespace, config.dockyard_url, network=config.network,
                   pids_limit=config.pids_limit, pool_size=config.pool_size,
                   data_root=config.data_root)

    def _label_filter(self) -> list[str]:
        return [f"{LABEL_NAMESPACE}={self.namespace}", f"{LABEL_ROLE}=job"]

    def _user_for(self, image: str) -> str:
        cached = self._image_users.get(image)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        try:
            config = self.client.images.get(image).attrs.get("Config") or {}
        except ImageNotFound:
            raise JobStartError(
                f"image {image} is not on the Docker engine; an admin must build or load it "
                "(see the Images page)"
            ) from None
        user = job_user(config.get("User"))
        self._image_users[image] = (time.monotonic(), user)
        return user

    def start(self, spec: JobSpec) -> JobStatus:
        name = container_name(self.namespace, spec.run_id)
        options = container_options(spec, namespace=self.namespace, network=self.network,
                                    user=self._user_for(spec.image), pids_limit=self.pids_limit,
                                    data_root=self.data_root)
        api = self.client.api
        try:
            # The low-level calls (create, start, inspect) spare the high-level client's
            # extra inspect after create: three engine calls per start.
            container_id = api.create_container(
                **_create_container_args({**options, "version": api._version}))["Id"]
            docker_state = "created"
        except ImageNotFound:
            raise JobStartError(f"image {spec.image} is not on the Docker engine") from None
        except APIError as exc:
            if exc.status_code != 409:
                raise JobStartError(_explain(exc)) from None
            # Already created for this run (a start cut short): adopt it, never make another.
            attrs = api.inspect_container(name)
            if run_id_of((attrs.get("Config") or {}).get("Labels")) != spec.run_id:
                raise JobStartError(f"a container named {name} exists but is not this run's") \
                    from None
            container_id, docker_state = attrs["Id"], attrs["State"]["Status"]
            log.info("Run %s already has container %s; adopting it", spec.run_id,
                     container_id[:12])
        if docker_state == "created":
            try:
                self._join_networks(container_id, spec.networks)
                api.start(container_id)
            except APIError as exc:
                # Nothing ran; leave no half-made container behind.
                self._remove_quietly(container_id)
                raise JobStartError(_explain(exc)) from None
        return self.status(container_id)

    def _join_networks(self, container_id: str, networks: tuple[tuple[str, str], ...]) -> None:
        """Connect the created container to each (network, alias) before it starts, so
        the job finds its cluster from its first line."""
        for network, alias in networks:
            try:
                self.client.api.connect_container_to_network(container_id, network,
                                                             aliases=[alias])
            except APIError as exc:
                if "already exists" not in str(exc.explanation or exc):  # a start cut short
                    raise

    def status(self, handle: str) -> JobStatus:
        try:
            return status_from_inspect(self.client.api.inspect_container(handle))
        except NotFound:
            return JobStatus(EngineState.MISSING, handle, reason="the container no longer exists")

    def logs(self, handle: str) -> Iterator[bytes]:
        try:
            stream = self.streams.api.logs(handle, stdout=True, stderr=True, stream=True,
                                           follow=True)
        except NotFound:
            return
        try:
            yield from stream
        except NotFound:
            return
        finally:
            stream.close()

    def stop(self, handle: str, grace_seconds: int) -> JobStatus:
        try:
            self.client.api.stop(handle, timeout=grace_seconds)
        except NotFound:
            return JobStatus(EngineState.MISSING, handle, reason="the container no longer exists")
        return self.status(handle)

    def remove(self, handle: str) -> None:
        self._remove_quietly(handle)

    def _remove_quietly(self, handle: str) -> None:
        try:
            self.client.api.remove_container(handle, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def list_jobs(self) -> dict[int, JobStatus]:
        found: dict[int, JobStatus] = {}
        listed = self.client.api.containers(all=True, filters={"label": self._label_filter()})
        for summary in listed:
            run_id = run_id_of(summary.get("Labels"))
            if run_id is None:
                continue
            try:
                attrs = self.client.api.inspect_container(summary["Id"])
                found[run_id] = status_from_inspect(attrs)
            except NotFound:
                continue
        return found

    def watch(self, notify: Callable[[int], None], stop: threading.Event) -> None:
        filters = {"type": "container", "label": self._label_filter(),
                   "event": ["start", "die", "oom", "destroy"]}
        while not stop.is_set():
            try:
                events = self.streams.api.events(decode=True, filters=filters)
            except DockerException as exc:
                log.warning("Docker events unavailable (%s); retrying", exc)
                stop.wait(2)
                continue
            closer = threading.Thread(target=_close_when, args=(stop, events), daemon=True)
            closer.start()
            try:
                for event in events:
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    run_id = run_id_of(attributes)
                    if run_id is not None:
                        notify(run_id)
            except Exception as exc:  # a dropped stream: reconnect; the worker's sync covers gaps
                if not stop.is_set():
                    log.warning("Docker event stream ended (%s); reconnecting", exc)
            stop.wait(0.5)

    def close(self) -> None:
        self.client.close()
        self.streams.close()


def _close_when(stop: threading.Event, events: Any) -> None:
    stop.wait()
    try:
        events.close()
    except Exception:  # closing a dead stream is fine
        pass


def _explain(exc: APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if "could not select device driver" in str(text):
        return "no GPU is available on this Docker engine"
    return f"the Docker engine refused the job: {text}"
