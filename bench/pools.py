"""Job pools benchmark: Dockyard's Swarm and ECS pools against the same engine calls by hand.

Both sides are measured in the same run.

1. Swarm (a single-node swarm the bench starts and leaves, under the tests' swarm lock).
   Dockyard: a real ``dockyard up`` (hub, proxy, the web service under gunicorn, the worker
   at the shipped DOCKYARD_WORKER_POLL_SECONDS, SQLite as with ``make up``) with two swarm
   pools: ``swarm`` at the shipped poll interval (0.5 s) and ``swarm-2s`` polling every
   2 s. A user signed up through the hub's form submits ``sleep 2`` (0.1 CPU, 32 MB) with
   a JupyterHub API token, ``POST /services/dockyard/api/v1/runs`` through the hub's
   proxy, then polls the run every 0.2 s until it has ended. submit → RUNNING runs from
   the POST to the worker's RUNNING record, submit → ended to its SUCCEEDED record (both
   read back from the run's events). Only runs that reached RUNNING and ended SUCCEEDED
   count; every final state is checked. By hand: the Docker SDK creates the same job
   service (Dockyard's own service options: user, init, limits and reservations, pids
   limit, dropped capabilities, a replicated job) and polls its task every 50 ms until it
   runs, then until it has ended, then removes the service; only tasks that completed with
   exit code 0 count. The three sides take turns, one run at a time.
2. ECS (a moto server): the calls and time one status round costs the worker for N active
   runs: the backend's batched describe_tasks (one call per 100 runs, at its shipped poll
   interval) against one describe_tasks per run.

    .venv/bin/python bench/pools.py [--quick] [--runs 10] [--tasks 250] [--only swarm|ecs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results, percentile, summary  # noqa: E402
from dockyard.settings import Settings  # noqa: E402

IMAGE = "debian:bookworm-slim"
USER = "alice"
SLEEP = 2
CPU, MEMORY_MB = 0.1, 32
#: Each swarm pool Dockyard gets, with its poll interval as shown (None: as shipped).
POOLS: dict[str, float | None] = {"swarm": None, "swarm-2s": 2.0}
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
TASK_ENDED = ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")
RESULTS = Results("pools")


def _epoch(text: str) -> float:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


# -- 1. swarm ----------------------------------------------------------------------------------
class BySdk:
    """The job service made by hand with Dockyard's own service options."""

    def __init__(self, engine: Any, namespace: str) -> None:
        from spawner.jobs.docker import job_user

        self.engine = engine
        self.namespace = namespace
        self.user = job_user((engine.images.get(IMAGE).attrs.get("Config") or {}).get("User"))
        self.next_id = 0

    def run(self) -> tuple[float, float] | None:
        """(seconds until the task runs, until it has ended), or None if it did not
        complete with exit code 0."""
        from spawner.jobs.base import JobSpec
        from spawner.jobs.swarm import latest_task, service_options

        self.next_id += 1
        spec = JobSpec(run_id=self.next_id, attempt=1, owner=USER, image=IMAGE,
                       argv=("sleep", str(SLEEP)), cpu=CPU, memory_mb=MEMORY_MB)
        options = service_options(spec, namespace=self.namespace, user=self.user)
        api = self.engine.api
        started = time.monotonic()
        service = api.create_service(**options)["ID"]
        running: float | None = None
        try:
            deadline = started + 120
            while time.monotonic() < deadline:
                task = latest_task(api.tasks(filters={"service": [service]})) or {}
                state = (task.get("Status") or {}).get("State", "")
                if running is None and state in ("running", *TASK_ENDED):
                    running = time.monotonic() - started
                if state in TASK_ENDED:
                    ended = time.monotonic() - started
                    running = ended if running is None else running
                    code = ((task.get("Status") or {}).get("ContainerStatus") or {}).get(
                        "ExitCode")
                    return (running, ended) if state == "complete" and code == 0 else None
                time.sleep(0.05)
            return None
        finally:
            api.remove_service(service)


