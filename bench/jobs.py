"""Jobs benchmark: Dockyard's runs against the same job containers made with the Docker SDK.

Both sides are measured in the same run, on the same engine.

Dockyard: a real ``dockyard up`` (JupyterHub, its proxy, the web service under gunicorn,
the worker on the Docker backend at the shipped poll interval), its database a
PostgreSQL database of the bench's own, dropped afterwards. A user signed up through the
hub's form submits each run with a JupyterHub API token: ``POST
/services/dockyard/api/v1/runs`` through the hub's proxy, as a script would. A run is
``true`` in IMAGE with 0.5 CPU and 64 MB. Only runs that reached RUNNING and ended
SUCCEEDED are counted; every final state is checked and the others reported.

Bare Docker: one Docker SDK client kept for the whole bench (as Dockyard's worker keeps
one), ``containers.run(detach=True)`` with the options Dockyard's Docker backend gives a
job container (its user, init, CPU, memory and swap limits, pids limit, dropped
capabilities, no-new-privileges, network, data mount and environment), then ``wait()``
and ``remove()``, as ``docker run --rm`` does. Only containers that exited 0 are counted.

1. One run at a time, the two sides interleaved. submit → RUNNING: from the client's
   POST to the worker's RUNNING record (its event time, read back through the API);
   baseline: ``containers.run(detach=True)`` until it returns with the container started.
   submit → removed: from the POST until the engine reports the run's container destroyed
   (Docker's event time), since Dockyard removes it after recording the outcome; baseline:
   run, wait and remove until ``remove()`` returns.
2. Throughput: N runs submitted at once (4 client threads posting back to back), the
   worker running DOCKYARD_MAX_CONCURRENT_RUNS = P of them at a time (one user may run all
   P); from the first POST until the last run's container is destroyed. Baseline: the same
   N containers, P threads each doing run, wait and remove. Rate = counted runs / seconds.
3. Pages with R finished runs of three users bulk-inserted (and the table ANALYZEd, as
   autovacuum would): p95 of the runs list and of one run, each as the API's JSON and as
   the HTML page, through the proxy with the user's token (the web service caches the
   hub's token check for 60 s, as shipped). Baseline: the same page as one raw SQL query
   (psycopg on the same database): the user's newest 50 runs, or one run by id.

    .venv/bin/python bench/jobs.py [--quick] [--runs 100] [--drain 1000] [--rows 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import psycopg
import requests
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results, percentile, summary  # noqa: E402
from dockyard.models import ImageStatus  # noqa: E402
from dockyard.settings import Settings  # noqa: E402
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_RUN_ID, JobSpec  # noqa: E402
from tests.jobs.conftest import add_images  # noqa: E402
from tests.support.hubproc import RunningHub, start_hub  # noqa: E402
from tests.support.postgres import fresh_database  # noqa: E402

USER = "alice"
CPU, MEMORY_MB = 0.5, 64
RUN_BODY = {"command": ["true"], "cpu": CPU, "memory_mb": MEMORY_MB}
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
SUBMITTERS = 4
RESULTS = Results("jobs")


def shipped(name: str) -> Any:
    return Settings.model_fields[name].default


def psycopg_url(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


class Removals:
    """When the engine destroyed each container of the namespaces watched, by Docker's
    own event time: what ends a run as ``--rm`` ends a container."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self.namespaces = set(namespaces)
        self.at: dict[int, float] = {}
        self.changed = threading.Condition()
        self.ended: Exception | None = None
        self.client = docker.from_env(timeout=None)
        self.events = self.client.api.events(
            decode=True, filters={"type": "container", "event": ["destroy"]})
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            for event in self.events:
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                # The namespace also marks the worker's image inspection containers.
                if attributes.get(LABEL_NAMESPACE) not in self.namespaces \
                        or LABEL_RUN_ID not in attributes:
                    continue
                with self.changed:
                    self.at[int(attributes[LABEL_RUN_ID])] = event["timeNano"] / 1e9
                    self.changed.notify_all()
        except Exception as exc:  # the stream closed: the bench is ending
            self.ended = exc

    def close(self) -> None:
        try:
            self.events.close()
        except Exception:  # already closed
            pass
        self.client.close()


