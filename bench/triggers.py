"""Triggers benchmark: many schedules due in the same minute, against a bare start of as
many runs at the same parallelism, in the same run.

The worker runs as its own process on the local backend (a trivial command, ``true``,
so the job itself costs next to nothing), on SQLite as with ``make up`` (or on
PostgreSQL with ``--database-url``).

1. Bare start: ``--definitions`` runs queued at once, in one transaction, at T0;
   lateness = RUNNING − T0.
2. Schedules: as many definitions scheduled ``* * * * *``, all due at the same tick T;
   lateness = RUNNING − T. Counted: fired (one run per definition for the tick).
   Reported: p50/p95 of both, the difference (goal: p95 ≤ 1 s beyond the bare start),
   and the worker's CPU seconds in each phase and while 1,000 schedules wait idle.

    .venv/bin/python bench/triggers.py [--definitions 1000] [--parallel 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Results, percentile, summary  # noqa: E402


def start_worker(home: Path, database_url: str, parallel: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(home), DOCKYARD_JOB_BACKEND="local",
               DOCKYARD_JOB_NAMESPACE="bt" + os.urandom(4).hex(), DOCKYARD_LOG_LEVEL="WARNING",
               DOCKYARD_MAX_CONCURRENT_RUNS=str(parallel),
               DOCKYARD_MAX_RUNS_PER_USER=str(parallel), DOCKYARD_WORKER_POLL_SECONDS="0.2",
               DOCKYARD_JOB_DOCKYARD_URL="http://127.0.0.1:9/")
    if database_url:
        env["DOCKYARD_DATABASE_URL"] = database_url
    log = open(home / "worker.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def cpu_seconds(pid: int) -> float:
    """The process's own user + system CPU time (its jobs are not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running_at(sessions: object, ids: list[int]) -> dict[int, datetime]:
    from sqlalchemy import select

    from dockyard.models import RunEvent

    with sessions() as session:  # type: ignore[operator]
        return dict(session.execute(
            select(RunEvent.run_id, RunEvent.at)
            .where(RunEvent.run_id.in_(ids), RunEvent.to_status == "RUNNING")).all())


def wait_final(sessions: object, ids: list[int], timeout: float) -> None:
    from sqlalchemy import func, select

    from dockyard.models import FINAL_STATES, Run, RunState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:  # type: ignore[operator]
            left = session.scalar(select(func.count()).where(
                Run.id.in_(ids), Run.status.not_in(FINAL_STATES)))
            failed = session.scalar(select(func.count()).where(
                Run.id.in_(ids), Run.status != RunState.SUCCEEDED))
        if not left:
            if failed:
                raise RuntimeError(f"{failed} runs did not succeed; see the worker log")
            return
        time.sleep(0.2)
    raise TimeoutError("runs did not finish")


def bare_start(sessions: object, n: int) -> tuple[list[float], list[int]]:
    from dockyard.models import Run, RunEvent, RunState, utcnow

    with sessions() as session:  # type: ignore[operator]
        runs = [Run(owner="alice", image="", command=["true"], cpu=0.1, memory_mb=64,
                    status=RunState.QUEUED,
                    events=[RunEvent(from_status=None, to_status="QUEUED", actor="alice",
                                     reason="submitted")]) for _ in range(n)]
        session.add_all(runs)
        session.flush()
        t0 = utcnow()
        session.commit()
        ids = [run.id for run in runs]
    return [(at - t0).total_seconds() for at in _wait_running(sessions, ids)], ids


def _wait_running(sessions: object, ids: list[int]) -> list[datetime]:
    wait_final(sessions, ids, timeout=1800)
    found = running_at(sessions, ids)
    return [found[run_id] for run_id in ids]


