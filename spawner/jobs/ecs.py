"""How a run becomes a task on AWS ECS (Fargate or EC2), with its logs in CloudWatch.

- A task definition per image and resources, registered once and reused: its family name
  carries a hash of its content (``dockyard-<namespace>-<hash>``), so a second run with
  the same image and resources registers nothing, even after a restart.
- ``run_task`` on the pool's cluster with the run's command and environment as
  overrides, tagged with the run (``dockyard.run-id`` …) and ``startedBy`` the
  installation, with a client token made from the run id: ECS itself refuses to start a
  run twice, even when the answer to the first ``run_task`` was lost.
- Status from ``describe_tasks``, one call per 100 tasks for all the runs of the pool at
  once, at most every ``poll_seconds``; ECS stop codes and container exit codes become
  the run's outcome and reason.
- Logs from CloudWatch Logs (the awslogs driver): stream ``<prefix>/job/<task id>``.
- ``stop_task`` with a reason; reconcile lists the tasks ``startedBy`` the installation.

Credentials come only from the standard AWS chain (environment, shared files, instance or
task role); nothing here stores or shows them. Throttled calls are retried by botocore
(adaptive mode); a call still throttled after that backs off here and tries again, and
the status and log loops keep their last answer rather than fail.

The translations (run → task definition and ``run_task`` request, task → JobStatus) are
pure functions at the top, tested without AWS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Self

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoRegionError

from spawner.jobs.base import (
    LABEL_NAMESPACE,
    LABEL_RUN_ID,
    EngineState,
    JobBackend,
    JobSpec,
    JobStartError,
    JobStatus,
)
from spawner.jobs.config import BackendConfig, EcsOptions
from spawner.jobs.polling import watch_by_polling

log = logging.getLogger(__name__)

CONTAINER_NAME = "job"
DESCRIBE_BATCH = 100  # describe_tasks takes at most 100 tasks per call
OVERRIDES_MAX_CHARS = 8192  # ECS's limit on a run_task's overrides, JSON included
THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException",
                              "RequestLimitExceeded", "RequestLimitExceededException"})
#: botocore's own retries (adaptive: client-side rate limiting on top of backoff).
RETRY_CONFIG = {"mode": "adaptive", "total_max_attempts": 8}
PENDING_TASK_STATES = frozenset({"PROVISIONING", "PENDING", "ACTIVATING"})
STOPPING_TASK_STATES = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING"})
ENDED_TASK_STATES = frozenset({"STOPPED", "DELETED"})

#: Fargate's task sizes: CPU units → the memory (MB) each allows.
FARGATE_SIZES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (256, (512, 1024, 2048)),
    (512, tuple(range(1024, 4096 + 1, 1024))),
    (1024, tuple(range(2048, 8192 + 1, 1024))),
    (2048, tuple(range(4096, 16384 + 1, 1024))),
    (4096, tuple(range(8192, 30720 + 1, 1024))),
    (8192, tuple(range(16384, 61440 + 1, 4096))),
    (16384, tuple(range(32768, 122880 + 1, 8192))),
)


class EcsThrottled(Exception):
    """AWS kept throttling a call after every retry; the worker tries again later."""


# -- pure adapters -------------------------------------------------------------------------
def fargate_size(cpu: float, memory_mb: int) -> tuple[int, int]:
    """The smallest Fargate task size with at least ``cpu`` vCPUs and ``memory_mb``."""
    units = int(round(cpu * 1024))
    for size, memories in FARGATE_SIZES:
        if size < units:
            continue
        for memory in memories:
            if memory >= memory_mb:
                return size, memory
    raise JobStartError(f"no Fargate task size has {cpu:g} CPUs and {memory_mb} MB (the "
                        "largest is 16 vCPUs with 120 GB)")


def started_by(namespace: str) -> str:
    return f"dockyard-{namespace}"


def client_token(namespace: str, run_id: int) -> str:
    return f"dockyard-{namespace}-run-{run_id}"[:64]


def task_tags(spec: JobSpec, namespace: str) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in spec.labels(namespace).items()]


def task_definition_request(image: str, cpu: float, memory_mb: int, gpu: int,
                            options: EcsOptions, *,
                            stop_grace_seconds: int = BackendConfig.stop_grace_seconds,
                            ) -> dict[str, Any]:
    """``register_task_definition`` arguments (without family and tags) for one image
    and size; the run's command and environment come later, as overrides."""
    if gpu and options.on_fargate:
        raise JobStartError("Fargate offers no GPUs; use an ECS pool with the EC2 launch type")
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "essential": True,
        "memory": memory_mb,  # the hard limit, as for a Docker job
        "user": options.run_as_user,
        "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
        "stopTimeout": max(2, min(stop_grace_seconds, 120)),
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": options.log_group,
            "awslogs-stream-prefix": options.log_stream_prefix,
            **({"awslogs-region": options.region} if options.region else {}),
        }},
    }
    request: dict[str, Any] = {
        "containerDefinitions": [container],
        "networkMode": options.network_mode,
        "requiresCompatibilities": ["FARGATE" if options.on_fargate else "EC2"],
    }
    if options.on_fargate:
        units, memory = fargate_size(cpu, memory_mb)
        request["cpu"], request["memory"] = str(units), str(memory)
    else:
        container["cpu"] = int(round(cpu * 1024))
        # Fargate refuses this option; on EC2 it is the same hardening as Docker jobs.
        container["dockerSecurityOptions"] = ["no-new-privileges"]
        if gpu:
            container["resourceRequirements"] = [{"type": "GPU", "value": str(gpu)}]
    if options.task_role_arn:
        request["taskRoleArn"] = options.task_role_arn
    if options.execution_role_arn:
        request["executionRoleArn"] = options.execution_role_arn
    return request