class Dockyard:
    """The running Dockyard, seen as its user sees it, and its database for the checks."""

    def __init__(self, hub: RunningHub, token: str, admin_token: str, db_url: str) -> None:
        self.hub = hub
        self.headers = {"Authorization": f"token {token}"}
        self.admin_headers = {"Authorization": f"token {admin_token}"}
        self.db = psycopg.connect(psycopg_url(db_url), autocommit=True)
        self.local = threading.local()

    @property
    def http(self) -> requests.Session:
        """One keep-alive session per client thread."""
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers.update(self.headers)
        return self.local.session

    def submit(self, image: str) -> tuple[int, float]:
        at = time.time()
        response = self.http.post(self.hub.service("api/v1/runs"), json={**RUN_BODY,
                                                                          "image": image},
                                  timeout=60)
        if response.status_code != 201:
            raise RuntimeError(f"submit refused: {response.status_code} {response.text[:300]}")
        return response.json()["id"], at

    def running_at(self, run_id: int) -> float | None:
        """The worker's RUNNING record of the run, through the API."""
        response = self.http.get(self.hub.service(f"api/v1/runs/{run_id}/events"), timeout=30)
        response.raise_for_status()
        for event in response.json()["events"]:
            if event["to_status"] == "RUNNING":
                return _epoch(event["at"])
        return None

    def outcomes(self, ids: list[int]) -> dict[int, tuple[str, bool]]:
        """Each run's status and whether it ever reached RUNNING."""
        rows = self.db.execute(
            "SELECT r.id, r.status, EXISTS (SELECT 1 FROM run_events e WHERE e.run_id = r.id "
            "AND e.to_status = 'RUNNING') FROM runs r WHERE r.id = ANY(%s)", (ids,)).fetchall()
        return {run_id: (str(status), reached) for run_id, status, reached in rows}

    def drain(self, removals: Removals, ids: list[int], timeout: float) -> float:
        """Wait until every run's container is gone (or the run ended without one); the
        engine's time of the last removal."""
        pending = set(ids)
        deadline = time.monotonic() + timeout
        last_check = 0.0
        while pending:
            with removals.changed:
                pending -= removals.at.keys()
                if pending:
                    removals.changed.wait(0.2)
                    pending -= removals.at.keys()
            if pending and time.monotonic() - last_check > 1:
                last_check = time.monotonic()
                # A run that ended before its container existed has nothing to remove.
                ended = self.db.execute(
                    "SELECT id FROM runs WHERE id = ANY(%s) AND engine_handle IS NULL AND "
                    "status = ANY(%s)", (list(pending), list(FINAL))).fetchall()
                pending -= {row[0] for row in ended}
            if time.monotonic() > deadline:
                states = self.db.execute(
                    "SELECT id, status, engine_handle, reason FROM runs "
                    "WHERE id = ANY(%s) ORDER BY id LIMIT 5", (list(pending),)).fetchall()
                raise TimeoutError(f"{len(pending)} runs still had a container after "
                                   f"{timeout:.0f} s (first: {states}; the engine's "
                                   f"events: {removals.ended or 'followed'}):\n"
                                   f"{self.hub.log_tail()}")
        return max((removals.at[i] for i in ids if i in removals.at), default=time.time())

    def close(self) -> None:
        self.db.close()