def scheduled(sessions: object, n: int) -> tuple[list[float], int, list[int]]:
    from sqlalchemy import func, select, update

    from dockyard.jobs.schedules import next_fire_time
    from dockyard.models import JobDefinition, Run, TriggerFire, utcnow

    schedule = {"cron": "* * * * *", "timezone": "UTC"}
    tick = next_fire_time(schedule, utcnow() + timedelta(seconds=15))
    assert tick is not None
    with sessions() as session:  # type: ignore[operator]
        session.add_all(JobDefinition(owner="alice", name=f"every-minute-{index}", image="",
                                      command=["true"], cpu=0.1, memory_mb=64,
                                      schedule=schedule, next_fire_at=tick)
                        for index in range(n))
        session.commit()
    print(f"   {n} definitions due at {tick.isoformat()} "
          f"(in {(tick - utcnow()).total_seconds():.0f} s)")
    key = f"schedule:{tick.isoformat()}"
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        with sessions() as session:  # type: ignore[operator]
            fired = session.scalar(select(func.count()).select_from(TriggerFire)
                                   .where(TriggerFire.key == key)) or 0
        if fired >= n:
            break
        time.sleep(0.2)
    with sessions() as session:  # type: ignore[operator]
        # One tick is measured: the next ones would only queue behind it.
        session.execute(update(JobDefinition).values(paused=True, next_fire_at=None))
        session.commit()
        ids = list(session.scalars(select(TriggerFire.run_id).where(TriggerFire.key == key)))
        runs = session.scalar(select(func.count()).select_from(Run)
                              .where(Run.id.in_(ids))) or 0
        fired_by = session.scalar(select(func.max(TriggerFire.at))
                                  .where(TriggerFire.key == key))
    print(f"   all {n} fired by tick + {(fired_by - tick).total_seconds():.2f} s")
    lateness = [(at - tick).total_seconds() for at in _wait_running(sessions, ids)]
    return lateness, runs, ids


def idle_cpu(sessions: object, worker: subprocess.Popen[bytes], n: int,
             seconds: float) -> float:
    """The worker's CPU over ``seconds`` while ``n`` schedules wait for a later tick."""
    from sqlalchemy import update

    from dockyard.models import JobDefinition, utcnow

    with sessions() as session:  # type: ignore[operator]
        session.execute(update(JobDefinition).values(
            paused=False, next_fire_at=utcnow() + timedelta(days=1)))
        session.commit()
    before = cpu_seconds(worker.pid)
    time.sleep(seconds)
    return cpu_seconds(worker.pid) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definitions", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=20,
                        help="DOCKYARD_MAX_CONCURRENT_RUNS (and per user) of the worker")
    parser.add_argument("--database-url", default="",
                        help="an empty PostgreSQL database (default: SQLite in a temp home)")
    parser.add_argument("--quick", action="store_true", help="200 definitions")
    args = parser.parse_args()
    if args.quick:
        args.definitions = min(args.definitions, 200)
    results = Results("triggers")

    from dockyard.db import make_engine, make_session_factory
    from dockyard.migrate import upgrade
    from dockyard.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-triggers-"))
    settings = Settings(home=home, database_url=args.database_url)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    sessions = make_session_factory(engine)
    worker = start_worker(home, args.database_url, args.parallel)
    n = args.definitions
    try:
        time.sleep(3)  # the worker's start (imports, reconcile) is not what is measured
        print(f"1. bare start: {n} runs queued at once, {args.parallel} in parallel")
        cpu = cpu_seconds(worker.pid)
        bare, _ = bare_start(sessions, n)
        bare_cpu = cpu_seconds(worker.pid) - cpu
        print(f"   RUNNING − queued    {summary(bare)}   first {min(bare):.2f} s   "
              f"worker CPU {bare_cpu:.1f} s")

        print(f"\n2. schedules: {n} definitions '* * * * *' due in the same minute")
        cpu = cpu_seconds(worker.pid)
        late, runs, _ = scheduled(sessions, n)
        fired_cpu = cpu_seconds(worker.pid) - cpu
        print(f"   fired {runs} of {n}")
        print(f"   RUNNING − tick      {summary(late)}   first {min(late):.2f} s   "
              f"worker CPU {fired_cpu:.1f} s (including the wait for the tick)")
        extra = percentile(late, 0.95) - percentile(bare, 0.95)
        print(f"   p95 beyond the bare start: {extra:+.2f} s (goal ≤ 1 s)")
        results.add(f"{n} schedules due at once: RUNNING − tick p95", percentile(late, 0.95),
                    unit="s", baseline=percentile(bare, 0.95),
                    baseline_name="as many runs queued at once",
                    goal_value=percentile(bare, 0.95) + 1.0,
                    note="goal: ≤ 1 s beyond the bare start")
        results.add("schedules fired once for the tick", runs, unit="runs", better="higher",
                    goal_value=n)

        idle = idle_cpu(sessions, worker, n, 20)
        print(f"\n3. worker CPU while {n} schedules wait: {idle / 20 * 100:.1f} % of a core")
        results.add(f"worker CPU while {n} schedules wait", idle / 20 * 100, unit="% of a core")
        results.write()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        engine.dispose()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
