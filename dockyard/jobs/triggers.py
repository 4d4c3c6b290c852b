"""Firing a definition's triggers: the once-only record of each firing (``trigger_fires``,
unique per definition and key), what a fired run's job is told about what fired it, and
which batches and upstream outcomes a definition's triggers answer to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dockyard.jobs.pools import PoolPolicy
from dockyard.jobs.service import partition_matches, run_from_definition
from dockyard.models import JobDefinition, Run, RunState, TriggerFire

#: Which final states each ``after.on`` answers to. A cancelled run was stopped on
#: purpose: only "finished" follows it.
AFTER_OUTCOMES: dict[str, frozenset[RunState]] = {
    "succeeded": frozenset({RunState.SUCCEEDED}),
    "failed": frozenset({RunState.FAILED, RunState.TIMED_OUT}),
    "finished": frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT,
                           RunState.CANCELLED}),
}


def schedule_key(tick_iso: str) -> str:
    return f"schedule:{tick_iso}"


def after_key(upstream_run_id: int) -> str:
    return f"after:{upstream_run_id}"


def batch_key(batch_id: str) -> str:
    return f"batch:{batch_id}"


def backfill_key(backfill_id: int, index: int) -> str:
    return f"backfill:{backfill_id}:{index}"


def _claim_key(session: Session, definition: JobDefinition, key: str, outcome: str) -> \
        TriggerFire | None:
    """Insert the (definition, key) record in a SAVEPOINT; None when it exists already
    (another worker, or this one before a restart, fired it)."""
    try:
        with session.begin_nested():
            record = TriggerFire(definition_id=definition.id, key=key, outcome=outcome)
            session.add(record)
            session.flush()
    except IntegrityError:
        return None
    return record


def fire(session: Session, definition: JobDefinition, key: str, trigger: dict[str, Any], *,
         actor: str, reason: str, pools: PoolPolicy | None = None) -> Run | None:
    """Queue one run of ``definition`` for ``key``, once ever: the unique (definition, key)
    row is inserted in the same transaction as the run, so a second firing (another
    worker, or a restart before the commit) finds it and returns None. The caller
    commits. With ``pools``, a pool the owner may no longer use fails the run, saying so.

    All of it is one SAVEPOINT: when making the run fails, the key is not kept either, so
    no caller can commit a firing without its run."""
    with session.begin_nested():
        record = _claim_key(session, definition, key, "started")
        if record is None:
            return None
        run = run_from_definition(session, definition, trigger=trigger, actor=actor,
                                  reason=reason, pools=pools)
        record.run_id = run.id
        session.flush()
    return run


def record_skip(session: Session, definition: JobDefinition, key: str, why: str) -> bool:
    """Record that ``key`` did not fire and why (a forbidden overlap); False when it was
    recorded or fired already."""
    return _claim_key(session, definition, key, f"skipped: {why}"[:255]) is not None


def trigger_env(trigger: Mapping[str, Any] | None) -> dict[str, str]:
    """What a fired run's job gets in its environment about what fired it."""
    if not trigger:
        return {}
    kind = trigger.get("kind")
    env: dict[str, str] = {}
    if kind == "backfill":
        env["DOCKYARD_BACKFILL_ID"] = str(trigger["backfill_id"])
        item = trigger.get("item") or {}
        # A backfill item looks like what the live trigger would have fired with.
        env.update(trigger_env({"kind": "batch" if "batch_id" in item else "schedule", **item}))
    elif kind == "schedule":
        env["DOCKYARD_SCHEDULED_TIME"] = str(trigger["tick"])
    elif kind == "after":
        env["DOCKYARD_UPSTREAM_RUN_ID"] = str(trigger["run_id"])
    elif kind == "batch":
        env.update(
            DOCKYARD_TRIGGER_NAMESPACE=str(trigger["namespace"]),
            DOCKYARD_TRIGGER_TABLE=str(trigger["table"]),
            DOCKYARD_TRIGGER_PARTITION=str(trigger.get("partition") or ""),
            DOCKYARD_TRIGGER_BATCH_ID=str(trigger["batch_id"]),
        )
    return env


def partition_values(partition: str) -> dict[str, str]:
    """The values of a canonical partition string ("date=2024-01-01/region=eu")."""
    values: dict[str, str] = {}
    for part in partition.split("/") if partition else []:
        key, _, value = part.partition("=")
        values[key] = value
    return values


def batch_matches(on_batch: Mapping[str, Any], namespace: str, table: str,
                  values: Mapping[str, Any]) -> bool:
    """Whether a committed batch of ``namespace.table`` with partition ``values`` fires an
    ``on_batch`` trigger: same table, and each key it names is the exact value or matches
    the fnmatch pattern (keys it does not name match anything)."""
    if on_batch.get("namespace") != namespace or on_batch.get("table") != table:
        return False
    return partition_matches(on_batch.get("partition") or {}, values)


def after_matches(on: str, status: RunState) -> bool:
    """Whether an upstream run that ended ``status`` fires an ``after`` trigger with ``on``."""
    return status in AFTER_OUTCOMES.get(on, frozenset())


def retried_automatically(session: Session, run: Run) -> bool:
    """Whether a later attempt of ``run`` exists: then its outcome is the one that counts
    (the worker queues it in the transaction that ends ``run``, so this is never early)."""
    first = run.retry_of_id or run.id
    return session.scalar(
        select(Run.id).where(Run.retry_of_id == first, Run.attempt > run.attempt).limit(1)
    ) is not None


def fires_after(session: Session, run: Run, on: str) -> bool:
    """The after-run decision: the outcome matches ``on``, and no retry attempt follows."""
    return after_matches(on, run.status) and not retried_automatically(session, run)