def _epoch(text: str) -> float:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class BareDocker:
    """The SDK side: a job container's options, run, waited for and removed."""

    def __init__(self, settings: Settings, image: str, parallel: int) -> None:
        from dockyard.containers import container_environment
        from dockyard.worker.backends import backend_config
        from spawner.environment import CONTAINER_DATA_ROOT
        from spawner.jobs.docker import job_user

        self.namespace = f"bare{uuid.uuid4().hex[:8]}"
        self.client = docker.from_env(timeout=120, max_pool_size=2 * parallel + 8)
        self.config = backend_config("docker", settings, None)
        self.image = image
        self.user = job_user((self.client.images.get(image).attrs.get("Config") or {})
                             .get("User"))
        self.env = container_environment(
            settings, self.config.dockyard_url,
            data_root_mounted_at=CONTAINER_DATA_ROOT if self.config.data_root else None)
        self.next_id = iter(range(1, 10**9))
        self.lock = threading.Lock()

    def options(self) -> dict[str, Any]:
        from spawner.jobs.docker import container_options

        with self.lock:
            run_id = next(self.next_id)
        env = {**self.env, "DOCKYARD_RUN_ID": str(run_id), "DOCKYARD_ATTEMPT": "1",
               "DOCKYARD_OWNER": USER, "DOCKYARD_URL": self.config.dockyard_url,
               "DOCKYARD_TOKEN": uuid.uuid4().hex}
        spec = JobSpec(run_id=run_id, attempt=1, owner=USER, image=self.image, argv=("true",),
                       cpu=CPU, memory_mb=MEMORY_MB, env=env)
        return container_options(spec, namespace=self.namespace, network=self.config.network,
                                 user=self.user, pids_limit=self.config.pids_limit,
                                 data_root=self.config.data_root)

    def run(self) -> tuple[float, float, bool]:
        """(seconds until started, seconds until removed, exited 0); an engine error
        counts as a run that did not exit 0 (its container is removed at the end)."""
        options = self.options()
        started = time.perf_counter()
        try:
            container = self.client.containers.run(detach=True, **options)
            running = time.perf_counter() - started
            code = container.wait()["StatusCode"]
            container.remove()
        except docker.errors.DockerException as exc:
            print(f"   bare run failed: {exc}")
            return 0.0, 0.0, False
        return running, time.perf_counter() - started, code == 0

    def remove_all(self) -> None:
        for container in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_NAMESPACE}={self.namespace}"}):
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass

    def close(self) -> None:
        self.client.close()


# -- 1. one at a time ------------------------------------------------------------------------
def one_at_a_time(ours: Dockyard, bare: BareDocker, removals: Removals, image: str,
                  runs: int) -> None:
    print(f"\n1. one run at a time, {runs} runs each, interleaved")
    bare_running, bare_removed, our_running, our_removed = [], [], [], []
    bare_failed, our_failed = 0, 0
    for _ in range(runs):
        running, removed, ok = bare.run()
        if ok:
            bare_running.append(running)
            bare_removed.append(removed)
        else:
            bare_failed += 1
        run_id, submitted = ours.submit(image)
        gone = ours.drain(removals, [run_id], timeout=120)
        status, reached = ours.outcomes([run_id])[run_id]
        running_at = ours.running_at(run_id)
        if status == "SUCCEEDED" and reached and running_at is not None:
            our_running.append(running_at - submitted)
            our_removed.append(gone - submitted)
        else:
            our_failed += 1
            print(f"   run {run_id} not counted: {status}, reached RUNNING: {reached}")
    print(f"   submit → started/RUNNING   SDK run(detach)   {summary(bare_running, 'ms')}")
    print(f"                              Dockyard          {summary(our_running, 'ms')}")
    print(f"   submit → removed           SDK run+wait+rm   {summary(bare_removed, 'ms')}")
    print(f"                              Dockyard          {summary(our_removed, 'ms')}")
    if bare_failed or our_failed:
        print(f"   not counted: {bare_failed} bare, {our_failed} Dockyard")
    if not (bare_running and our_running):
        raise RuntimeError("no counted runs on one side")
    note = f"{len(our_running)} of {runs} runs counted ({len(bare_running)} bare)"
    for fraction, label in ((0.5, "p50"), (0.95, "p95")):
        # The goal is additive: at most 250 ms more than the bare start, on p50.
        RESULTS.add(f"one run at a time: submit → RUNNING, {label}",
                    percentile(our_running, fraction), unit="s",
                    baseline=percentile(bare_running, fraction),
                    baseline_name="Docker SDK containers.run(detach=True), same options",
                    goal_value=(percentile(bare_running, fraction) + 0.25
                                if label == "p50" else None),
                    note=note + ("; goal: ≤ 250 ms beyond the bare start"
                                 if label == "p50" else ""))
        RESULTS.add(f"one run at a time: submit → container removed, {label}",
                    percentile(our_removed, fraction), unit="s",
                    baseline=percentile(bare_removed, fraction),
                    baseline_name="Docker SDK run + wait + remove, same options", note=note)


