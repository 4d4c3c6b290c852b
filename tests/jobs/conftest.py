"""Fixtures for the jobs tests: catalog images, a worker on a real engine, helpers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.db import make_engine, make_session_factory
from hub.models import Image, ImageStatus, Run, RunEvent, RunState
from hub.settings import Settings
from tests.browser.conftest import browser, page  # noqa: F401  (Playwright fixtures)

#: A small image with a shell, present wherever the Docker tests run.
SHELL_IMAGE = "debian:bookworm-slim"


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
