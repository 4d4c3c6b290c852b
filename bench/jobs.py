"""Jobs benchmark, as ratios against a raw baseline in the same run.

1. Latency: trivial runs (``true``) submitted one at a time through the REST API (a real
   HTTP server on loopback, the worker as its own process on the Docker backend, SQLite
   as with ``make up``); submit → RUNNING is from the client's submit to the worker's
   RUNNING record. Baseline: ``docker run -d IMAGE true`` from submit to return.
2. Throughput: the same number of runs submitted at once, until all have ended
   (logs kept, containers removed); baseline: ``docker run --rm IMAGE true`` with as many
   in parallel as DOCKYARD_MAX_CONCURRENT_RUNS.
3. The runs list (GET /api/v1/runs) p95 with 100,000 runs in the database; baseline: the
   same page as one raw SQL query.

    .venv/bin/python bench/jobs.py [--runs 200] [--image debian:bookworm-slim]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKENS = {"bench-alice": ("alice", False), "bench-admin": ("admin", True)}


class BenchIdentity:
    """Fixed tokens instead of a hub (the hub's token check is not what is measured)."""

    def user_for_token(self, token: str) -> Any:
        from dockyard.web.auth import User

        found = TOKENS.get(token)
        return User(found[0], admin=found[1]) if found else None

    def login_redirect(self, next_url: str) -> Any:  # pragma: no cover - API only
        raise NotImplementedError

    def finish_login(self, code: str, state: str | None) -> tuple[str, str]:  # pragma: no cover
        raise NotImplementedError


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> str:
    p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   (n={len(values)})"


def serve(app: Any) -> tuple[str, Any]:
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the output

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def start_worker(home: Path, namespace: str) -> subprocess.Popen[bytes]:
    from dockyard.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(home), DOCKYARD_JOB_BACKEND="docker",
               DOCKYARD_JOB_NAMESPACE=namespace, DOCKYARD_LOG_LEVEL="WARNING",
               # One user fills the installation: parallelism is the global limit.
               DOCKYARD_MAX_RUNS_PER_USER=str(Settings().max_concurrent_runs),
               DOCKYARD_JOB_DOCKYARD_URL="http://127.0.0.1:9/services/dockyard/")
    log = open(home / "worker.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def running_times(db_path: Path, ids: list[int]) -> dict[int, datetime]:
    """When the worker recorded each run as RUNNING."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            f"SELECT run_id, at FROM run_events WHERE to_status = 'RUNNING' "  # noqa: S608
            f"AND run_id IN ({','.join('?' * len(ids))})", ids).fetchall()
    return {run_id: _parse(at) for run_id, at in rows}


def _parse(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def wait_all_final(db_path: Path, ids: list[int], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    marks = ",".join("?" * len(ids))
    while time.monotonic() < deadline:
        with sqlite3.connect(db_path) as conn:
            left, failed = conn.execute(
                f"SELECT SUM(status NOT IN ('SUCCEEDED','FAILED','CANCELLED','TIMED_OUT')), "  # noqa: S608
                f"SUM(status != 'SUCCEEDED') FROM runs WHERE id IN ({marks})", ids).fetchone()
        if not left:
            if failed:
                raise RuntimeError(f"{failed} runs did not succeed; see the worker log")
            return
        time.sleep(0.02)
    raise TimeoutError("runs did not finish")


def dockyard_latency(session: Any, url: str, db_path: Path, image: str, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        submitted = datetime.now(UTC)
        response = session.post(f"{url}/api/v1/runs", json={"image": image, "command": ["true"],
                                                            "cpu": 0.5, "memory_mb": 64})
        response.raise_for_status()
        run_id = response.json()["id"]
        wait_all_final(db_path, [run_id])
        latencies.append((running_times(db_path, [run_id])[run_id] - submitted).total_seconds())
    return latencies


def bare_latency(image: str, n: int, label: str) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(["docker", "run", "-d", "--label", label, image, "true"], check=True,
                       capture_output=True)
        latencies.append(time.perf_counter() - started)
    remove_labelled(label)
    return latencies


def remove_labelled(label: str) -> None:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], check=True,
                         capture_output=True, text=True).stdout.split()
    for start in range(0, len(ids), 50):
        subprocess.run(["docker", "rm", "-f", *ids[start:start + 50]], capture_output=True)


def dockyard_throughput(session: Any, url: str, db_path: Path, image: str,
                        n: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    submitted: dict[int, datetime] = {}
    for _ in range(n):
        at = datetime.now(UTC)
        response = session.post(f"{url}/api/v1/runs", json={"image": image, "command": ["true"],
                                                            "cpu": 0.5, "memory_mb": 64})
        response.raise_for_status()
        submitted[response.json()["id"]] = at
    ids = list(submitted)
    wait_all_final(db_path, ids)
    elapsed = time.perf_counter() - started
    running = running_times(db_path, ids)
    return elapsed, [(running[i] - submitted[i]).total_seconds() for i in ids]


def bare_throughput(image: str, n: int, parallel: int, label: str) -> float:
    def one(_: int) -> None:
        subprocess.run(["docker", "run", "--rm", "--label", label, image, "true"], check=True,
                       capture_output=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started


def fill_runs(db_url: str, count: int) -> None:
    """``count`` finished runs of three users, some tagged, in bulk."""
    from sqlalchemy import insert

    from dockyard.db import make_engine
    from dockyard.models import Run, RunTag

    engine = make_engine(db_url)
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=60)
    statuses = ["SUCCEEDED"] * 8 + ["FAILED", "CANCELLED"]
    batch = 10_000
    with engine.begin() as conn:
        first_id = conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM runs").scalar() + 1
        for offset in range(0, count, batch):
            rows, tags = [], []
            for i in range(offset, min(count, offset + batch)):
                queued = start + timedelta(seconds=i * 50)
                began = queued + timedelta(seconds=rng.uniform(0.2, 3))
                rows.append(dict(
                    id=first_id + i, owner=("alice", "bob", "carol")[i % 3],
                    image="bench/image:1", command=["python", "job.py", str(i)], cpu=1.0,
                    memory_mb=512, gpu=0, env={}, max_retries=0, attempt=1, pool="default",
                    backend="docker", status=rng.choice(statuses), cancel_requested=False,
                    exit_code=0, reason="", queued_at=queued, started_at=began,
                    finished_at=began + timedelta(seconds=rng.uniform(1, 600)), worker="bench",
                ))
                if i % 10 == 0:
                    tags.append(dict(run_id=first_id + i, tag="nightly"))
            conn.execute(insert(Run), rows)
            if tags:
                conn.execute(insert(RunTag), tags)
    engine.dispose()


def list_latency(session: Any, url: str, query: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = session.get(f"{url}/api/v1/runs?{query}")
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def raw_list_latency(db_path: Path, n: int) -> list[float]:
    times = []
    conn = sqlite3.connect(db_path)
    for _ in range(n):
        started = time.perf_counter()
        conn.execute("SELECT * FROM runs WHERE owner = ? ORDER BY id DESC LIMIT 50",
                     ("alice",)).fetchall()
        times.append(time.perf_counter() - started)
    conn.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--image", default="debian:bookworm-slim")
    parser.add_argument("--list-rows", type=int, default=100_000)
    args = parser.parse_args()

    import requests

    from dockyard.migrate import upgrade
    from dockyard.models import ImageStatus
    from dockyard.settings import Settings
    from dockyard.web import create_app
    from tests.jobs.conftest import add_images

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-jobs-"))
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    label = f"dockyard-bench={namespace}"
    settings = Settings(home=home)
    db_path = home / "dockyard.sqlite"
    upgrade(settings.db_url)
    add_images(settings.db_url, (args.image, True, ImageStatus.READY))
    url, server = serve(create_app(settings, identity=BenchIdentity()))
    session = requests.Session()
    session.headers["Authorization"] = "token bench-alice"
    worker = start_worker(home, namespace)
    parallel = settings.max_concurrent_runs
    print(f"Jobs benchmark: {args.runs} runs of `true` in {args.image}; worker polls every "
          f"{settings.worker_poll_seconds}s, {parallel} runs at once; SQLite at {db_path}")
    try:
        subprocess.run(["docker", "run", "--rm", args.image, "true"], check=True)  # warm up
        dockyard_latency(session, url, db_path, args.image, 3)

        print("\n1. submit → RUNNING, one run at a time")
        bare = bare_latency(args.image, args.runs, label)
        ours = dockyard_latency(session, url, db_path, args.image, args.runs)
        print(f"   docker run -d   {summary(bare)}")
        print(f"   Dockyard        {summary(ours)}")
        p50_over = percentile(ours, 50) - percentile(bare, 50)
        print(f"   p50 over bare: {p50_over * 1000:+.0f} ms (goal ≤ +250 ms); "
              f"ratio p50 {percentile(ours, 50) / percentile(bare, 50):.2f}×, "
              f"p95 {percentile(ours, 95) / percentile(bare, 95):.2f}×")

        print(f"\n2. throughput, {args.runs} runs submitted at once, {parallel} in parallel")
        bare_seconds = bare_throughput(args.image, args.runs, parallel, label)
        our_seconds, queued = dockyard_throughput(session, url, db_path, args.image, args.runs)
        bare_rate, our_rate = args.runs / bare_seconds, args.runs / our_seconds
        print(f"   docker run --rm ×{parallel}  {bare_rate:6.2f} runs/s  ({bare_seconds:.1f} s)")
        print(f"   Dockyard             {our_rate:6.2f} runs/s  ({our_seconds:.1f} s)")
        print(f"   ratio {our_rate / bare_rate:.2f}× of bare (goal ≥ 0.8×); submit → RUNNING "
              f"while queued: {summary(queued)}")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        remove_labelled(label)
        remove_labelled(f"dockyard.namespace={namespace}")

    print(f"\n3. runs list with {args.list_rows:,} more runs in the database")
    fill_runs(settings.db_url, args.list_rows)
    queries = {
        "alice, newest first": "limit=50",
        "alice, FAILED": "limit=50&status=FAILED",
        "alice, tag=nightly": "limit=50&tag=nightly",
        "alice, by finish time": "limit=50&sort=-finished",
    }
    raw = raw_list_latency(db_path, 200)
    print(f"   raw SQL page              {summary(raw)}")
    worst = 0.0
    for name, query in queries.items():
        list_latency(session, url, query, 5)
        times = list_latency(session, url, query, 200)
        worst = max(worst, percentile(times, 95))
        print(f"   API {name:<22}{summary(times)}")
    cursor = session.get(f"{url}/api/v1/runs?limit=50").json()["next_cursor"]
    deep = list_latency(session, url, f"limit=50&cursor={cursor}", 200)
    print(f"   API page 2 (cursor)       {summary(deep)}")
    admin = requests.Session()
    admin.headers["Authorization"] = "token bench-admin"
    everyone = list_latency(admin, url, "limit=50", 200)
    print(f"   API admin, everyone       {summary(everyone)}")
    worst = max(worst, percentile(deep, 95), percentile(everyone, 95))
    print(f"   worst p95 {worst * 1000:.1f} ms (goal ≤ 50 ms); ratio to raw SQL p95 "
          f"{worst / percentile(raw, 95):.1f}×")
    server.shutdown()
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