def task_definition_family(namespace: str, request: Mapping[str, Any]) -> tuple[str, str]:
    """The family name that carries the content's hash, and the hash."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    return f"dockyard-{namespace}-{digest[:16]}", digest


def run_task_request(spec: JobSpec, task_definition_arn: str, options: EcsOptions,
                     namespace: str) -> dict[str, Any]:
    """``run_task`` arguments for one attempt of a run."""
    overrides = {"containerOverrides": [{
        "name": CONTAINER_NAME,
        "command": list(spec.argv),
        "environment": [{"name": key, "value": value} for key, value in sorted(spec.env.items())],
    }]}
    size = len(json.dumps(overrides, separators=(",", ":")))
    if size > OVERRIDES_MAX_CHARS:
        raise JobStartError(f"the run's command and environment take {size} characters; ECS "
                            f"takes at most {OVERRIDES_MAX_CHARS} for both (put long scripts "
                            "and data in the image or in storage)")
    request: dict[str, Any] = {
        "cluster": options.cluster,
        "taskDefinition": task_definition_arn,
        "count": 1,
        "overrides": overrides,
        "startedBy": started_by(namespace),
        "tags": task_tags(spec, namespace),
        "clientToken": client_token(namespace, spec.run_id),
    }
    if options.capacity_provider:
        request["capacityProviderStrategy"] = [{"capacityProvider": options.capacity_provider,
                                                "weight": 1}]
    else:
        request["launchType"] = options.launch_type
    if options.on_fargate and options.platform_version:
        request["platformVersion"] = options.platform_version
    if options.network_mode == "awsvpc":
        vpc: dict[str, Any] = {"subnets": list(options.subnets),
                               "assignPublicIp": "ENABLED" if options.assign_public_ip
                               else "DISABLED"}
        if options.security_groups:
            vpc["securityGroups"] = list(options.security_groups)
        request["networkConfiguration"] = {"awsvpcConfiguration": vpc}
    return request


def log_stream_name(prefix: str, task_arn: str) -> str:
    """The awslogs driver's stream: prefix/container-name/task-id."""
    return f"{prefix}/{CONTAINER_NAME}/{task_arn.rsplit('/', 1)[-1]}"


