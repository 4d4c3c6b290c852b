"""Forward-only status changes on a real database: a late or duplicate update changes
nothing and records nothing; every change that happens is one event with who and why."""

from __future__ import annotations

from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory, transaction, write_sessions
from dockyard.jobs.states import advance
from dockyard.models import Run, RunEvent, RunState
from dockyard.settings import Settings


def test_late_and_duplicate_updates_cannot_move_a_run_back(migrated: Settings) -> None:
    engine = make_engine(migrated.db_url)
    writes = write_sessions(engine)
    try:
        with transaction(writes) as session:
            run = Run(owner="alice", image="i:1", command=["true"], cpu=1, memory_mb=64)
            session.add(run)
            session.flush()
            run_id = run.id
        steps = [
            (RunState.PENDING, True), (RunState.RUNNING, True),
            (RunState.PENDING, False),  # a late claim
            (RunState.RUNNING, False),  # a duplicate start
            (RunState.SUCCEEDED, True),
            (RunState.FAILED, False),  # a second outcome
            (RunState.CANCELLED, False),
        ]
        for target, expected in steps:
            with transaction(writes) as session:
                moved = advance(session, run_id, target, actor="worker:test", why=str(target),
                                exit_code=0)
            assert moved is expected, target
        with make_session_factory(engine)() as session:
            run = session.get(Run, run_id)
            assert run is not None and run.status == RunState.SUCCEEDED
            assert run.reason == "SUCCEEDED"  # a final state keeps its reason on the row
            events = list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id)
                                          .order_by(RunEvent.id)))
        assert [(e.from_status, e.to_status) for e in events] == [
            ("QUEUED", "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
        assert {e.actor for e in events} == {"worker:test"}
    finally:
        engine.dispose()
