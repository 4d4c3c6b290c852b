"""The worker's trigger thread: fires definitions' schedules, after-run chains, batches of
new data and backfills, by queueing runs the loop then claims.

Every firing is a (definition, key) row inserted in the transaction that queues its run
(``dockyard.jobs.triggers.fire``): two workers, or a worker killed at any point, can never
fire the same tick, upstream run, batch or backfill item twice. The scans of run events
and pointer history keep a cursor (``trigger_cursors``) and also look again at the last
``RESCAN_SECONDS``, because transactions commit out of id order; the unique key makes
that second look harmless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from dockyard.db import transaction
from dockyard.jobs.pools import PoolPolicy
from dockyard.jobs.schedules import fire_times
from dockyard.jobs.service import backfill_active
from dockyard.jobs.triggers import (
    after_key,
    backfill_key,
    batch_key,
    batch_matches,
    fire,
    fires_after,
    partition_values,
    record_skip,
    schedule_key,
)
from dockyard.models import (
    FINAL_STATES,
    Backfill,
    Batch,
    DataTable,
    JobDefinition,
    PointerAction,
    PointerHistory,
    Run,
    RunEvent,
    RunState,
    TriggerCursor,
    TriggerFire,
    utcnow,
)
from dockyard.worker.context import WorkerContext

log = logging.getLogger(__name__)

#: Every pass looks again at the run events and pointer history of this many seconds.
RESCAN_SECONDS = 60
#: The longest the thread sleeps between passes (new run events and batches wait this long).
IDLE_SECONDS = 1.0
#: When a schedule could not be worked out or fired, this thread tries it again this much
#: later (its ``next_fire_at`` stays on the real tick).
RETRY_SECONDS = 60
#: The shortest sleep between passes.
MIN_SLEEP_SECONDS = 0.02
#: Due schedules fired per transaction: the loop claims the first runs while the next
#: are fired (on SQLite the firing holds the write lock).
SCHEDULES_PER_TRANSACTION = 50
#: On SQLite, the pause between two such transactions. A writer waiting for the lock
#: sleeps in SQLite's busy handler (up to 100 ms at a time) and would miss a shorter gap:
#: without it the loop claimed nothing until all 1,000 schedules of a tick were fired.
SQLITE_HANDOFF_SECONDS = 0.12
#: Rows one pass takes from each scan; the rest wait for the next pass (which a worker
#: starts after its usual sleep, at most IDLE_SECONDS).
SCAN_LIMIT = 500
#: How far back a "missed" look for the latest due tick goes after a long downtime.
MISSED_LOOKBACK = timedelta(days=2)
UNFINISHED = (RunState.QUEUED, RunState.PENDING, RunState.RUNNING)
_FINAL_VALUES = tuple(state.value for state in FINAL_STATES)


#: The due ticks of a schedule (oldest first) and its first tick after now (None: never).
_Ticks = tuple[list[datetime], datetime | None]


def tick_iso(tick: datetime) -> str:
    """A tick as every worker writes it in keys and triggers (ISO, UTC)."""
    return tick.astimezone(UTC).isoformat()


class TriggerThread:
    """One thread per worker; several workers may run it at once against one database."""

    def __init__(self, context: WorkerContext, *, wake: Callable[[], None]) -> None:
        self.context = context
        #: Called after runs were queued: the loop claims them at once.
        self.wake = wake
        self.actor = context.actor
        #: Who may use which pool: a fired run is checked as its owner's own would be.
        self.pools = PoolPolicy.from_settings(context.settings)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Definition id → when this thread may try its schedule again after a firing
        #: failed. In memory: a restart (or another worker) simply tries at once.
        self._not_before: dict[int, datetime] = {}

    def start(self, stop: threading.Event) -> None:
        self._stop = stop
        self._thread = threading.Thread(target=self.run, name="triggers", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                if self.pass_once():
                    self.wake()
                pause = self.seconds_to_next_tick()
            except SQLAlchemyError as exc:
                log.warning("Triggers: database unavailable, trying again shortly: %s", exc)
                pause = 2
            except Exception:
                log.exception("Trigger pass failed; trying again shortly")
                pause = 2
            stop.wait(pause)

    # -- one pass ------------------------------------------------------------------------
    def pass_once(self) -> int:
        """Fire what is due; returns how many runs were queued."""
        return (self.fire_schedules() + self.fire_after_runs() + self.fire_batches()
                + self.advance_backfills())

    def seconds_to_next_tick(self) -> float:
        """Sleep until the next due schedule (or retry of one that failed), at most
        IDLE_SECONDS."""
        held = self._held(utcnow())
        with self.context.reads() as session:
            upcoming = session.scalar(
                select(func.min(JobDefinition.next_fire_at))
                .where(JobDefinition.next_fire_at.is_not(None),
                       JobDefinition.paused.is_(False), JobDefinition.id.not_in(held)))
        upcoming = min([*([upcoming] if upcoming is not None else []),
                        *self._not_before.values()], default=None)
        if upcoming is None:
            return IDLE_SECONDS
        # A due row another worker holds locked is skipped, not waited for: look again
        # shortly rather than at once.
        return max(MIN_SLEEP_SECONDS, min(IDLE_SECONDS, (upcoming - utcnow()).total_seconds()))

    # -- schedules -----------------------------------------------------------------------
    def _held(self, now: datetime) -> list[int]:
        """The definitions whose schedule failed lately and waits for its retry."""
        self._not_before = {id_: at for id_, at in self._not_before.items() if at > now}
        return list(self._not_before)

    def _hold(self, definition_id: int, now: datetime) -> None:
        log.exception("Schedule of definition %s failed; next try in %d s", definition_id,
                      RETRY_SECONDS)
        self._not_before[definition_id] = now + timedelta(seconds=RETRY_SECONDS)

    def fire_schedules(self) -> int:
        queued = 0
        while True:
            now = utcnow()
            held = self._held(now)
            with self.context.reads() as session:
                rows = session.execute(
                    select(JobDefinition.id, JobDefinition.schedule, JobDefinition.next_fire_at)
                    .where(JobDefinition.next_fire_at <= now, JobDefinition.paused.is_(False),
                           JobDefinition.schedule.is_not(None),
                           JobDefinition.id.not_in(held))
                    .order_by(JobDefinition.next_fire_at, JobDefinition.id)
                    .limit(SCHEDULES_PER_TRANSACTION)).all()
            if not rows:
                return queued
            # The due ticks are worked out before the write transaction: after a long
            # downtime that is many ticks, and on SQLite the write lock stops every writer.
            planned: dict[int, tuple[Any, datetime, _Ticks]] = {}
            for row in rows:
                try:
                    planned[row.id] = (row.schedule, row.next_fire_at,
                                       self._due_ticks(row.schedule, row.next_fire_at, now))
                except Exception:  # one definition's schedule must not stop the others
                    self._hold(row.id, now)
            if not planned:
                continue  # held now: the next read leaves them out
            with transaction(self.context.writes) as session:
                due = (select(JobDefinition)
                       .where(JobDefinition.id.in_(list(planned)),
                              JobDefinition.next_fire_at <= now,
                              JobDefinition.paused.is_(False),
                              JobDefinition.schedule.is_not(None))
                       .order_by(JobDefinition.next_fire_at, JobDefinition.id))
                if self.context.on_postgres:
                    # Another worker's due rows are its own: skip them rather than wait.
                    due = due.with_for_update(skip_locked=True, of=JobDefinition)
                definitions = list(session.scalars(due))
                for definition in definitions:
                    schedule, first, ticks = planned[definition.id]
                    try:
                        with session.begin_nested():
                            if (schedule, first) != (definition.schedule,
                                                     definition.next_fire_at):
                                # Saved again since it was read: work its ticks out anew.
                                assert definition.next_fire_at is not None
                                ticks = self._due_ticks(definition.schedule or {},
                                                        definition.next_fire_at, now)
                            queued += self._fire_schedule(session, definition, ticks, now)
                    except SQLAlchemyError:
                        raise
                    except Exception:  # one definition's schedule must not stop the others
                        self._hold(definition.id, now)
            if queued:
                self.wake()
            if (len(rows) < SCHEDULES_PER_TRANSACTION or len(definitions) < len(rows)
                    or self._stop.is_set()):
                return queued
            if queued and not self.context.on_postgres:
                self._stop.wait(SQLITE_HANDOFF_SECONDS)  # the loop's turn at the lock

    def _fire_schedule(self, session: Session, definition: JobDefinition, ticks: _Ticks,
                       now: datetime) -> int:
        """Fire the definition's latest due tick (per its ``missed`` policy), then move its
        ``next_fire_at`` past now."""
        schedule = definition.schedule or {}
        due, next_tick = ticks
        grace = self.context.settings.schedule_missed_grace_seconds
        latest = due[-1]
        missed = [tick for tick in due if (now - tick).total_seconds() > grace]
        queued = 0
        if schedule.get("missed", "skip") == "run_once" or latest not in missed:
            # run_once: the ticks missed while no worker ran collapse into this one fire.
            queued = self._fire_with_concurrency(session, definition, schedule,
                                                 schedule_key(tick_iso(latest)), latest)
            missed = [tick for tick in missed if tick != latest]
        if missed and schedule.get("missed", "skip") == "skip":
            late = int((now - missed[-1]).total_seconds())
            record_skip(session, definition, schedule_key(tick_iso(missed[-1])),
                        f"missed {len(missed)} tick(s), the last by {late} s "
                        "(no worker was running)")
        # A Core update that keeps updated_at: a firing is not an edit of the definition.
        session.execute(update(JobDefinition).where(JobDefinition.id == definition.id)
                        .values(next_fire_at=next_tick, updated_at=JobDefinition.updated_at)
                        .execution_options(synchronize_session=False))
        return queued

    @staticmethod
    def _due_ticks(schedule: dict[str, Any], first: datetime, now: datetime) -> _Ticks:
        """The ticks from ``first`` to ``now`` (after a long downtime, only ``first`` and
        those of the last MISSED_LOOKBACK), and the first tick after ``now``."""
        due = [first]
        after = max(first, now - MISSED_LOOKBACK)
        count = 1  # on time, the next tick is already in the future: one is enough
        while True:
            batch = fire_times(schedule, after, count)
            due += [tick for tick in batch if tick <= now and tick > due[-1]]
            if not batch:
                return due, None
            if batch[-1] > now:
                return due, next(tick for tick in batch if tick > now)
            after, count = batch[-1], 100

    def _fire_with_concurrency(self, session: Session, definition: JobDefinition,
                               schedule: dict[str, Any], key: str, tick: datetime) -> int:
        policy = schedule.get("concurrency", "allow")
        if policy != "allow":
            active = list(session.scalars(
                select(Run.id).where(Run.definition_id == definition.id,
                                     Run.status.in_(UNFINISHED))))
            if active and policy == "forbid":
                record_skip(session, definition, key, "previous run still active")
                return 0
            if active:
                self._cancel_for_replace(session, definition, active)
        run = fire(session, definition, key, {"kind": "schedule", "tick": tick_iso(tick)},
                   actor=self.actor, pools=self.pools, reason=f"scheduled for {tick_iso(tick)}")
        return 1 if run is not None else 0

    def _cancel_for_replace(self, session: Session, definition: JobDefinition,
                            run_ids: list[int]) -> None:
        """Ask for the cancel of the definition's active runs (the loop stops them), in the
        firing's transaction, as its owner would.

        Not ``service.request_cancel``: that commits (the cancel and the replacing run
        must commit together, or a crash between them leaves neither or only one), reads
        the run through a caller's permission check, and refuses a run that has just
        ended, which here is simply nothing left to replace."""
        for run_id in run_ids:
            status = session.execute(
                update(Run).where(Run.id == run_id, Run.status.not_in(FINAL_STATES),
                                  Run.cancel_requested.is_(False))
                .values(cancel_requested=True).returning(Run.status)
                .execution_options(synchronize_session=False)
            ).scalar_one_or_none()
            if status is not None:
                session.add(RunEvent(run_id=run_id, from_status=status.value,
                                     to_status=status.value, actor=definition.owner,
                                     reason="cancel requested: replaced by the next scheduled "
                                            "run (concurrency: replace)"))

    def _fire(self, session: Session, definition: JobDefinition, key: str,
              trigger: dict[str, Any], *, reason: str,
              record_failure: bool = False) -> Run | None:
        """``fire``, but a definition that cannot make a run is logged and passed over
        (it is tried again while its event is in the re-scanned window), so that it never
        holds up the others' triggers. With ``record_failure`` the key is recorded as
        skipped instead, saying why: it is not tried again."""
        try:
            return fire(session, definition, key, trigger, actor=self.actor,
                        pools=self.pools, reason=reason)
        except SQLAlchemyError:
            raise
        except Exception as exc:
            log.exception("Definition %s could not fire %s", definition.id, key)
            if record_failure:
                record_skip(session, definition, key, f"could not fire: {exc}")
            return None

    # -- after a run ---------------------------------------------------------------------
    def fire_after_runs(self) -> int:
        position = self._cursor("after")
        if self._nobody_follows("after", JobDefinition.after_definition_id, RunEvent.id,
                                position):
            return 0
        since = utcnow() - timedelta(seconds=RESCAN_SECONDS)
        with self.context.reads() as session:
            final = select(RunEvent.id, RunEvent.run_id, RunEvent.at).where(
                RunEvent.to_status.in_(_FINAL_VALUES),
                or_(RunEvent.from_status.is_(None), RunEvent.from_status != RunEvent.to_status))
            rows = self._scan(session, final, RunEvent.id, RunEvent.at, position, since)
            if not rows:
                return 0
            upstream = dict(session.execute(
                select(Run.id, Run.definition_id).where(
                    Run.id.in_({row.run_id for row in rows}),
                    Run.definition_id.is_not(None))).all())
            followers = self._followers(session, JobDefinition.after_definition_id,
                                        set(upstream.values()))
            # Pairs fired already (the re-scanned window) are not tried again.
            pairs = [(run_id, definition_id) for run_id, upstream_id in upstream.items()
                     for definition_id in followers.get(upstream_id, [])]
            # The same order in every worker: two firing the same pairs never deadlock.
            pairs = sorted(self._not_fired(session, pairs, after_key))
        ended_at = {row.run_id: row.at for row in rows}
        last = max(row.id for row in rows)
        if not pairs and last <= position:
            return 0
        queued = 0
        with transaction(self.context.writes) as session:
            for run_id, definition_id in pairs:
                run = session.get(Run, run_id)
                definition = session.get(JobDefinition, definition_id)
                if run is None or definition is None or definition.paused \
                        or ended_at[run_id] < _triggers_since(definition):
                    continue  # a definition follows the runs that end after it says so
                if not fires_after(session, run, (definition.after or {}).get("on",
                                                                               "succeeded")):
                    continue
                if self._fire(session, definition, after_key(run.id),
                              {"kind": "after", "run_id": run.id,
                               "definition_id": run.definition_id},
                              reason=f"after run #{run.id} ({run.status.value.lower()})"):
                    queued += 1
            self._advance_cursor(session, "after", last)
        return queued

    def _nobody_follows(self, name: str, follows: Any, scanned: Any, position: int) -> bool:
        """Does no definition follow what the scan ``name`` reads? Then there is nothing
        to fire, and the scan (and a write each pass, while 1,000 runs end) is skipped.
        The cursor still moves on, once it is a scan behind: a definition made later
        leaves out what happened before it was made, so a lagging cursor costs one scan,
        never a wrong fire. A paused follower counts as following: the scans go on past
        what happens while it is paused, which is never fired after it resumes."""
        with self.context.reads() as session:
            if session.scalar(select(JobDefinition.id).where(follows.is_not(None)).limit(1)):
                return False
            end = int(session.scalar(select(func.max(scanned))) or 0)
        if end - position > SCAN_LIMIT:
            with transaction(self.context.writes) as session:
                self._advance_cursor(session, name, end)
        return True

    @staticmethod
    def _scan(session: Session, query: Any, id_column: Any, at_column: Any, position: int,
              since: datetime) -> list[Any]:
        """The rows past the cursor (oldest first, at most SCAN_LIMIT: the rest next pass),
        and those before it of the last RESCAN_SECONDS (they may have committed after
        rows with higher ids were scanned)."""
        new = session.execute(query.where(id_column > position).order_by(id_column)
                              .limit(SCAN_LIMIT)).all()
        again = session.execute(query.where(id_column <= position, at_column >= since)
                                .order_by(id_column.desc()).limit(SCAN_LIMIT)).all()
        return [*reversed(again), *new]

    @staticmethod
    def _followers(session: Session, column: Any, ids: set[Any]) -> dict[int, list[int]]:
        """The unpaused definitions whose ``column`` is one of ``ids``, by that id."""
        found: dict[int, list[int]] = {}
        if not ids:
            return found
        for definition_id, watched in session.execute(
                select(JobDefinition.id, column).where(column.in_(ids),
                                                       JobDefinition.paused.is_(False))):
            found.setdefault(watched, []).append(definition_id)
        return found

    @staticmethod
    def _not_fired(session: Session, pairs: list[tuple[Any, int]],
                   key_of: Callable[[Any], str]) -> list[tuple[Any, int]]:
        if not pairs:
            return pairs
        keys = {key_of(subject) for subject, _ in pairs}
        fired = set(session.execute(
            select(TriggerFire.definition_id, TriggerFire.key)
            .where(TriggerFire.key.in_(keys))).all())
        return [(subject, definition_id) for subject, definition_id in pairs
                if (definition_id, key_of(subject)) not in fired]

    # -- new data ------------------------------------------------------------------------
    def fire_batches(self) -> int:
        position = self._cursor("batches")
        if self._nobody_follows("batches", JobDefinition.on_batch_table_id, PointerHistory.id,
                                position):
            return 0
        since = utcnow() - timedelta(seconds=RESCAN_SECONDS)
        with self.context.reads() as session:
            commits = (
                select(PointerHistory.id, PointerHistory.table_id, PointerHistory.partition,
                       PointerHistory.at, Batch.batch_id, Batch.partition_values,
                       DataTable.namespace, DataTable.name)
                .join(Batch, Batch.id == PointerHistory.batch_id)
                .join(DataTable, DataTable.id == PointerHistory.table_id)
                .where(PointerHistory.action == PointerAction.COMMIT))
            rows = self._scan(session, commits, PointerHistory.id, PointerHistory.at, position,
                              since)
            if not rows:
                return 0
            watchers = self._followers(session, JobDefinition.on_batch_table_id,
                                       {row.table_id for row in rows})
            by_batch = {row.batch_id: row for row in rows}
            pairs = sorted(self._not_fired(session, [
                (row.batch_id, definition_id) for row in rows
                for definition_id in watchers.get(row.table_id, [])], batch_key))
        last = max(row.id for row in rows)
        if not pairs and last <= position:
            return 0
        queued = 0
        with transaction(self.context.writes) as session:
            for batch_id, definition_id in pairs:
                row = by_batch[batch_id]
                definition = session.get(JobDefinition, definition_id)
                if definition is None or definition.paused \
                        or row.at < _triggers_since(definition) or not batch_matches(
                        definition.on_batch or {}, row.namespace, row.name,
                        row.partition_values or partition_values(row.partition)):
                    continue
                if self._fire(session, definition, batch_key(row.batch_id),
                              {"kind": "batch", "namespace": row.namespace,
                               "table": row.name, "partition": row.partition,
                               "batch_id": row.batch_id},
                              reason=f"new batch {row.batch_id} of {row.namespace}/{row.name}"
                                     + (f" ({row.partition})" if row.partition else "")):
                    queued += 1
            self._advance_cursor(session, "batches", last)
        return queued

    # -- backfills -----------------------------------------------------------------------
    def advance_backfills(self) -> int:
        queued = 0
        with self.context.reads() as session:
            if session.scalar(select(Backfill.id).where(Backfill.finished_at.is_(None))
                              .limit(1)) is None:
                return 0
        with transaction(self.context.writes) as session:
            open_backfills = select(Backfill).where(Backfill.finished_at.is_(None)) \
                .order_by(Backfill.id)
            if self.context.on_postgres:
                open_backfills = open_backfills.with_for_update(skip_locked=True)
            for backfill in session.scalars(open_backfills):
                queued += self._advance_backfill(session, backfill)
        return queued

    def _advance_backfill(self, session: Session, backfill: Backfill) -> int:
        active = backfill_active(session, backfill)
        definition = session.get(JobDefinition, backfill.definition_id)
        if definition is None:
            if active == 0:
                backfill.finished_at = utcnow()
            return 0
        queued = 0
        items = backfill.items or []
        while active < backfill.max_parallel and backfill.next_index < len(items):
            index = backfill.next_index
            # An item is never tried again (next_index moves on): one that cannot fire is
            # recorded as skipped, with why, for the definition's page.
            run = self._fire(session, definition, backfill_key(backfill.id, index),
                             {"kind": "backfill", "backfill_id": backfill.id,
                              "item": items[index]},
                             reason=f"backfill #{backfill.id}, item {index + 1} of {len(items)}",
                             record_failure=True)
            backfill.next_index = index + 1
            if run is not None:
                queued += 1
                if run.status in UNFINISHED:
                    active += 1
        if backfill.next_index >= len(items) and active == 0:
            backfill.finished_at = utcnow()
        return queued

    # -- cursors -------------------------------------------------------------------------
    def _cursor(self, name: str) -> int:
        """Where the scan ``name`` is; a new cursor starts at the end of its table (the
        past is not fired: triggers answer to what happens after they exist)."""
        with self.context.reads() as session:
            position = session.scalar(select(TriggerCursor.position)
                                      .where(TriggerCursor.name == name))
            if position is not None:
                return int(position)
            scanned = RunEvent.id if name == "after" else PointerHistory.id
            end = int(session.scalar(select(func.max(scanned))) or 0)
        try:
            with transaction(self.context.writes) as session:
                session.add(TriggerCursor(name=name, position=end))
        except IntegrityError:  # another worker made it first
            return self._cursor(name)
        return end

    @staticmethod
    def _advance_cursor(session: Session, name: str, position: int) -> None:
        # Forward only: a slower worker never moves it back.
        session.execute(update(TriggerCursor)
                        .where(TriggerCursor.name == name, TriggerCursor.position < position)
                        .values(position=position)
                        .execution_options(synchronize_session=False))


def _triggers_since(definition: JobDefinition) -> datetime:
    """From when the definition's after and on_batch triggers answer to events."""
    return definition.triggers_since or definition.created_at