def explain_stop(stop_code: str | None, stopped_reason: str, container_reason: str) -> str:
    """Why ECS stopped a task, in words a run's owner can act on ('' for a plain exit)."""
    detail = "; ".join(part for part in (stopped_reason, container_reason) if part)
    if container_reason.startswith("OutOfMemoryError"):
        return f"out of memory: killed at the memory limit ({container_reason})"
    if stop_code == "TaskFailedToStart":
        return f"ECS could not start the task: {detail or 'no reason given'}"
    if stop_code == "EssentialContainerExited":
        return container_reason
    if stop_code == "UserInitiated":
        return f"stopped through the ECS API: {stopped_reason or 'no reason given'}"
    if stop_code == "ServiceSchedulerInitiated":
        return f"stopped by the ECS service scheduler: {stopped_reason or 'no reason given'}"
    if stop_code == "SpotInterruption":
        return "AWS reclaimed the Spot capacity running the task"
    if stop_code == "TerminationNotice":
        return "the instance running the task was being terminated"
    if stop_code == "InfrastructureHealth":
        return f"ECS stopped the task for an infrastructure problem: {detail or 'no detail'}"
    return detail


def _job_container(task: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = task.get("containers") or []
    for container in containers:
        if container.get("name") == CONTAINER_NAME:
            return container
    return containers[0] if containers else {}


def where_it_runs(task: Mapping[str, Any]) -> str | None:
    instance = task.get("containerInstanceArn")
    if instance:
        return instance
    if task.get("availabilityZone"):
        return f"Fargate, {task['availabilityZone']}"
    return None


def status_from_task(task: Mapping[str, Any]) -> JobStatus:
    """An ECS task (from describe_tasks) as an engine-neutral JobStatus."""
    handle = task.get("taskArn")
    last = str(task.get("lastStatus") or "")
    started = _time(task.get("startedAt"))
    node = where_it_runs(task)
    if last in ENDED_TASK_STATES:
        container = _job_container(task)
        code = container.get("exitCode")
        reason = explain_stop(task.get("stopCode"), task.get("stoppedReason") or "",
                              container.get("reason") or "")
        return JobStatus(EngineState.EXITED, handle, exit_code=code, reason=reason,
                         started_at=started, node=node,
                         finished_at=_time(task.get("stoppedAt") or
                                           task.get("executionStoppedAt")))
    if last == "RUNNING" or (last in STOPPING_TASK_STATES and started is not None):
        return JobStatus(EngineState.RUNNING, handle, started_at=started, node=node)
    reason = ""
    if task.get("pullStartedAt") and not task.get("pullStoppedAt"):
        reason = "pulling the image"
    return JobStatus(EngineState.PENDING, handle, reason=reason, node=node)


def missing_status(handle: str, reason: str) -> JobStatus:
    return JobStatus(EngineState.MISSING, handle,
                     reason=f"ECS has no record of the task ({reason})")


def run_id_of_task(task: Mapping[str, Any], namespace: str) -> int | None:
    tags = {tag.get("key"): tag.get("value") for tag in task.get("tags") or []}
    if tags.get(LABEL_NAMESPACE) != namespace:
        return None
    try:
        return int(tags.get(LABEL_RUN_ID) or "")
    except ValueError:
        return None


def _time(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)


# -- the engine ----------------------------------------------------------------------------
class EcsJobBackend(JobBackend):
    name = "ecs"
    #: Changes come from one batched describe per poll (ECS pushes no events here).
    has_events = True

    def __init__(self, namespace: str, dockyard_url: str, options: EcsOptions, *,
                 stop_grace_seconds: int = BackendConfig.stop_grace_seconds,
                 poll_seconds: float = BackendConfig.poll_seconds,
                 ecs: Any = None, logs: Any = None,
                 sleep: Callable[[float], None] = time.sleep,
                 throttle_attempts: int = 5, log_poll_seconds: float = 2.0,
                 log_settle_seconds: float = 2.0, stop_wait_seconds: float = 90.0) -> None:
        super().__init__(namespace, dockyard_url)
        self.options = options
        self.stop_grace_seconds = stop_grace_seconds
        self.poll_seconds = poll_seconds
        if ecs is None or logs is None:
            # Credentials and endpoint come from the standard chain (AWS_PROFILE,
            # AWS_ACCESS_KEY_ID, instance/task roles, AWS_ENDPOINT_URL …), never from Dockyard.
            session = boto3.session.Session(region_name=options.region or None)
            config = Config(retries=dict(RETRY_CONFIG), user_agent_extra="dockyard")
            ecs = ecs or session.client("ecs", config=config)
            logs = logs or session.client("logs", config=config)
        self.ecs = ecs
        self.cloudwatch = logs
        self._sleep = sleep
        self.throttle_attempts = throttle_attempts
        self.log_poll_seconds = log_poll_seconds
        self.log_settle_seconds = log_settle_seconds
        self.stop_wait_seconds = stop_wait_seconds
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._task_definitions: dict[str, str] = {}  # content hash → task definition ARN
        self._tasks: dict[str, JobStatus] = {}  # task ARN → last status seen
        self._fetched: dict[str, float] = {}  # task ARN → when
        self._runs: dict[int, str] = {}  # run id → task ARN
        self._handles: dict[str, int] = {}  # task ARN → run id
        self._stop_requested: dict[str, float] = {}

    @classmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        if config.ecs is None:
            raise ValueError("an ecs pool needs its options (cluster, log group …)")
        try:
            return cls(namespace, config.dockyard_url, config.ecs,
                       stop_grace_seconds=config.stop_grace_seconds,
                       poll_seconds=config.poll_seconds)
        except NoRegionError:
            raise ValueError("an ecs pool needs a region: set its 'region' or AWS_REGION") \
                from None

    # -- calls to AWS --------------------------------------------------------------------
    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One AWS call; throttling that outlasts botocore's retries backs off here."""
        for attempt in range(self.throttle_attempts):
            try:
                return method(**kwargs)
            except ClientError as exc:
                if _error_code(exc) not in THROTTLING_CODES:
                    raise
                if attempt == self.throttle_attempts - 1:
                    raise EcsThrottled(f"AWS throttled {method.__name__} "
                                       f"{self.throttle_attempts} times") from exc
                delay = min(8.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)
                log.info("AWS throttled %s; trying again in %.1f s", method.__name__, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _remember(self, run_id: int | None, status: JobStatus) -> None:
        if status.handle is None:
            return
        with self._lock:
            self._tasks[status.handle] = status
            self._fetched[status.handle] = time.monotonic()
            if run_id is not None:
                self._runs[run_id] = status.handle
                self._handles[status.handle] = run_id

    def _describe(self, handles: list[str], *, tags: bool = False) -> dict[str, tuple[
            JobStatus, dict[str, Any] | None]]:
        """Statuses of ``handles``, one describe_tasks call per 100."""
        found: dict[str, tuple[JobStatus, dict[str, Any] | None]] = {}
        for start in range(0, len(handles), DESCRIBE_BATCH):
            batch = handles[start:start + DESCRIBE_BATCH]
            kwargs: dict[str, Any] = {"cluster": self.options.cluster, "tasks": batch}
            if tags:
                kwargs["include"] = ["TAGS"]
            answer = self._call(self.ecs.describe_tasks, **kwargs)
            for task in answer.get("tasks") or []:
                found[task["taskArn"]] = (status_from_task(task), task)
            for failure in answer.get("failures") or []:
                arn = failure.get("arn") or ""
                found[arn] = (missing_status(arn, failure.get("reason") or "no reason"), None)
            for arn in batch:  # neither described nor failed: as good as missing
                found.setdefault(arn, (missing_status(arn, "not in the answer"), None))
        return found

    def _refresh(self, handle: str) -> None:
        """Describe every task this backend follows (the asked one included), at most
        once per poll interval however many threads ask at once."""
        with self._refresh_lock:
            with self._lock:
                fetched = self._fetched.get(handle)
                if fetched is not None and time.monotonic() - fetched < self.poll_seconds:
                    return
                handles = sorted(set(self._handles) | {handle})
            for _arn, (status, _task) in self._describe(handles).items():
                self._remember(None, status)

    def _task_definition(self, spec: JobSpec) -> str:
        request = task_definition_request(spec.image, spec.cpu, spec.memory_mb, spec.gpu,
                                          self.options,
                                          stop_grace_seconds=self.stop_grace_seconds)
        family, digest = task_definition_family(self.namespace, request)
        with self._lock:
            known = self._task_definitions.get(digest)
        if known:
            return known
        try:
            found = self._call(self.ecs.describe_task_definition, taskDefinition=family)
            definition = found["taskDefinition"]
            if definition.get("status", "ACTIVE") == "ACTIVE":
                arn = str(definition["taskDefinitionArn"])
                with self._lock:
                    self._task_definitions[digest] = arn
                return arn
        except ClientError as exc:
            if _error_code(exc) not in ("ClientException", "InvalidParameterException"):
                raise
        try:
            registered = self._call(
                self.ecs.register_task_definition, family=family, **request,
                tags=[{"key": LABEL_NAMESPACE, "value": self.namespace},
                      {"key": "dockyard.content-hash", "value": digest}])
        except ClientError as exc:
            raise JobStartError(f"ECS refused the task definition: {_error_message(exc)}") \
                from None
        arn = str(registered["taskDefinition"]["taskDefinitionArn"])
        log.info("Registered ECS task definition %s", arn)
        with self._lock:
            self._task_definitions[digest] = arn
        return arn

    # -- the interface --------------------------------------------------------------------
    def start(self, spec: JobSpec) -> JobStatus:
        with self._lock:
            known = self._runs.get(spec.run_id)
        if known is not None:
            return self.status(known)
        request = run_task_request(spec, self._task_definition(spec), self.options,
                                   self.namespace)
        try:
            answer = self._call(self.ecs.run_task, **request)
        except ClientError as exc:
            raise JobStartError(f"ECS refused the task: {_error_message(exc)}") from None
        tasks = answer.get("tasks") or []
        if not tasks:
            reasons = ", ".join(f"{f.get('reason')}{': ' + f['detail'] if f.get('detail') else ''}"
                                for f in answer.get("failures") or []) or "no reason given"
            if "RESOURCE:" in reasons:
                raise JobStartError(f"no container instance of cluster {self.options.cluster} "
                                    f"has room for the task ({reasons})")
            raise JobStartError(f"ECS did not start the task: {reasons}")
        status = status_from_task(tasks[0])
        self._remember(spec.run_id, status)
        return status

    def status(self, handle: str) -> JobStatus:
        try:
            self._refresh(handle)
        except EcsThrottled:
            with self._lock:
                last = self._tasks.get(handle)
            if last is None:
                raise
            log.info("ECS throttled; keeping the last status of %s", handle)
            return last
        with self._lock:
            return self._tasks[handle]

    def logs(self, handle: str) -> Iterator[bytes]:
        stream = log_stream_name(self.options.log_stream_prefix, handle)
        token: str | None = None
        ended = False
        while True:
            page = self._log_page(stream, token)
            events = (page or {}).get("events") or []
            for event in events:
                yield (str(event.get("message", "")) + "\n").encode()
            if page is not None:
                token = page.get("nextForwardToken") or token
            if events:
                continue  # there may be more right away
            if ended:
                return
            try:
                status = self.status(handle)
            except EcsThrottled:
                self._sleep(self.log_poll_seconds)
                continue
            if status.ended:
                # The driver's last lines reach CloudWatch shortly after the task stops.
                ended = True
                self._sleep(self.log_settle_seconds)
            else:
                self._sleep(self.log_poll_seconds)

    def _log_page(self, stream: str, token: str | None) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {"logGroupName": self.options.log_group,
                                  "logStreamName": stream, "startFromHead": True}
        if token:
            kwargs["nextToken"] = token
        try:
            return self._call(self.cloudwatch.get_log_events, **kwargs)
        except EcsThrottled:
            return None
        except ClientError as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return None  # the stream appears with the job's first line
            raise

    def stop(self, handle: str, grace_seconds: int) -> JobStatus:
        now = time.monotonic()
        with self._lock:
            asked = self._stop_requested.get(handle)
        if asked is None or now - asked > self.stop_wait_seconds:
            try:
                self._call(self.ecs.stop_task, cluster=self.options.cluster, task=handle,
                           reason="Dockyard: the run was cancelled or timed out")
            except ClientError as exc:
                if _error_code(exc) == "InvalidParameterException" and \
                        "not found" in _error_message(exc).lower():
                    return missing_status(handle, _error_message(exc))
                raise
            with self._lock:
                self._stop_requested[handle] = now
        # ECS sends SIGTERM, waits the task definition's stopTimeout, then kills; report
        # what ECS says once the task has stopped, never an assumed outcome.
        deadline = now + grace_seconds + self.stop_wait_seconds
        status = self.status(handle)
        while not status.ended and time.monotonic() < deadline:
            self._sleep(self.poll_seconds)
            status = self.status(handle)
        return status

    def remove(self, handle: str) -> None:
        """ECS forgets stopped tasks by itself; a task still running is stopped first."""
        with self._lock:
            last = self._tasks.get(handle)
        if last is not None and not last.ended:
            try:
                self.stop(handle, self.stop_grace_seconds)
            except (ClientError, EcsThrottled) as exc:
                log.warning("Could not stop ECS task %s: %s", handle, exc)
                return
        with self._lock:
            run_id = self._handles.pop(handle, None)
            if run_id is not None and self._runs.get(run_id) == handle:
                del self._runs[run_id]
            self._tasks.pop(handle, None)
            self._fetched.pop(handle, None)
            self._stop_requested.pop(handle, None)

    def list_jobs(self) -> dict[int, JobStatus]:
        arns: list[str] = []
        paginator = self.ecs.get_paginator("list_tasks")
        for desired in ("RUNNING", "STOPPED"):
            pages = paginator.paginate(cluster=self.options.cluster,
                                       startedBy=started_by(self.namespace),
                                       desiredStatus=desired)
            for page in pages:
                arns += page.get("taskArns") or []
        jobs: dict[int, JobStatus] = {}
        for _arn, (status, task) in self._describe(sorted(set(arns)), tags=True).items():
            run_id = run_id_of_task(task, self.namespace) if task else None
            if run_id is None:
                continue
            # A run has one task; should ECS list two, the live one is the run's.
            if run_id not in jobs or (jobs[run_id].ended and not status.ended):
                jobs[run_id] = status
            self._remember(run_id, status)
        return jobs

    def _followed_jobs(self) -> dict[int, JobStatus]:
        """The tasks this backend follows, described in batches: the watcher's listing."""
        with self._lock:
            handles = dict(self._handles)
        if not handles:
            return {}
        described = self._describe(sorted(handles))
        jobs: dict[int, JobStatus] = {}
        for arn, (status, _task) in described.items():
            run_id = handles.get(arn)
            if run_id is not None:
                self._remember(run_id, status)
                jobs[run_id] = status
        return jobs

    def watch(self, notify: Callable[[int], None], stop: threading.Event) -> None:
        watch_by_polling(self._followed_jobs, notify, stop, interval=self.poll_seconds,
                         what=f"ECS cluster {self.options.cluster}")
