"""Two workers sharing one queue on a real PostgreSQL never dispatch the same run, and
together keep the global and per-user limits."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.service import create_run
from dockyard.migrate import upgrade
from dockyard.models import FINAL_STATES, ImageStatus, Run, RunEvent, RunState
from dockyard.settings import Settings
from dockyard.web.auth import User
from dockyard.worker.loop import Worker
from spawner.jobs.base import JobSpec, JobStatus
from spawner.jobs.local import LocalJobBackend
from tests.jobs.conftest import SHELL_IMAGE, add_images
from tests.support.requirements import require_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database for this test, migrated, dropped afterwards."""
    base = make_url(require_postgres())
    name = f"dockyard_jobs_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class CountingBackend(LocalJobBackend):
    """The real local backend, counting how often each run is started."""

    starts: Counter[int] = Counter()
    lock = threading.Lock()

    def start(self, spec: JobSpec) -> JobStatus:
        with self.lock:
            self.starts[spec.run_id] += 1
        return super().start(spec)


def test_two_workers_never_dispatch_the_same_run(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=postgres_url, job_backend="local",
                        job_namespace="jtpg", worker_poll_seconds=0.05, max_concurrent_runs=6,
                        max_runs_per_user=3)
    add_images(postgres_url, (SHELL_IMAGE, True, ImageStatus.READY))
    from dockyard.jobs.schemas import JobLimits, RunIn

    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    limits = JobLimits.from_settings(settings)
    with sessions() as session:
        for index in range(30):
            owner = ("alice", "bob", "carol")[index % 3]
            create_run(session, User(owner), RunIn(image=SHELL_IMAGE, command=["true"]),
                       limits)

    CountingBackend.starts = Counter()
    workers, threads, stop = [], [], threading.Event()
    for name in ("w1", "w2"):
        backend = CountingBackend("jtpg", "http://127.0.0.1:9/", root=tmp_path / "jobs-local")
        worker = Worker(settings, backend=backend, name=name)
        workers.append(worker)
        threads.append(threading.Thread(target=worker.run, args=(stop,), daemon=True))
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with sessions() as session:
                left = session.scalar(select(Run.id).where(Run.status.not_in(FINAL_STATES))
                                      .limit(1))
            if left is None:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            worker.wake.set()
        for thread in threads:
            thread.join(timeout=30)
        for worker in workers:
            worker.close()

    with sessions() as session:
        runs = list(session.scalars(select(Run).order_by(Run.id)))
        events = list(session.scalars(select(RunEvent).order_by(RunEvent.id)))
    engine.dispose()
    assert [r.status for r in runs] == [RunState.SUCCEEDED] * 30
    assert all(CountingBackend.starts[r.id] == 1 for r in runs), CountingBackend.starts
    claims = Counter(e.run_id for e in events if e.to_status == "PENDING")
    assert set(claims.values()) == {1}
    by_worker = Counter(r.worker for r in runs)
    assert set(by_worker) == {"w1", "w2"}, by_worker

    # Replaying claims and endings in order: never more than the limits at once.
    active: Counter[str] = Counter()
    owner_of = {r.id: r.owner for r in runs}
    peak_total, peak_user = 0, 0
    for event in events:
        if event.to_status == "PENDING":
            active[owner_of[event.run_id]] += 1
        elif event.to_status in {s.value for s in FINAL_STATES}:
            active[owner_of[event.run_id]] -= 1
        peak_total = max(peak_total, sum(active.values()))
        peak_user = max(peak_user, *active.values()) if active else peak_user
    assert peak_total <= 6 and peak_user <= 3


def test_a_queued_run_wakes_an_idle_worker_without_waiting_for_its_poll(
        postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL tells the worker about a queued run (NOTIFY at the run's commit), so an
    idle worker whose poll is a minute away starts it at once."""
    from dockyard.jobs.schemas import JobLimits, RunIn

    settings = Settings(home=tmp_path, database_url=postgres_url, job_backend="local",
                        job_namespace="jtwake", worker_poll_seconds=60)
    add_images(postgres_url, (SHELL_IMAGE, True, ImageStatus.READY))
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    backend = LocalJobBackend("jtwake", "http://127.0.0.1:9/", root=tmp_path / "jobs-local")
    worker = Worker(settings, backend=backend, name="w-idle")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(3)  # reconciled, first passes done, listening: the next poll is ~60 s off
        with sessions() as session:
            run = create_run(session, User("alice"), RunIn(image=SHELL_IMAGE, command=["true"]),
                             JobLimits.from_settings(settings))
        submitted = time.monotonic()
        status = RunState.QUEUED
        while time.monotonic() - submitted < 15 and status == RunState.QUEUED:
            time.sleep(0.05)
            with sessions() as session:
                status = session.scalar(select(Run.status).where(Run.id == run.id))
        assert status in {RunState.PENDING, RunState.RUNNING, RunState.SUCCEEDED}, \
            f"the worker waited for its poll ({status})"
    finally:
        stop.set()
        worker.wake.set()
        thread.join(timeout=30)
        worker.close()
        engine.dispose()
