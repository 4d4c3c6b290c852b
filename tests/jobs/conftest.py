"""Fixtures for the jobs tests: catalog images, a worker on a real engine, helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory
from dockyard.models import Image, ImageStatus, Run, RunEvent, RunState
from dockyard.settings import Settings
from dockyard.web import create_app
from dockyard.worker.loop import Worker
from tests.browser.conftest import browser, page  # noqa: F401  (Playwright fixtures)
from tests.conftest import USERS, TokenTable, auth

#: A small image with a shell, present wherever the Docker tests run.
SHELL_IMAGE = "debian:bookworm-slim"
FINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT)
#: Where job containers are told Dockyard is: nothing answers there, and the tests that
#: need the API from inside a run say so.
UNREACHABLE_URL = "http://127.0.0.1:9/services/dockyard/"
ALICE = auth("tok-alice")


def add_images(db_url: str, *images: tuple[str, bool, ImageStatus]) -> None:
    """Put images in the catalog directly (the admin pages belong to another area)."""
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            for reference, for_jobs, status in images:
                if session.scalar(select(Image).where(Image.reference == reference)) is None:
                    session.add(Image(reference=reference, for_jobs=for_jobs,
                                      for_notebooks=not for_jobs, status=status,
                                      created_by="admin"))
            session.commit()
    finally:
        engine.dispose()


@pytest.fixture
def catalog(migrated: Settings) -> Settings:
    add_images(
        migrated.db_url,
        (SHELL_IMAGE, True, ImageStatus.READY),
        ("team/retired:1", True, ImageStatus.RETIRED),
        ("team/notebooks-only:1", False, ImageStatus.READY),
    )
    return migrated


class RunsDb:
    """Reads runs straight from the database, for assertions."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = make_session_factory(self.engine)

    def run(self, run_id: int) -> Run:
        with self.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None
            session.expunge(run)
            return run

    def events(self, run_id: int) -> list[RunEvent]:
        with self.sessions() as session:
            return list(session.scalars(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))

    def runs(self) -> list[Run]:
        with self.sessions() as session:
            return list(session.scalars(select(Run).order_by(Run.id)))

    def wait_for(self, run_id: int, *states: RunState, timeout: float = 60) -> Run:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run.status in states:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} is {self.run(run_id).status}, not {states}; "
                             f"events: {[(e.to_status, e.reason) for e in self.events(run_id)]}")

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def runs_db(catalog: Settings) -> Iterator[RunsDb]:
    db = RunsDb(catalog.db_url)
    yield db
    db.close()


def unique_namespace(prefix: str = "jt") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def eventually(check: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def log_file(settings: Settings, run_id: int) -> Path:
    return settings.log_dir / "runs" / f"{run_id}.log"


class ThreadedWorker:
    """The real worker loop in a thread of the test process."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.worker = Worker(settings, **kwargs)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop_event,),
                                       daemon=True)

    def __enter__(self) -> ThreadedWorker:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.worker.wake.set()
        self.thread.join(timeout=30)
        self.worker.close()


class JobsHarness:
    """One installation's worth of jobs for a backend's suite: the web app (its test
    client, on the suite's settings), the database, and a worker, in a thread or (to
    kill -9 it) in a process of its own.

    ``overrides`` are the settings the suite runs with (backend, pools, namespace, ...):
    the thread worker gets them as a Settings object, the process worker as the
    DOCKYARD_* variables an operator would set, so both read the same configuration."""

    #: Fields every run this suite submits has, unless a test says otherwise.
    run_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, base: Settings, tmp_path: Path, overrides: dict[str, Any]) -> None:
        self.overrides = {"worker_poll_seconds": 0.2, "job_dockyard_url": UNREACHABLE_URL,
                          **overrides}
        self.settings = Settings(**{**base.model_dump(exclude=set(self.overrides)),
                                    **self.overrides})
        self.namespace = self.settings.job_namespace
        app = create_app(self.settings, identity=TokenTable(USERS))
        app.config["TESTING"] = True
        self.client: FlaskClient = app.test_client()
        self.tmp_path = tmp_path
        self.db = RunsDb(self.settings.db_url)
        self.t0 = time.time() - 1
        self._threaded: ThreadedWorker | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start_worker(self, **overrides: Any) -> Worker:
        self.stop_worker()
        self._threaded = ThreadedWorker(self.settings.model_copy(update=overrides)).__enter__()
        return self._threaded.worker

    def stop_worker(self) -> None:
        if self._threaded is not None:
            self._threaded.__exit__()
            self._threaded = None

    def start_worker_process(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env.update(DOCKYARD_HOME=str(self.settings.home), DOCKYARD_LOG_LEVEL="DEBUG")
        for name, value in self.overrides.items():
            env[f"DOCKYARD_{name.upper()}"] = (json.dumps(value)
                                               if isinstance(value, dict | list) else str(value))
        log = open(self.tmp_path / "worker.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"], env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
        return self.process

    def submit(self, headers: dict[str, str] = ALICE, **fields: Any) -> int:
        body = {"image": SHELL_IMAGE, **self.run_defaults, **fields}
        response = self.client.post("/api/v1/runs", json=body, headers=headers)
        assert response.status_code == 201, response.json
        return int(response.json["id"])

    def wait(self, run_id: int, *states: RunState, timeout: float = 60) -> Run:
        return self.db.wait_for(run_id, *(states or FINAL), timeout=timeout)

    def transitions(self, run_id: int) -> list[str]:
        return [e.to_status for e in self.db.events(run_id) if e.from_status != e.to_status]

    def engine_objects(self, run_id: int) -> list[Any]:
        """What the backend made for the run (containers, services); backends with a
        look-up of their own define it."""
        raise NotImplementedError

    def removed(self, run_id: int, timeout: float = 20) -> bool:
        """The run's container or service goes right after the outcome and the log are
        kept."""
        deadline = time.monotonic() + timeout
        while self.engine_objects(run_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self) -> None:
        self.stop_worker()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.db.close()
