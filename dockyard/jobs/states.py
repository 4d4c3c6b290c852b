"""How a run's status may change: forward only, each change recorded with who and why.

    QUEUED → PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED | TIMED_OUT

A change is a compare-and-swap on the row (``UPDATE … WHERE status = <what we read>``),
so a late or duplicate update (a second worker, an event that arrives after the final
status) can never move a run back or record two outcomes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dockyard.models import FINAL_STATES, Run, RunEvent, RunState
from spawner.jobs.base import EngineState, JobStatus

log = logging.getLogger(__name__)

RANK = {
    RunState.QUEUED: 0,
    RunState.PENDING: 1,
    RunState.RUNNING: 2,
    RunState.SUCCEEDED: 3,
    RunState.FAILED: 3,
    RunState.CANCELLED: 3,
    RunState.TIMED_OUT: 3,
}
ACTIVE_STATES = (RunState.PENDING, RunState.RUNNING)


def may_advance(current: RunState, target: RunState) -> bool:
    return RANK[target] > RANK[current]


def advance(session: Session, run_id: int, target: RunState, *, actor: str, why: str = "",
            **values: Any) -> bool:
    """Move the run to ``target`` if that is forward from where it is; record the event
    (and, for a final state, keep ``why`` as the run's reason).

    Returns False (and changes nothing) when the run is already at or past ``target``.
    """
    row = session.execute(select(Run.status, Run.owner).where(Run.id == run_id)).one_or_none()
    if row is None or not may_advance(row.status, target):
        return False
    current = row.status
    if target in FINAL_STATES:
        values.setdefault("reason", why)
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == current)
        .values(status=target, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # someone else moved it between our read and our write
        return False
    session.add(RunEvent(run_id=run_id, from_status=current.value, to_status=target.value,
                         actor=actor, reason=why))
    # One log line per transition, naming the run and its owner.
    log.info("Run %s: %s -> %s by %s%s", run_id, current.value, target.value, actor,
             f": {why}" if why else "", extra={"run_id": run_id, "user": row.owner})
    return True


def deadline_of(started_at: datetime | None, timeout_seconds: int | None,
                max_timeout_seconds: int) -> datetime | None:
    """When a running run must be stopped; runs without a timeout get the admin's maximum."""
    if started_at is None:
        return None
    return started_at + timedelta(seconds=timeout_seconds or max_timeout_seconds)


def outcome(status: JobStatus, *, intent: RunState | None, cancel_requested: bool,
            deadline: datetime | None) -> tuple[RunState, str]:
    """The final state of a run whose job has ended, and the reason shown to its owner.

    ``intent`` is why the worker stopped the job, when it did (CANCELLED, TIMED_OUT).
    After a worker restart the intent is rebuilt from the row: a cancel request, or a
    job that ended unsuccessfully after its deadline.
    """
    code = status.exit_code
    detail = f"exit code {code}" if code is not None else "no exit code"
    if status.reason:
        detail += f"; {status.reason}"
    if status.state == EngineState.MISSING:
        if intent == RunState.CANCELLED or cancel_requested:
            return RunState.CANCELLED, "cancelled; the job was already gone from the engine"
        return RunState.FAILED, f"the job vanished from the engine ({status.reason or 'no record'})"
    if intent == RunState.CANCELLED:
        return RunState.CANCELLED, f"cancelled on request; stopped with {detail}"
    if intent == RunState.TIMED_OUT:
        return RunState.TIMED_OUT, f"exceeded its timeout and was stopped ({detail})"
    if code == 0:
        return RunState.SUCCEEDED, status.reason
    if cancel_requested:
        return RunState.CANCELLED, f"cancelled on request; stopped with {detail}"
    finished = status.finished_at
    if deadline is not None and finished is not None and finished >= deadline:
        return RunState.TIMED_OUT, f"exceeded its timeout and was stopped ({detail})"
    return RunState.FAILED, detail