class ThroughApi:
    """Runs submitted to Dockyard's API as the signed-up user."""

    def __init__(self, hub: Any, token: str) -> None:
        self.hub = hub
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def run(self, pool: str) -> tuple[float, float] | None:
        """(seconds until RUNNING, until SUCCEEDED) as the worker recorded them, or None
        if the run did not reach RUNNING and end SUCCEEDED."""
        submitted = time.time()
        response = self.http.post(self.hub.service("api/v1/runs"), timeout=60, json={
            "image": IMAGE, "command": ["sleep", str(SLEEP)], "cpu": CPU,
            "memory_mb": MEMORY_MB, "pool": pool})
        if response.status_code != 201:
            raise RuntimeError(f"submit refused: {response.status_code} {response.text[:300]}")
        run_id = response.json()["id"]
        deadline = time.monotonic() + 120
        status = ""
        while time.monotonic() < deadline:
            status = self.http.get(self.hub.service(f"api/v1/runs/{run_id}"),
                                   timeout=30).json()["status"]
            if status in FINAL:
                break
            time.sleep(0.2)
        events = self.http.get(self.hub.service(f"api/v1/runs/{run_id}/events"),
                               timeout=30).json()["events"]
        at = {event["to_status"]: _epoch(event["at"]) for event in events}
        if status != "SUCCEEDED" or "RUNNING" not in at or "SUCCEEDED" not in at:
            print(f"   run {run_id} on {pool} not counted: {status or 'not ended'}, "
                  f"events {[event['to_status'] for event in events]}")
            return None
        return at["RUNNING"] - submitted, at["SUCCEEDED"] - submitted


def swarm_bench(runs: int) -> None:
    import docker

    from dockyard.models import ImageStatus
    from spawner.jobs.base import LABEL_NAMESPACE
    from tests.jobs.conftest import add_images
    from tests.support.hubproc import RunningHub, start_hub
    from tests.support.swarm import single_node_swarm

    shipped_poll = Settings.model_fields["worker_poll_seconds"].default
    print(f"\n1. Swarm: `sleep {SLEEP}`, one run at a time, {runs} each; the worker looks "
          f"for queued runs every {shipped_poll} s (shipped)")
    engine = docker.from_env(timeout=120)
    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-pools-"))
    namespace = f"bp{uuid.uuid4().hex[:8]}"
    by_hand_namespace = f"bph{uuid.uuid4().hex[:8]}"
    hub: RunningHub | None = None
    try:
        with single_node_swarm(engine):
            try:
                pools = {name: {"backend": "swarm", **({"poll_seconds": poll} if poll else {})}
                         for name, poll in POOLS.items()}
                hub = start_hub(home / "home", DOCKYARD_JOB_POOLS=json.dumps(pools),
                                DOCKYARD_JOB_NAMESPACE=namespace,
                                DOCKYARD_WORKER_POLL_SECONDS=str(shipped_poll),
                                DOCKYARD_LOG_LEVEL="WARNING")
                add_images(f"sqlite:///{home / 'home' / 'dockyard.sqlite'}",
                           (IMAGE, True, ImageStatus.READY))
                user = hub.create_user(USER)
                ours = ThroughApi(hub, hub.hub_token(user, USER))
                by_hand = BySdk(engine, by_hand_namespace)
                # Warm-up: the swarm's first task and the worker's first pass.
                by_hand.run()
                for pool in POOLS:
                    ours.run(pool)
                measured: dict[str, list[tuple[float, float]]] = {"sdk": [], **{p: [] for p
                                                                               in POOLS}}
                for _ in range(runs):
                    for side in measured:
                        result = by_hand.run() if side == "sdk" else ours.run(side)
                        if result is not None:
                            measured[side].append(result)
            finally:
                if hub is not None:
                    hub.stop()
                for service in engine.services.list(filters={"label": [
                        f"{LABEL_NAMESPACE}={namespace}"]}) + engine.services.list(
                        filters={"label": [f"{LABEL_NAMESPACE}={by_hand_namespace}"]}):
                    service.remove()
    finally:
        engine.close()
        shutil.rmtree(home, ignore_errors=True)

    raw = measured["sdk"]
    if not raw:
        raise RuntimeError("no job service completed by hand")
    print(f"   by hand (SDK, 50 ms polls)  → running  {summary([r for r, _ in raw])}")
    print(f"                               → ended    {summary([e for _, e in raw])}")
    for pool, poll in POOLS.items():
        ours_runs = measured[pool]
        shown = f"{poll:g} s" if poll else "0.5 s, shipped"
        print(f"   Dockyard {pool} (poll {shown})")
        print(f"       submit → RUNNING    {summary([r for r, _ in ours_runs])}")
        print(f"       submit → SUCCEEDED  {summary([e for _, e in ours_runs])}")
        if not ours_runs:
            continue
        note = (f"{len(ours_runs)} of {runs} runs counted ({len(raw)} by hand); pool polls "
                f"every {shown}")
        for index, what, raw_what in ((0, "submit → RUNNING", "task running"),
                                      (1, f"submit → SUCCEEDED (sleep {SLEEP})",
                                       "task complete")):
            for fraction, label in ((0.5, "p50"), (0.95, "p95")):
                ours_value = percentile([r[index] for r in ours_runs], fraction)
                raw_value = percentile([r[index] for r in raw], fraction)
                RESULTS.add(f"swarm pool {pool}: {what}, {label}", ours_value, unit="s",
                            baseline=raw_value,
                            baseline_name=f"SDK create_service until {raw_what} (50 ms polls)",
                            note=note)
                if fraction == 0.5:
                    print(f"       {what} p50: {ours_value / raw_value:.2f}× by hand, "
                          f"{ours_value - raw_value:+.2f} s")