# -- 2. throughput ---------------------------------------------------------------------------
def throughput(ours: Dockyard, bare: BareDocker, removals: Removals, image: str, runs: int,
               parallel: int) -> None:
    print(f"\n2. throughput: {runs} runs submitted at once, {parallel} at a time")
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as threads:
        outcomes = list(threads.map(lambda _: bare.run(), range(runs)))
    bare_seconds = time.perf_counter() - started
    bare_counted = sum(ok for _, _, ok in outcomes)

    first = time.time()
    with ThreadPoolExecutor(SUBMITTERS) as threads:
        submitted = list(threads.map(lambda _: ours.submit(image), range(runs)))
    submit_seconds = time.time() - first
    ids = [run_id for run_id, _ in submitted]
    last = ours.drain(removals, ids, timeout=120 + 5 * runs)
    our_seconds = last - first
    states = ours.outcomes(ids)
    counted = sum(status == "SUCCEEDED" and reached for status, reached in states.values())
    others: dict[str, int] = {}
    for status, reached in states.values():
        if not (status == "SUCCEEDED" and reached):
            others[status] = others.get(status, 0) + 1

    bare_rate, our_rate = bare_counted / bare_seconds, counted / our_seconds
    print(f"   SDK run+wait+rm ×{parallel}  {bare_rate:6.2f} runs/s  ({bare_seconds:.1f} s, "
          f"{bare_counted}/{runs} exited 0)")
    print(f"   Dockyard             {our_rate:6.2f} runs/s  ({our_seconds:.1f} s, "
          f"{counted}/{runs} SUCCEEDED after RUNNING; submitting took {submit_seconds:.1f} s)")
    if others:
        print(f"   not counted: {others}")
    print(f"   ratio {our_rate / bare_rate:.2f}× of bare (goal ≥ 0.8×)")
    RESULTS.add(f"throughput: {runs} queued runs, {parallel} at a time", our_rate,
                unit="runs/s", baseline=bare_rate,
                baseline_name=f"Docker SDK run + wait + remove in {parallel} threads",
                better="higher", goal_ratio=0.8,
                note=f"{counted} of {runs} runs counted ({bare_counted} bare); "
                     f"submitting took {submit_seconds:.1f} s")


# -- 3. pages with many runs -----------------------------------------------------------------
def fill_runs(db: psycopg.Connection, count: int) -> list[int]:
    """``count`` finished runs of three users, one in ten tagged, in bulk; the ids of
    the user's."""
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=60)
    statuses = ["SUCCEEDED"] * 8 + ["FAILED", "CANCELLED"]
    first_id = db.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0] + 1
    mine = []
    with db.transaction(), db.cursor() as cursor:
        with cursor.copy(
            "COPY runs (id, owner, image, command, kind, cpu, memory_mb, gpu, env, "
            "max_retries, attempt, pool, backend, status, cancel_requested, exit_code, reason, "
            "queued_at, started_at, finished_at, worker) FROM STDIN"
        ) as copy:
            for i in range(count):
                run_id = first_id + i
                owner = (USER, "bob", "carol")[i % 3]
                if owner == USER:
                    mine.append(run_id)
                queued = start + timedelta(seconds=i * 50 * 100_000 / count)
                began = queued + timedelta(seconds=rng.uniform(0.2, 3))
                status = rng.choice(statuses)
                copy.write_row((
                    run_id, owner, "bench/image:1", f'["python", "job.py", "{i}"]', "command",
                    1.0, 512, 0, "{}", 0, 1, "default", "docker", status, False,
                    0 if status == "SUCCEEDED" else 1, "", queued, began,
                    began + timedelta(seconds=rng.uniform(1, 600)), "bench"))
        with cursor.copy("COPY run_tags (run_id, tag) FROM STDIN") as copy:
            for i in range(0, count, 10):
                copy.write_row((first_id + i, "nightly"))
        cursor.execute("SELECT setval(pg_get_serial_sequence('runs', 'id'), "
                       "(SELECT MAX(id) FROM runs))")
    db.execute("ANALYZE runs")
    db.execute("ANALYZE run_tags")
    return mine


