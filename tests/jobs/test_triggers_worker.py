"""The worker's trigger thread in real worker processes on the local backend: schedules
(on time, once per tick with two workers on PostgreSQL, the missed and concurrency
policies), after-run chains, runs on new data (written by a run through the data API,
and with the worker killed while batches are committed) and backfills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dockyard.data import Actor, Catalog
from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.schedules import next_fire_time
from dockyard.jobs.schemas import JobLimits, RunIn
from dockyard.jobs.service import create_run, resume_definition
from dockyard.models import (
    FINAL_STATES,
    Backfill,
    DataTable,
    JobDefinition,
    PointerHistory,
    Run,
    RunEvent,
    RunState,
    TriggerCursor,
    TriggerFire,
    utcnow,
)
from dockyard.settings import Settings
from dockyard.web.auth import User
from dockyard.worker.triggers import IDLE_SECONDS
from tests.data.conftest import served
from tests.data.helpers import write_batch_files
from tests.jobs.conftest import eventually, log_file, unique_namespace
from tests.jobs.test_postgres_workers import postgres_url  # noqa: F401  (fixture)

EVERY_MINUTE = {"cron": "* * * * *", "timezone": "UTC"}
UNFINISHED = (RunState.QUEUED, RunState.PENDING, RunState.RUNNING)


class Installation:
    """One database and home, with worker processes started as an operator would
    (``dockyard worker`` with DOCKYARD_* variables) and stopped whatever the outcome:
    every unfinished run is cancelled first, so no local job outlives the test."""

    def __init__(self, settings: Settings, tmp_path: Path, **overrides: Any) -> None:
        self.settings = settings.model_copy(update={
            "job_backend": "local", "worker_poll_seconds": 0.2,
            "job_namespace": unique_namespace("tw"),
            "job_dockyard_url": "http://127.0.0.1:9/", **overrides})
        self.tmp_path = tmp_path
        self.engine = make_engine(self.settings.db_url)
        self.sessions = make_session_factory(self.engine)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    # -- worker processes --------------------------------------------------------------
    def start_worker(self, name: str = "tw1") -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env.update(
            # Local processes only: no image catalog to seed, so nothing on the engine.
            DOCKYARD_HOME=str(self.settings.home), DOCKYARD_JOB_BACKEND="local",
            DOCKYARD_SPAWNER="local",
            DOCKYARD_JOB_NAMESPACE=self.settings.job_namespace, DOCKYARD_WORKER_NAME=name,
            DOCKYARD_WORKER_POLL_SECONDS=str(self.settings.worker_poll_seconds),
            DOCKYARD_JOB_DOCKYARD_URL=self.settings.job_dockyard_url,
            DOCKYARD_MAX_CONCURRENT_RUNS="10", DOCKYARD_MAX_RUNS_PER_USER="10",
            DOCKYARD_LOG_LEVEL="DEBUG")
        if self.settings.database_url:
            env["DOCKYARD_DATABASE_URL"] = self.settings.database_url
        with open(self.tmp_path / f"worker-{name}.log", "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"],
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
        self.workers[name] = process
        return process

    def kill_worker(self, name: str = "tw1") -> None:
        process = self.workers.pop(name)
        assert process.poll() is None, self.worker_log(name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def worker_log(self, name: str = "tw1") -> str:
        return (self.tmp_path / f"worker-{name}.log").read_text(errors="replace")

    def close(self) -> None:
        try:
            with self.sessions() as session:
                session.execute(update(Run).where(Run.status.in_(UNFINISHED))
                                .values(cancel_requested=True))
                session.commit()
            if self.workers:
                self.wait_all_final(timeout=60)
        finally:
            for process in self.workers.values():
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
            self.engine.dispose()

    # -- the database ----------------------------------------------------------------
    def add_definition(self, name: str, command: str, **fields: Any) -> int:
        with self.sessions() as session:
            definition = JobDefinition(owner="alice", name=name, image="",
                                       command=["sh", "-c", command], cpu=0.5, memory_mb=256,
                                       **fields)
            session.add(definition)
            session.commit()
            return definition.id

    def schedule(self, definition_id: int, next_fire_at: Any) -> None:
        with self.sessions() as session:
            session.execute(update(JobDefinition).where(JobDefinition.id == definition_id)
                            .values(next_fire_at=next_fire_at))
            session.commit()

    def submit(self, command: str, definition_id: int | None = None) -> int:
        with self.sessions() as session:
            body = RunIn(command=None if definition_id else ["sh", "-c", command],
                         definition_id=definition_id, cpu=0.5, memory_mb=256)
            return create_run(session, User("alice"), body,
                              JobLimits.from_settings(self.settings)).id

    def runs(self, definition_id: int | None = None) -> list[Run]:
        with self.sessions() as session:
            query = select(Run).order_by(Run.id)
            if definition_id is not None:
                query = query.where(Run.definition_id == definition_id)
            return list(session.scalars(query))

    def fires(self, definition_id: int) -> list[TriggerFire]:
        with self.sessions() as session:
            return list(session.scalars(select(TriggerFire).where(
                TriggerFire.definition_id == definition_id).order_by(TriggerFire.id)))

    def run(self, run_id: int) -> Run:
        with self.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None
            return run

    def wait_final(self, run_id: int, timeout: float = 60) -> Run:
        return eventually(lambda: (run := self.run(run_id)).status in FINAL_STATES and run,
                          timeout=timeout)

    def wait_all_final(self, timeout: float = 60) -> None:
        eventually(lambda: all(run.status in FINAL_STATES for run in self.runs()),
                   timeout=timeout)

    def output(self, run_id: int) -> str:
        return log_file(self.settings, run_id).read_text()


@pytest.fixture
def sqlite_site(migrated: Settings, tmp_path: Path) -> Iterator[Installation]:
    site = Installation(migrated, tmp_path)
    yield site
    site.close()


@pytest.fixture
def postgres_site(postgres_url: str, migrated: Settings,  # noqa: F811
                  tmp_path: Path) -> Iterator[Installation]:
    # postgres_url first: the settings fixture clears the DOCKYARD_* variables.
    site = Installation(migrated, tmp_path, database_url=postgres_url)
    yield site
    site.close()


# -- schedules ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_minute_schedule_fires_in_its_minute_once_with_two_workers(
        postgres_site: Installation) -> None:
    site = postgres_site
    first_tick = next_fire_time(EVERY_MINUTE, utcnow())
    assert first_tick is not None
    definition_id = site.add_definition("every-minute", "echo tick=$DOCKYARD_SCHEDULED_TIME",
                                        schedule=EVERY_MINUTE, next_fire_at=first_tick)
    site.start_worker("tw1")
    site.start_worker("tw2")

    # The first tick's run, within its minute (the wait is the test's only clock).
    wait_until = (first_tick - utcnow()).total_seconds() + 12
    run = eventually(lambda: next(iter(site.runs(definition_id)), None), timeout=wait_until)
    assert run.trigger == {"kind": "schedule", "tick": first_tick.isoformat()}
    run = site.wait_final(run.id, timeout=30)
    assert run.status == RunState.SUCCEEDED, run.reason
    assert f"tick={first_tick.isoformat()}" in site.output(run.id)

    # Both workers were there for the tick; one run per tick, one fire per run.
    assert all(process.poll() is None for process in site.workers.values())
    runs = site.runs(definition_id)
    ticks = Counter(r.trigger["tick"] for r in runs if r.trigger)
    assert set(ticks.values()) == {1}, ticks
    fires = site.fires(definition_id)
    assert sorted(f.run_id for f in fires if f.outcome == "started") == [r.id for r in runs]


def test_missed_and_concurrency_policies(sqlite_site: Installation) -> None:
    site = sqlite_site
    now = utcnow()
    long_ago = now - timedelta(minutes=5)
    # A yearly schedule whose tick was five minutes ago: missed, and skipped.
    skip = site.add_definition("missed-skip", "true", schedule={
        "cron": "0 0 1 1 *", "timezone": "UTC", "missed": "skip"})
    once = site.add_definition("missed-once", "echo tick=$DOCKYARD_SCHEDULED_TIME",
                               schedule={**EVERY_MINUTE, "missed": "run_once"})
    forbid = site.add_definition("forbid", "sleep 120",
                                 schedule={**EVERY_MINUTE, "concurrency": "forbid"})
    replace = site.add_definition("replace", "sleep 120",
                                  schedule={**EVERY_MINUTE, "concurrency": "replace"})
    # A run of each overlap definition, running before its next tick.
    site.start_worker()
    old_forbid, old_replace = site.submit("", forbid), site.submit("", replace)
    eventually(lambda: all(site.run(r).status == RunState.RUNNING
                           for r in (old_forbid, old_replace)), timeout=30)
    site.schedule(skip, long_ago)
    site.schedule(once, long_ago)
    due = utcnow() - timedelta(seconds=1)
    site.schedule(forbid, due)
    site.schedule(replace, due)
    with site.sessions() as session:
        edited = {d.id: d.updated_at for d in session.scalars(select(JobDefinition))}

    def fired(definition_id: int) -> list[TriggerFire]:
        return site.fires(definition_id)

    # skip: the missed tick is recorded as skipped, nothing runs, the next tick is ahead.
    record = eventually(lambda: fired(skip), timeout=20)[0]
    assert record.outcome.startswith("skipped: missed"), record.outcome
    assert record.run_id is None and site.runs(skip) == []
    # run_once: five missed ticks, one run, for the latest of them.
    once_fires = eventually(lambda: fired(once), timeout=20)
    assert [f.outcome for f in once_fires][:1] == ["started"]
    once_run = site.wait_final(once_fires[0].run_id)
    assert once_run.status == RunState.SUCCEEDED
    tick = once_run.trigger["tick"]
    assert utcnow() - timedelta(minutes=2) < datetime.fromisoformat(tick) <= utcnow()
    assert f"tick={tick}" in site.output(once_run.id)
    # Exactly one run for the collapsed ticks (later runs are for later, real ticks).
    collapsed = [r.id for r in site.runs(once)
                 if datetime.fromisoformat(r.trigger["tick"]) <= datetime.fromisoformat(tick)]
    assert collapsed == [once_run.id]
    assert [f.key for f in fired(once) if f.key <= f"schedule:{tick}"] == [f"schedule:{tick}"]
    # forbid: the running run keeps running and the tick is skipped, saying why.
    forbid_fire = eventually(lambda: fired(forbid), timeout=20)[0]
    assert forbid_fire.outcome == "skipped: previous run still active"
    assert [r.id for r in site.runs(forbid)] == [old_forbid]
    assert site.run(old_forbid).status == RunState.RUNNING
    # replace: the running run is cancelled and the tick's run starts.
    replace_fire = eventually(lambda: fired(replace), timeout=20)[0]
    assert replace_fire.outcome == "started"
    assert site.wait_final(old_replace, timeout=30).status == RunState.CANCELLED
    eventually(lambda: site.run(replace_fire.run_id).status == RunState.RUNNING, timeout=30)
    # Each schedule moved on to a tick in the future.
    with site.sessions() as session:
        for definition_id in (skip, once, forbid, replace):
            definition = session.get(JobDefinition, definition_id)
            assert definition is not None and definition.next_fire_at is not None
            assert definition.next_fire_at > now
            # Firing is not an edit: the definition's updated_at stays.
            assert definition.updated_at == edited[definition_id]


def test_a_schedule_that_fails_keeps_its_real_tick(sqlite_site: Installation) -> None:
    site = sqlite_site
    # A zone that no longer exists (say, removed from the system's zone data): this
    # worker cannot work its ticks out, and must not make one up either.
    tick = utcnow() - timedelta(seconds=1)
    broken = site.add_definition("broken", "true", schedule={
        "cron": "* * * * *", "timezone": "Mars/Olympus"}, next_fire_at=tick)
    fine = site.add_definition("fine", "true", schedule=EVERY_MINUTE, next_fire_at=tick)
    site.start_worker()
    # The same passes reach both: once the good one has fired, the broken one was tried.
    eventually(lambda: site.fires(fine), timeout=30)
    eventually(lambda: f"Schedule of definition {broken} failed" in site.worker_log(),
               timeout=30)
    assert site.fires(broken) == [] and site.runs(broken) == []
    with site.sessions() as session:
        definition = session.get(JobDefinition, broken)
        # Its next tick is still the real one, not a made-up "now + retry delay".
        assert definition is not None and definition.next_fire_at == tick


# -- after a run -------------------------------------------------------------------------
def test_an_after_run_chain_of_three(sqlite_site: Installation) -> None:
    site = sqlite_site
    show = "echo upstream=$DOCKYARD_UPSTREAM_RUN_ID"
    a = site.add_definition("a", show)
    b = site.add_definition("b", show, after={"definition_id": a, "on": "succeeded"},
                            after_definition_id=a)
    c = site.add_definition("c", show, after={"definition_id": b, "on": "succeeded"},
                            after_definition_id=b)
    # A definition that follows only failures of a: never fires here.
    on_failure = site.add_definition("a-failed", show, after={"definition_id": a,
                                                              "on": "failed"},
                                     after_definition_id=a)
    site.start_worker()
    first = site.submit("", a)
    b_run = eventually(lambda: next(iter(site.runs(b)), None), timeout=60)
    c_run = eventually(lambda: next(iter(site.runs(c)), None), timeout=60)
    for run in (first, b_run.id, c_run.id):
        assert site.wait_final(run).status == RunState.SUCCEEDED
    assert site.run(first).trigger is None
    assert f"upstream={first}" in site.output(b_run.id)
    assert f"upstream={b_run.id}" in site.output(c_run.id)
    assert b_run.trigger == {"kind": "after", "run_id": first, "definition_id": a}
    assert c_run.trigger == {"kind": "after", "run_id": b_run.id, "definition_id": b}
    assert [len(site.runs(d)) for d in (a, b, c, on_failure)] == [1, 1, 1, 0]
    assert [f.key for f in site.fires(c)] == [f"after:{b_run.id}"]

    # SIGTERM stops the worker and its trigger thread cleanly.
    worker = site.workers.pop("tw1")
    worker.terminate()
    assert worker.wait(30) == 0, site.worker_log()
    assert "Worker stopped" in site.worker_log()


def test_a_run_that_ends_while_its_follower_is_paused_never_fires_it(
        sqlite_site: Installation) -> None:
    site = sqlite_site
    upstream = site.add_definition("up", "true")
    follower = site.add_definition("follows", "true", paused=True,
                                   after={"definition_id": upstream, "on": "succeeded"},
                                   after_definition_id=upstream)
    site.start_worker()
    while_paused = site.submit("", upstream)
    assert site.wait_final(while_paused).status == RunState.SUCCEEDED
    time.sleep(3 * IDLE_SECONDS)  # passes of the trigger thread while it is paused
    with site.sessions() as session:  # resumed as the API and the page do it
        resume_definition(session, User("alice"), follower)
    after_resume = site.submit("", upstream)
    fired = eventually(lambda: site.runs(follower), timeout=60)
    # Only the run that ended after the resume; the one that ended within the trigger
    # thread's look-back window but while paused is never fired.
    assert [run.trigger["run_id"] for run in fired] == [after_resume]
    assert [f.key for f in site.fires(follower)] == [f"after:{after_resume}"]


# -- new data ----------------------------------------------------------------------------
STORE = ("import pandas as pd; from dockyard_data import Client; "
         "print(Client().store_dataframe(pd.DataFrame({'x': [1, 2]}), 'sales', 'orders', "
         "partition={'day': '20240102'})['batch_id'])")


def test_a_batch_written_by_a_run_fires_its_definition_once(sqlite_site: Installation,
                                                            tmp_path: Path) -> None:
    from dockyard_data import Client, ClientConfig

    from dockyard.web import create_app
    from tests.conftest import USERS, TokenTable

    site = sqlite_site
    app = create_app(site.settings, identity=TokenTable(dict(USERS)))
    with served(app) as url:
        site.settings = site.settings.model_copy(update={"job_dockyard_url": url + "/"})
        alice = Client(config=ClientConfig(url=url, token="tok-alice"))
        import pandas as pd

        # A batch from before the definition exists: the trigger does not look back.
        first = alice.store_dataframe(pd.DataFrame({"x": [0]}), "sales", "orders",
                                      partition={"day": "20240102"})
        with site.sessions() as session:
            table_id = session.scalar(select(DataTable.id).where(DataTable.name == "orders"))
        watcher = site.add_definition(
            "on-orders", "echo batch=$DOCKYARD_TRIGGER_BATCH_ID "
                         "partition=$DOCKYARD_TRIGGER_PARTITION",
            on_batch={"namespace": "sales", "table": "orders", "partition": {"day": "2024*"}},
            on_batch_table_id=table_id)
        other_days = site.add_definition(
            "on-other-days", "true", on_batch_table_id=table_id,
            on_batch={"namespace": "sales", "table": "orders", "partition": {"day": "1999*"}})
        site.start_worker()
        writer = site.submit(f"python -c \"{STORE}\"")
        assert site.wait_final(writer).status == RunState.SUCCEEDED, site.output(writer)
        batch_id = site.output(writer).strip().splitlines()[-1]

        fired = eventually(lambda: next(iter(site.runs(watcher)), None), timeout=30)
        run = site.wait_final(fired.id)
        assert run.status == RunState.SUCCEEDED
        assert f"batch={batch_id} partition=day=20240102" in site.output(run.id)
        assert run.trigger == {"kind": "batch", "namespace": "sales", "table": "orders",
                               "partition": "day=20240102", "batch_id": batch_id}

        # A rollback moves the pointer back to the first batch: it does not fire.
        alice.rollback("sales", "orders", {"day": "20240102"})
        # A batch no trigger matches, committed after the rollback: once the worker has
        # scanned past it, it has seen the rollback too.
        later = alice.store_dataframe(pd.DataFrame({"x": [3]}), "sales", "orders",
                                      partition={"day": "30000101"})
        with site.sessions() as session:
            last = session.scalar(select(PointerHistory.id).order_by(PointerHistory.id.desc()))
        eventually(lambda: site_cursor(site, "batches") >= last, timeout=30)
        with site.sessions() as session:
            history = list(session.scalars(select(PointerHistory.action)
                                           .order_by(PointerHistory.id)))
        assert [a.value for a in history] == ["commit", "commit", "rollback", "commit"]
        assert [r.id for r in site.runs(watcher)] == [run.id]
        assert [f.key for f in site.fires(watcher)] == [f"batch:{batch_id}"]
        assert site.runs(other_days) == []
        assert len({first["batch_id"], batch_id, later["batch_id"]}) == 3


def test_a_trigger_added_by_an_edit_does_not_fire_for_earlier_batches(
        sqlite_site: Installation) -> None:
    site = sqlite_site
    catalog = Catalog.from_settings(site.settings)
    actor = Actor("alice", admin=False)

    def commit(day: str) -> tuple[str, int]:
        began = catalog.begin_batch(actor, "events", "views", {"day": day})
        write_batch_files(began.location, {"x": [1]})
        catalog.commit_batch(actor, "events", "views", began.batch_id)
        with site.sessions() as session:
            last = session.scalar(select(PointerHistory.id).order_by(PointerHistory.id.desc()))
        return began.batch_id, int(last)

    try:
        # The definition exists first, without a trigger. With nobody following new
        # batches the worker does not scan them (nor write its cursor on every pass): the
        # cursor stays before the earlier batch, which the first scan will therefore see.
        commit("0")
        definition_id = site.add_definition("edited", "true")
        site.start_worker()
        start = eventually(lambda: site_cursor(site, "batches"), timeout=30)
        earlier, position = commit("1")
        time.sleep(3 * IDLE_SECONDS)  # passes of the worker's trigger thread
        assert start <= site_cursor(site, "batches") < position
        # The edit that adds on_batch, as the service saves it: the worker's first scan
        # after it reads the earlier batch too.
        with site.sessions() as session:
            table_id = session.scalar(select(DataTable.id).where(DataTable.name == "views"))
            session.execute(update(JobDefinition).where(JobDefinition.id == definition_id)
                            .values(on_batch={"namespace": "events", "table": "views",
                                              "partition": {}},
                                    on_batch_table_id=table_id, triggers_since=utcnow()))
            session.commit()
        later, _ = commit("2")
        fired = eventually(lambda: site.runs(definition_id), timeout=30)
        # The pass that fired the later batch looked at the earlier one too.
        assert [r.trigger["batch_id"] for r in fired] == [later]
        assert [f.key for f in site.fires(definition_id)] == [f"batch:{later}"]
        assert earlier != later
    finally:
        catalog.engine.dispose()


def site_cursor(site: Installation, name: str) -> int:
    with site.sessions() as session:
        return int(session.scalar(select(TriggerCursor.position)
                                  .where(TriggerCursor.name == name)) or 0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_site(request: pytest.FixtureRequest) -> Installation:
    return request.getfixturevalue(f"{request.param}_site")


def test_batches_fire_exactly_once_while_the_worker_is_killed(any_site: Installation) -> None:
    """On SQLite one worker; on PostgreSQL two, one of them killed each time."""
    site = any_site
    two = site.settings.database_url.startswith("postgresql")
    catalog = Catalog.from_settings(site.settings)
    actor = Actor("alice", admin=False)
    began = catalog.begin_batch(actor, "events", "clicks", {"day": "0"})
    write_batch_files(began.location, {"x": [0]})
    catalog.commit_batch(actor, "events", "clicks", began.batch_id)
    before_the_definition = began.batch_id
    with site.sessions() as session:
        table_id = session.scalar(select(DataTable.id).where(DataTable.name == "clicks"))
    watcher = site.add_definition(
        "on-clicks", "echo batch=$DOCKYARD_TRIGGER_BATCH_ID", on_batch_table_id=table_id,
        on_batch={"namespace": "events", "table": "clicks", "partition": {"day": "*"}})
    rng = random.Random(16)
    committed = []
    site.start_worker()
    if two:
        site.start_worker("tw2")
    for index in range(1, 11):
        # The restarted worker is scanning again (it has taken up the last batch)...
        with site.sessions() as session:
            last = session.scalar(select(PointerHistory.id).order_by(PointerHistory.id.desc()))
        eventually(lambda last=last: site_cursor(site, "batches") >= last, timeout=60)
        began = catalog.begin_batch(actor, "events", "clicks", {"day": str(index)})
        write_batch_files(began.location, {"x": [index]})
        catalog.commit_batch(actor, "events", "clicks", began.batch_id)
        committed.append(began.batch_id)
        # ...and is killed right after the commit or a moment later: before the firing
        # (its pass comes at least every second), while it fires, or after.
        time.sleep(rng.uniform(0, 1.2))
        victim = "tw2" if two and index % 2 else "tw1"
        site.kill_worker(victim)
        site.start_worker(victim)
    eventually(lambda: {r.trigger["batch_id"] for r in site.runs(watcher)} >= set(committed),
               timeout=90)
    site.wait_all_final(timeout=90)
    runs = site.runs(watcher)
    per_batch = Counter(r.trigger["batch_id"] for r in runs)
    assert all(per_batch[b] == 1 for b in committed), per_batch
    keys = Counter(f.key for f in site.fires(watcher))
    assert all(keys[f"batch:{b}"] == 1 for b in committed), keys
    # The batch committed before the definition existed never fired.
    assert before_the_definition not in per_batch
    assert f"batch:{before_the_definition}" not in keys
    for run in runs:
        assert run.status == RunState.SUCCEEDED, run.reason
        assert f"batch={run.trigger['batch_id']}" in site.output(run.id)
    catalog.engine.dispose()


# -- backfills ---------------------------------------------------------------------------
def test_a_backfill_runs_two_at_a_time_one_run_per_item(sqlite_site: Installation) -> None:
    site = sqlite_site
    definition_id = site.add_definition("daily", "sleep 1; echo day=$DOCKYARD_SCHEDULED_TIME",
                                        schedule=EVERY_MINUTE)
    items = [{"tick": f"2024-01-0{day}T00:00:00+00:00"} for day in range(1, 8)]
    with site.sessions() as session:
        backfill = Backfill(definition_id=definition_id, owner="alice", items=items,
                            max_parallel=2)
        session.add(backfill)
        session.commit()
        backfill_id = backfill.id
    site.start_worker()

    def finished() -> bool:
        with site.sessions() as session:
            found = session.get(Backfill, backfill_id)
            return found is not None and found.finished_at is not None

    eventually(finished, timeout=120)
    runs = site.runs(definition_id)
    assert sorted(r.trigger["item"]["tick"] for r in runs) == [i["tick"] for i in items]
    assert all(r.status == RunState.SUCCEEDED for r in runs)
    assert all(r.trigger["backfill_id"] == backfill_id for r in runs)
    # Replaying queued and final events in order: never more than two at once.
    ids = {r.id for r in runs}
    with site.sessions() as session:
        events = list(session.scalars(select(RunEvent).where(RunEvent.run_id.in_(ids))
                                      .order_by(RunEvent.id)))
    finals = {s.value for s in FINAL_STATES}
    active = peak = 0
    for event in events:
        if event.from_status is None:
            active += 1
        elif event.to_status in finals and event.from_status != event.to_status:
            active -= 1
        peak = max(peak, active)
    assert peak == 2
    for run in runs:
        assert f"day={run.trigger['item']['tick']}" in site.output(run.id)


# -- what a fired run is told, which batches fire ------------------------------------------
def test_trigger_env_and_batch_matching() -> None:
    from dockyard.jobs.triggers import after_matches, batch_matches, trigger_env

    assert trigger_env(None) == {}
    assert trigger_env({"kind": "after", "run_id": 12, "definition_id": 7}) == {
        "DOCKYARD_UPSTREAM_RUN_ID": "12"}
    batch = {"namespace": "sales", "table": "orders", "partition": "date=2024-01-01",
             "batch_id": "01ABC"}
    assert trigger_env({"kind": "batch", **batch}) == {
        "DOCKYARD_TRIGGER_NAMESPACE": "sales", "DOCKYARD_TRIGGER_TABLE": "orders",
        "DOCKYARD_TRIGGER_PARTITION": "date=2024-01-01", "DOCKYARD_TRIGGER_BATCH_ID": "01ABC"}
    assert trigger_env({"kind": "schedule", "tick": "2024-01-01T06:00:00+00:00"}) == {
        "DOCKYARD_SCHEDULED_TIME": "2024-01-01T06:00:00+00:00"}
    assert trigger_env({"kind": "backfill", "backfill_id": 3, "item": batch}) == {
        "DOCKYARD_BACKFILL_ID": "3", **trigger_env({"kind": "batch", **batch})}
    assert trigger_env({"kind": "backfill", "backfill_id": 3,
                        "item": {"tick": "2024-01-02T00:00:00+00:00"}}) == {
        "DOCKYARD_BACKFILL_ID": "3", "DOCKYARD_SCHEDULED_TIME": "2024-01-02T00:00:00+00:00"}

    on = {"namespace": "sales", "table": "orders", "partition": {"date": "2024-01-*"}}
    assert batch_matches(on, "sales", "orders", {"date": "2024-01-31", "region": "eu"})
    assert not batch_matches(on, "sales", "orders", {"date": "2024-02-01"})
    assert not batch_matches(on, "sales", "orders", {"region": "eu"})
    assert not batch_matches(on, "sales", "returns", {"date": "2024-01-01"})
    assert batch_matches({"namespace": "sales", "table": "orders"}, "sales", "orders", {})
    exact = {"namespace": "s", "table": "t", "partition": {"code": "[x]"}}
    assert batch_matches(exact, "s", "t", {"code": "[x]"})  # an exact value, not a pattern

    assert after_matches("succeeded", RunState.SUCCEEDED)
    assert not after_matches("succeeded", RunState.FAILED)
    assert after_matches("failed", RunState.TIMED_OUT)
    assert not after_matches("failed", RunState.CANCELLED)
    assert all(after_matches("finished", state) for state in FINAL_STATES)


def test_an_automatic_retry_is_waited_for(sqlite_site: Installation, tmp_path: Path) -> None:
    site = sqlite_site
    marker = tmp_path / "failed-once"
    flaky = site.add_definition(
        "flaky", f"if [ -f {marker} ]; then exit 0; fi; touch {marker}; exit 3",
        max_retries=1)
    on_success = site.add_definition("on-success", "echo up=$DOCKYARD_UPSTREAM_RUN_ID",
                                     after={"definition_id": flaky, "on": "succeeded"},
                                     after_definition_id=flaky)
    on_failure = site.add_definition("on-failure", "true",
                                     after={"definition_id": flaky, "on": "failed"},
                                     after_definition_id=flaky)
    site.start_worker()
    first = site.submit("", flaky)
    retry = eventually(lambda: next((r for r in site.runs(flaky) if r.retry_of_id == first),
                                    None), timeout=60)
    assert site.wait_final(first).status == RunState.FAILED
    assert site.wait_final(retry.id).status == RunState.SUCCEEDED
    follower = eventually(lambda: next(iter(site.runs(on_success)), None), timeout=30)
    assert follower.trigger["run_id"] == retry.id
    assert site.wait_final(follower.id).status == RunState.SUCCEEDED
    # The failed first attempt was retried: "on failed" does not follow it.
    assert [f.key for f in site.fires(on_failure)] == []
    assert site.runs(on_failure) == []
