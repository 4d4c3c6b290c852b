"""Job pools benchmark, as ratios against a raw baseline in the same run.

1. Swarm: submit → RUNNING of trivial runs in a Swarm pool (the worker in-process,
   SQLite), one at a time, against creating the same job service directly with the
   Docker SDK and polling its task until it runs. Measured with the pool's default
   poll interval and with a short one (the watcher's listing is what notices "running").
2. ECS (moto server): the calls and time one status round costs the worker for N active
   runs — the backend's batched describe_tasks (one call per 100) against one
   describe_tasks per run.

    .venv/bin/python bench/pools.py [--runs 10] [--tasks 250]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IMAGE = "debian:bookworm-slim"


def p50(values: list[float]) -> float:
    return statistics.median(values)


def swarm_bench(runs: int) -> None:
    import docker

    from spawner.jobs.base import JobSpec
    from spawner.jobs.swarm import service_options
    from tests.support.swarm import single_node_swarm

    engine = docker.from_env(timeout=120)
    with single_node_swarm(engine):
        raw: list[float] = []
        for index in range(runs):
            spec = JobSpec(run_id=900000 + index, attempt=1, owner="bench", image=IMAGE,
                           argv=("sleep", "5"), cpu=0.1, memory_mb=32)
            options = service_options(spec, namespace=f"bench{uuid.uuid4().hex[:6]}",
                                      user="1000:1000")
            started = time.monotonic()
            service = engine.api.create_service(**options)["ID"]
            while True:
                tasks = engine.api.tasks(filters={"service": [service]})
                if tasks and tasks[0]["Status"]["State"] == "running":
                    break
                time.sleep(0.05)
            raw.append(time.monotonic() - started)
            engine.api.remove_service(service)  # (removal leaves the task: sleep ends it)
        print(f"swarm raw create_service → task running: p50 {p50(raw):.2f} s "
              f"(n={runs})")
        for poll in (None, 2.0):
            ours = dockyard_swarm(runs, poll)
            shown = poll or "default 0.5"
            print(f"swarm pool (poll_seconds={shown}) submit → RUNNING: p50 {p50(ours):.2f} s, "
                  f"ratio {p50(ours) / p50(raw):.2f}× raw, +{p50(ours) - p50(raw):.2f} s")
    engine.close()


def dockyard_swarm(runs: int, poll: float | None) -> list[float]:
    from dockyard.db import make_engine, make_session_factory
    from dockyard.jobs.schemas import JobLimits, RunIn
    from dockyard.jobs.service import create_run
    from dockyard.migrate import upgrade
    from dockyard.models import Image, ImageStatus, Run, RunState
    from dockyard.settings import Settings
    from dockyard.web.auth import User
    from dockyard.worker.loop import Worker

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-pools-"))
    settings = Settings(home=home, job_backend="local", worker_poll_seconds=0.05,
                        job_namespace=f"bp{uuid.uuid4().hex[:8]}",
                        job_dockyard_url="http://127.0.0.1:9/services/dockyard/",
                        job_pools={"swarm": {"backend": "swarm", "poll_seconds": poll}
                                   if poll else {"backend": "swarm"}})
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        session.add(Image(reference=IMAGE, for_jobs=True, for_notebooks=False,
                          status=ImageStatus.READY, created_by="bench"))
        session.commit()
    worker = Worker(settings)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    limits = JobLimits.from_settings(settings)
    latencies: list[float] = []
    try:
        for _ in range(runs):
            started = time.monotonic()
            with sessions() as session:
                run_id = create_run(session, User("bench"), RunIn(
                    image=IMAGE, command=["sleep", "2"], cpu=0.1, memory_mb=32, pool="swarm"),
                    limits).id
            while True:
                with sessions() as session:
                    status = session.get(Run, run_id).status  # type: ignore[union-attr]
                if status != RunState.QUEUED and status != RunState.PENDING:
                    break
                time.sleep(0.02)
            latencies.append(time.monotonic() - started)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions() as session:
                if session.query(Run).filter(Run.status.in_(
                        [RunState.QUEUED, RunState.PENDING, RunState.RUNNING])).count() == 0:
                    break
            time.sleep(0.2)
    finally:
        stop.set()
        worker.wake.set()
        thread.join(60)
        worker.close()
        engine.dispose()
    return latencies


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
        print(f"ecs status of {tasks} runs: {batched_calls} describe_tasks calls in "
              f"{batched:.2f} s, against {tasks} calls in {naive:.2f} s one per run "
              f"(ratio {batched / naive:.2f}× time, {batched_calls / tasks:.3f}× calls)")
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=250)
    parser.add_argument("--only", choices=["swarm", "ecs"])
    args: Any = parser.parse_args()
    if args.only in (None, "ecs"):
        ecs_bench(args.tasks)
    if args.only in (None, "swarm"):
        swarm_bench(args.runs)


if __name__ == "__main__":
    main()