def timed_gets(session: requests.Session, urls: list[str], headers: dict[str, str]) -> list[float]:
    times = []
    for url in urls:
        started = time.perf_counter()
        response = session.get(url, headers=headers, timeout=30, allow_redirects=False)
        took = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
        times.append(took)
    return times


def timed_sql(db: psycopg.Connection, query: str, params: list[tuple[Any, ...]]) -> list[float]:
    times = []
    for values in params:
        started = time.perf_counter()
        db.execute(query, values).fetchall()
        times.append(time.perf_counter() - started)
    return times


def pages(ours: Dockyard, rows: int, requests_each: int) -> None:
    print(f"\n3. pages with {rows:,} runs in PostgreSQL")
    started = time.perf_counter()
    mine = fill_runs(ours.db, rows)
    print(f"   inserted in {time.perf_counter() - started:.1f} s")
    hub = ours.hub
    session = requests.Session()
    rng = random.Random(11)
    run_ids = [rng.choice(mine) for _ in range(requests_each)]

    def api_list(query: str) -> list[str]:
        return [hub.service(f"api/v1/runs?{query}")] * requests_each

    first_page = session.get(hub.service("api/v1/runs?limit=50"), headers=ours.headers,
                             timeout=30).json()
    lists = {
        "newest first": api_list("limit=50"),
        "status=FAILED": api_list("limit=50&status=FAILED"),
        "tag=nightly": api_list("limit=50&tag=nightly"),
        "by finish time": api_list("limit=50&sort=-finished"),
        "page 2 (cursor)": api_list(f"limit=50&cursor={first_page['next_cursor']}"),
    }
    warm = [hub.service("api/v1/runs?limit=50"), hub.service("jobs/"),
            hub.service(f"api/v1/runs/{mine[0]}"), hub.service(f"jobs/runs/{mine[0]}")]
    timed_gets(session, warm * 3, ours.headers)

    raw_list = timed_sql(ours.db, "SELECT * FROM runs WHERE owner = %s ORDER BY id DESC "
                         "LIMIT 50", [(USER,)] * requests_each)
    raw_run = timed_sql(ours.db, "SELECT * FROM runs WHERE id = %s",
                        [(run_id,) for run_id in run_ids])
    print(f"   raw SQL, the user's newest 50   {summary(raw_list, 'ms')}")
    print(f"   raw SQL, one run by id          {summary(raw_run, 'ms')}")
    worst_name, worst = "", 0.0
    for name, urls in lists.items():
        times = timed_gets(session, urls, ours.headers)
        print(f"   API runs list, {name:<17}{summary(times, 'ms')}")
        if percentile(times, 0.95) >= worst:
            worst_name, worst = name, percentile(times, 0.95)
    everyone = timed_gets(session, api_list("limit=50"), ours.admin_headers)
    print(f"   API runs list, admin, everyone  {summary(everyone, 'ms')}")
    if percentile(everyone, 0.95) >= worst:
        worst_name, worst = "admin, everyone", percentile(everyone, 0.95)
    list_page = timed_gets(session, [hub.service("jobs/")] * requests_each, ours.headers)
    print(f"   runs list page (HTML)           {summary(list_page, 'ms')}")
    run_api = timed_gets(session, [hub.service(f"api/v1/runs/{i}") for i in run_ids],
                         ours.headers)
    print(f"   API one run                     {summary(run_api, 'ms')}")
    run_page = timed_gets(session, [hub.service(f"jobs/runs/{i}") for i in run_ids],
                          ours.headers)
    print(f"   run page (HTML)                 {summary(run_page, 'ms')}")

    note = f"{rows:,} runs in PostgreSQL, {requests_each} requests each"
    list_sql = "raw SQL: the user's newest 50 runs"
    RESULTS.add("runs list API p95 (worst of 6 filters)", worst, unit="s",
                baseline=percentile(raw_list, 0.95), baseline_name=list_sql,
                goal_value=0.05, note=f"{note}; worst: {worst_name}")
    RESULTS.add("runs list page p95", percentile(list_page, 0.95), unit="s",
                baseline=percentile(raw_list, 0.95), baseline_name=list_sql,
                goal_value=0.05, note=note)
    RESULTS.add("one run, API p95", percentile(run_api, 0.95), unit="s",
                baseline=percentile(raw_run, 0.95), baseline_name="raw SQL: one run by id",
                goal_value=0.05, note=note)
    RESULTS.add("run page p95", percentile(run_page, 0.95), unit="s",
                baseline=percentile(raw_run, 0.95), baseline_name="raw SQL: one run by id",
                goal_value=0.05, note=note)