# -- 2. ECS ------------------------------------------------------------------------------------
def ecs_bench(tasks: int) -> None:
    import boto3
    import requests

    from spawner.jobs.base import JobSpec
    from spawner.jobs.config import EcsOptions
    from spawner.jobs.ecs import EcsJobBackend
    from tests.support.ports import free_ports

    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                requests.get(endpoint + "/moto-api/", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        requests.post(f"{endpoint}/moto-api/state-manager/set-transition", data=json.dumps(
            {"model_name": "ecs::task", "transition": {"progression": "manual",
                                                       "times": 10**6}}), timeout=5)
        ecs = boto3.client("ecs")
        ec2 = boto3.client("ec2")
        ecs.create_cluster(clusterName="bench")
        image_id = ec2.describe_images()["Images"][0]["ImageId"]
        for _ in range(max(1, tasks // 16 + 1)):  # moto places 16 small tasks per instance
            instance = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)[
                "Instances"][0]["InstanceId"]
            ecs.register_container_instance(cluster="bench", instanceIdentityDocument=json.dumps(
                {"instanceId": instance, "region": "us-east-1"}))
        options = EcsOptions(cluster="bench", launch_type="EC2", log_group="/bench",
                             region="us-east-1")  # the default poll interval
        backend = EcsJobBackend("bench", "http://dockyard/", options)
        handles = []
        for run_id in range(tasks):
            status = backend.start(JobSpec(run_id=run_id, attempt=1, owner="bench",
                                           image=IMAGE, argv=("true",), cpu=0.01,
                                           memory_mb=16))
            assert status.handle
            handles.append(status.handle)
        calls: list[str] = []
        backend.ecs.meta.events.register("before-call.ecs.DescribeTasks",
                                         lambda **_: calls.append("describe"))
        time.sleep(backend.poll_seconds + 0.1)  # what the worker's next pass finds
        started = time.monotonic()
        for handle in handles:  # what the worker's pass asks, one run at a time
            backend.status(handle)
        batched = time.monotonic() - started
        batched_calls = len(calls)
        calls.clear()
        started = time.monotonic()
        for handle in handles:
            ecs.describe_tasks(cluster="bench", tasks=[handle])
        naive = time.monotonic() - started
        print(f"\n2. ECS status of {tasks} runs: {batched_calls} describe_tasks calls in "
              f"{batched:.2f} s, against {tasks} calls in {naive:.2f} s one per run "
              f"(ratio {batched / naive:.2f}× time, {batched_calls / tasks:.3f}× calls)")
        one_per_run = f"describe_tasks once per run ({tasks} runs)"
        RESULTS.add(f"ECS: one status round of {tasks} active runs, time", batched, unit="s",
                    baseline=naive, baseline_name=one_per_run, note="moto server")
        RESULTS.add(f"ECS: one status round of {tasks} active runs, calls", batched_calls,
                    unit="calls", baseline=tasks, baseline_name=one_per_run)
    finally:
        process.terminate()
        process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 swarm runs per side, 50 ECS tasks")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=250)
    parser.add_argument("--only", choices=["swarm", "ecs"])
    args: Any = parser.parse_args()
    if args.quick:
        args.runs, args.tasks = 3, 50
    # ``make bench`` stops a bench that runs too long with SIGTERM: clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only in (None, "swarm"):
        swarm_bench(args.runs)
    if args.only in (None, "ecs"):
        ecs_bench(args.tasks)
    RESULTS.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