# -- the set-up ------------------------------------------------------------------------------
@contextmanager
def running_dockyard(home: Path, db_url: str, namespace: str, image: str,
                     parallel: int) -> Iterator[Dockyard]:
    hub = start_hub(
        home, DOCKYARD_DATABASE_URL=db_url, DOCKYARD_JOB_BACKEND="docker",
        DOCKYARD_JOB_NAMESPACE=namespace,
        DOCKYARD_WORKER_POLL_SECONDS=str(shipped("worker_poll_seconds")),
        DOCKYARD_MAX_CONCURRENT_RUNS=str(parallel), DOCKYARD_MAX_RUNS_PER_USER=str(parallel),
        DOCKYARD_LOG_LEVEL="WARNING")
    ours: Dockyard | None = None
    try:
        add_images(db_url, (image, True, ImageStatus.READY))
        user = hub.create_user(USER)
        admin = hub.login()
        ours = Dockyard(hub, hub.hub_token(user, USER), hub.hub_token(admin, hub.admin), db_url)
        yield ours
    finally:
        if ours is not None:
            ours.close()
        hub.stop()


def remove_namespace(namespace: str) -> None:
    client = docker.from_env(timeout=120)
    try:
        for container in client.containers.list(
                all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"}):
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 runs one at a time, 100 drained, 10,000 rows")
    parser.add_argument("--runs", type=int, default=100, help="runs one at a time, each side")
    parser.add_argument("--drain", type=int, default=1000, help="runs submitted at once")
    parser.add_argument("--rows", type=int, default=100_000, help="runs in the database")
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument("--parallel", type=int, default=shipped("max_concurrent_runs"),
                        help="DOCKYARD_MAX_CONCURRENT_RUNS and the bare side's threads")
    parser.add_argument("--image", default="debian:bookworm-slim")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.drain, args.rows, args.requests = 20, 100, 10_000, 100
    if not os.environ.get("DOCKYARD_TEST_POSTGRES_URL"):
        print("set DOCKYARD_TEST_POSTGRES_URL=postgresql+psycopg://USER:PASS@HOST/DB: the "
              "bench makes a database of its own there and drops it after")
        return 2
    # ``make bench`` stops a bench that runs too long with SIGTERM: clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-jobs-"))
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    removals: Removals | None = None
    bare: BareDocker | None = None
    print(f"Jobs benchmark: `true` in {args.image}, {CPU} CPU, {MEMORY_MB} MB; worker polls "
          f"every {shipped('worker_poll_seconds')} s, {args.parallel} runs at a time")
    try:
        with fresh_database("dockyard_bench_jobs") as db_url, \
                running_dockyard(home / "home", db_url, namespace, args.image,
                                 args.parallel) as ours:
            removals = Removals([namespace])
            settings = Settings(home=home / "home", database_url=db_url,
                                web_port=int(ours.hub.env["DOCKYARD_WEB_PORT"]))
            bare = BareDocker(settings, args.image, args.parallel)
            bare.run()  # warm-up: the image's layers and the engine's caches
            run_id, _ = ours.submit(args.image)
            ours.drain(removals, [run_id], timeout=120)

            one_at_a_time(ours, bare, removals, args.image, args.runs)
            throughput(ours, bare, removals, args.image, args.drain, args.parallel)
            pages(ours, args.rows, args.requests)
        RESULTS.write()
        print(f"\n   load average {os.getloadavg()[0]:.2f} at the end")
        return 0
    finally:
        if removals is not None:
            removals.close()
        if bare is not None:
            bare.remove_all()
            bare.close()
        remove_namespace(namespace)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
