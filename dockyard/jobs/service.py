"""What may happen to job definitions and runs, on behalf of whom. No Flask here.

The web pages and the REST API call these functions; the worker shares ``new_attempt``.
Everyone sees and acts on their own definitions and runs only (admins on all); another
user's object is reported as missing, never as forbidden.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

# For its effect: any session that queues a run wakes the worker (NOTIFY on PostgreSQL).
import dockyard.jobs.queue_signal  # noqa: F401
from dockyard.clusters.schemas import ClusterSizeIn
from dockyard.clusters.service import check_cluster_request
from dockyard.errors import Conflict, NotFound
from dockyard.images.catalog import ImageNotAllowed, default_image, resolve_image, usable_images
from dockyard.jobs import notebooks, schedules
from dockyard.jobs.artifacts import ArtifactStore
from dockyard.jobs.notebooks import HomeFileMissing, HomeFiles, NotebookFile
from dockyard.jobs.pools import PoolPolicy
from dockyard.jobs.schemas import (
    BackfillIn,
    DefinitionIn,
    FieldProblem,
    InvalidJob,
    JobLimits,
    RunIn,
)
from dockyard.models import (
    FINAL_STATES,
    Backfill,
    Batch,
    DataTable,
    JobDefinition,
    PartitionPointer,
    Run,
    RunEvent,
    RunKind,
    RunState,
    RunTag,
    TriggerFire,
    utcnow,
)
from dockyard.settings.job_pools import DEFAULT_POOL

DEFAULT_CPU = 1.0
DEFAULT_MEMORY_MB = 1024
RUN_FIELDS = ("image", "command", "cpu", "memory_mb", "gpu", "env", "timeout_seconds",
              "max_retries", "pool", "cluster")
#: What a retry copies besides RUN_FIELDS: a notebook run's retry runs the same snapshot;
#: a fired run's retry keeps what fired it (and so its DOCKYARD_TRIGGER_* environment).
ATTEMPT_FIELDS = (*RUN_FIELDS, "kind", "notebook", "trigger")


class Caller(Protocol):
    """Who is asking (the web layer's User fits)."""

    @property
    def name(self) -> str: ...

    @property
    def admin(self) -> bool: ...

    @property
    def run_id(self) -> int | None: ...


class JobNotFound(NotFound):
    """No such definition or run, or not the caller's."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}, or it belongs to someone else.")


class JobConflict(Conflict):
    """The object is not in a state that allows this (e.g. cancel of a finished run).
    ``detail`` is the field-level problems if there are any, else the message."""

    def __init__(self, message: str, problems: list[FieldProblem] | None = None) -> None:
        self.problems = problems or []
        super().__init__([p.as_dict() for p in self.problems] if self.problems else message)
        self.args = (message,)


def _problem(field_name: str, message: str) -> InvalidJob:
    return InvalidJob([FieldProblem(field_name, message)])


def _check_image(session: Session, reference: str | None) -> list[FieldProblem]:
    if not reference:
        return []
    try:
        resolve_image(session, reference, "jobs")
    except ImageNotAllowed as exc:
        return [FieldProblem("image", str(exc))]
    return []


NO_JOB_IMAGE = ("no image is enabled for jobs yet: build Dockyard's own with 'make images' "
                "(Dockyard adds it to the catalog when it next starts), or ask an admin to "
                "add one")


def _fill_in_image(session: Session, values: dict[str, Any], limits: JobLimits,
                   asked: str) -> list[FieldProblem]:
    """An empty image means: none in a local pool (its runs use Dockyard's own Python
    environment, stored as ""), else the jobs default image."""
    if values["image"]:
        return _check_image(session, values["image"])
    if not limits.pools.needs_image(values["pool"] or DEFAULT_POOL):
        values["image"] = ""
        return []
    default = default_image(session, "jobs")
    if default is not None:
        values["image"] = default.reference
        return []
    if not usable_images(session, "jobs"):
        return [FieldProblem("image", NO_JOB_IMAGE)]
    return [FieldProblem("image", asked)]


# -- definitions ---------------------------------------------------------------------------
def list_definitions(session: Session, caller: Caller) -> list[JobDefinition]:
    query = select(JobDefinition).order_by(JobDefinition.name, JobDefinition.id)
    if not caller.admin:
        query = query.where(JobDefinition.owner == caller.name)
    return list(session.scalars(query))


def get_definition(session: Session, caller: Caller, definition_id: int) -> JobDefinition:
    definition = session.get(JobDefinition, definition_id)
    if definition is None or not (caller.admin or definition.owner == caller.name):
        raise JobNotFound(f"no job definition #{definition_id}")
    return definition


def _check_pool(limits: JobLimits, pool: str, caller: Caller) -> list[FieldProblem]:
    problem = limits.pools.problem(pool, caller)
    return [FieldProblem("pool", problem)] if problem else []


def _check_cluster(session: Session, owner: str, values: dict[str, Any], limits: JobLimits,
                   problems: list[FieldProblem], *, in_use: bool) -> list[FieldProblem]:
    """The cluster a run or definition asks for, checked by the clusters service: a pool
    that can host it, an image with its engine, workers within the owner's limit (with
    ``in_use``, counting the workers they have now: a run's; a definition only asks)."""
    if values.get("cluster") is None or limits.clusters is None:
        return []
    size = ClusterSizeIn.model_validate(values["cluster"])
    found = check_cluster_request(session, owner, size, image=values["image"] or "",
                                  pool=values["pool"], limits=limits.clusters,
                                  in_use=in_use)
    # A pool refused already (unknown, not yours) is named once.
    named = {problem.field for problem in problems}
    return [FieldProblem(name, message) for name, message in found
            if not (name == "pool" and "pool" in named)]


def _definition_values(session: Session, caller: Caller, body: DefinitionIn, limits: JobLimits,
                       current: JobDefinition | None, upload: NotebookFile | None,
                       homes: HomeFiles | None) -> tuple[dict[str, Any], _NotebookRun | None]:
    """The definition's columns from ``body``, checked; and the notebook whose snapshot is
    still to be kept (None: a command definition, or a notebook definition keeping its
    snapshot). Raises InvalidJob with every problem found."""
    values = body.model_dump(exclude={"notebook", "parameters", "schedule", "paused", "after",
                                      "on_batch"})
    values["pool"] = values["pool"] or DEFAULT_POOL
    values["cpu"] = values["cpu"] if values["cpu"] is not None else min(DEFAULT_CPU, limits.max_cpu)
    if values["memory_mb"] is None:
        values["memory_mb"] = min(DEFAULT_MEMORY_MB, limits.max_memory_mb)
    values["gpu"] = values["gpu"] or 0
    values["env"] = values["env"] or {}
    values["tags"] = values["tags"] or []
    values["max_retries"] = values["max_retries"] or 0
    problems = _fill_in_image(session, values, limits, "choose an image")
    snapshot: _NotebookRun | None = None
    values["kind"], values["notebook"] = RunKind.COMMAND.value, None
    if upload is not None or body.notebook is not None:
        snapshot = _notebook_run(session, caller, body, values, limits, problems, upload, homes)
        values["kind"] = RunKind.NOTEBOOK.value
    elif current is not None and current.kind == RunKind.NOTEBOOK and body.command is None:
        # Saving a notebook definition without a new notebook keeps its snapshot (the
        # form edits its schedule without uploading the notebook again).
        values["kind"], values["command"] = RunKind.NOTEBOOK.value, list(current.command)
        values["notebook"] = dict(current.notebook or {})
        if body.parameters is not None:
            problems += notebooks.check_parameters(body.parameters)
            values["notebook"]["parameters"] = body.parameters
    else:
        if body.parameters is not None:
            problems.append(FieldProblem("parameters", "parameters are for notebook "
                                         "definitions; send a notebook with them"))
        if not values["command"]:
            problems.append(FieldProblem("command", "give a command (or a notebook)"))
    problems += limits.check(values)
    owner = current.owner if current is not None else caller.name
    problems += _trigger_values(session, owner, body, limits, current, values)
    problems += _check_definition_pool(limits, values, caller, owner)
    problems += _check_cluster(session, owner, values, limits, problems, in_use=False)
    if problems:
        raise InvalidJob(problems)
    return values, snapshot


def _check_definition_pool(limits: JobLimits, values: dict[str, Any], caller: Caller,
                           owner: str) -> list[FieldProblem]:
    """The caller must be able to use the pool; and a definition with triggers fires runs
    as its owner (never as an admin, see run_from_definition), so its owner must too:
    otherwise it would save, and every fired run would fail."""
    problems = _check_pool(limits, values["pool"], caller)
    if problems or not (values["schedule"] or values["after"] or values["on_batch"]):
        return problems
    problem = limits.pools.problem(values["pool"], _Owner(owner))
    if problem is None:
        return []
    return [FieldProblem("pool", f"its triggers start runs as {owner}, and {owner} may not "
                         f"use pool '{values['pool']}'")]


def _trigger_values(session: Session, owner: str, body: DefinitionIn, limits: JobLimits,
                    current: JobDefinition | None, values: dict[str, Any]) -> list[FieldProblem]:
    """Check the definition's triggers and put them into ``values``."""
    problems: list[FieldProblem] = []
    values["schedule"] = None
    if body.schedule is not None:
        values["schedule"] = schedules.with_defaults(body.schedule.model_dump())
        problems += schedules.check_schedule(values["schedule"], limits.schedule_min_seconds)
    values["paused"] = body.paused
    values["after"], values["after_definition_id"] = None, None
    if body.after is not None:
        problems += _check_after(session, owner, current, body.after.definition_id)
        values["after"] = body.after.model_dump()
        values["after_definition_id"] = body.after.definition_id
    values["on_batch"], values["on_batch_table_id"] = None, None
    if body.on_batch is not None:
        table = _find_table(session, body.on_batch.namespace, body.on_batch.table)
        if table is None:
            problems.append(FieldProblem("on_batch.table", f"there is no table "
                                         f"{body.on_batch.namespace}.{body.on_batch.table} "
                                         "in the data catalog"))
        else:
            problems += _check_partition_keys("on_batch.partition", table,
                                              body.on_batch.partition)
            values["on_batch_table_id"] = table.id
        values["on_batch"] = body.on_batch.model_dump()
    resumed = current is not None and current.paused and not values["paused"]
    if current is None or resumed or (values["after"], values["on_batch"]) != (
            current.after, current.on_batch):
        # New (or resumed) after/on_batch triggers answer to what happens from now on only.
        values["triggers_since"] = utcnow() if values["after"] or values["on_batch"] else None
    if not problems:
        values["next_fire_at"] = _next_fire_at(values["schedule"], values["paused"], utcnow())
    return problems


def _find_table(session: Session, namespace: str, name: str) -> DataTable | None:
    return session.scalar(select(DataTable).where(DataTable.namespace == namespace,
                                                  DataTable.name == name))


def _check_partition_keys(field_name: str, table: DataTable,
                          partition: dict[str, str]) -> list[FieldProblem]:
    unknown = [key for key in partition if key not in table.partition_keys]
    if not unknown:
        return []
    keys = ", ".join(table.partition_keys) or "none (it is not partitioned)"
    return [FieldProblem(field_name, f"{table.namespace}.{table.name} has no partition key "
                         f"{', '.join(repr(k[:64]) for k in unknown[:5])}; its keys: {keys}")]


#: How far an after-chain is followed to find a cycle; longer chains are refused.
_MAX_AFTER_CHAIN = 1000


def _check_after(session: Session, owner: str, current: JobDefinition | None,
                 upstream_id: int) -> list[FieldProblem]:
    """The upstream must be one of the owner's definitions, and following the chain of
    upstreams from it must not lead back to this definition."""
    upstream = session.get(JobDefinition, upstream_id)
    if upstream is None or upstream.owner != owner:
        return [FieldProblem("after.definition_id", f"{owner} has no job definition "
                             f"#{upstream_id}")]
    if current is None:
        return []  # a new definition: nothing runs after it yet, so no cycle
    chain = [current]
    step: JobDefinition | None = upstream
    while step is not None and len(chain) <= _MAX_AFTER_CHAIN:
        chain.append(step)
        if step.id == current.id:
            names = " → ".join(d.name for d in chain)
            return [FieldProblem("after.definition_id", f"this would make a cycle: {names} "
                                 "(each would wait for the other)")]
        step = session.get(JobDefinition, step.after_definition_id) \
            if step.after_definition_id is not None else None
    if step is not None:
        return [FieldProblem("after.definition_id", "the chain of definitions this one "
                             f"runs after is longer than {_MAX_AFTER_CHAIN}")]
    return []


def _next_fire_at(schedule: dict[str, Any] | None, paused: bool, now: datetime) -> \
        datetime | None:
    if schedule is None or paused:
        return None
    return schedules.next_fire_time(schedule, now)


def next_runs(definition: JobDefinition, now: datetime | None = None,
              count: int = 5) -> list[datetime]:
    """The definition's next fire times in UTC ([] when it has no schedule or is paused)."""
    if definition.schedule is None or definition.paused:
        return []
    return schedules.fire_times(definition.schedule, now or utcnow(), count)


def _save_definition(session: Session, definition: JobDefinition, values: dict[str, Any],
                     snapshot: _NotebookRun | None, artifacts: ArtifactStore | None) -> None:
    if snapshot is not None:
        if artifacts is None:
            raise ValueError("a notebook definition needs the artifact store for its snapshot")
        # Runs made from the definition run this snapshot; it is content-addressed, so the
        # same notebook saved again costs nothing.
        values["notebook"] = {**snapshot.record,
                              "sha256": artifacts.save_snapshot(snapshot.content)}
    for key, value in values.items():
        setattr(definition, key, value)


def create_definition(session: Session, caller: Caller, body: DefinitionIn, limits: JobLimits,
                      *, notebook_file: NotebookFile | None = None,
                      artifacts: ArtifactStore | None = None,
                      homes: HomeFiles | None = None) -> JobDefinition:
    """A new definition; a notebook definition comes with ``notebook_file`` (an upload) or
    ``body.notebook`` (a path in the caller's home), snapshotted to ``artifacts`` now."""
    values, snapshot = _definition_values(session, caller, body, limits, None, notebook_file,
                                          homes)
    definition = JobDefinition(owner=caller.name)
    _save_definition(session, definition, values, snapshot, artifacts)
    session.add(definition)
    _commit_unique_name(session, body.name)
    return definition


def update_definition(session: Session, caller: Caller, definition_id: int, body: DefinitionIn,
                      limits: JobLimits, *, notebook_file: NotebookFile | None = None,
                      artifacts: ArtifactStore | None = None,
                      homes: HomeFiles | None = None) -> JobDefinition:
    """Replace a definition's fields and triggers (a notebook definition sent without a
    notebook keeps its snapshot); the next fire time is computed afresh from now."""
    definition = get_definition(session, caller, definition_id)
    values, snapshot = _definition_values(session, caller, body, limits, definition,
                                          notebook_file, homes)
    _save_definition(session, definition, values, snapshot, artifacts)
    _commit_unique_name(session, body.name)
    return definition


def pause_definition(session: Session, caller: Caller, definition_id: int) -> JobDefinition:
    """Stop all the definition's triggers (schedule, after, on_batch) until resumed; what
    comes while paused (ticks, upstream run ends, batches) is never fired later."""
    definition = get_definition(session, caller, definition_id)
    definition.paused = True
    definition.next_fire_at = None
    session.commit()
    return definition


def resume_definition(session: Session, caller: Caller, definition_id: int) -> JobDefinition:
    """Fire again from the next tick after now: ticks passed while paused are not made up."""
    definition = get_definition(session, caller, definition_id)
    if definition.paused and (definition.after or definition.on_batch):
        # Upstream run ends and batches that came while paused are never fired.
        definition.triggers_since = utcnow()
    definition.paused = False
    definition.next_fire_at = _next_fire_at(definition.schedule, False, utcnow())
    session.commit()
    return definition


def list_fires(session: Session, caller: Caller, definition_id: int,
               limit: int = 50) -> list[TriggerFire]:
    """The definition's recent firings (and skipped ticks), newest first."""
    definition = get_definition(session, caller, definition_id)
    return list(session.scalars(
        select(TriggerFire).where(TriggerFire.definition_id == definition.id)
        .order_by(TriggerFire.id.desc()).limit(limit)
    ))


def _commit_unique_name(session: Session, name: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise JobConflict("name taken", [FieldProblem(
            "name", f"you already have a definition named '{name}'")]) from None


def delete_definition(session: Session, caller: Caller, definition_id: int) -> None:
    """Runs made from it stay (their definition becomes 'ad hoc'); definitions that ran
    after it no longer do."""
    definition = get_definition(session, caller, definition_id)
    session.execute(
        update(JobDefinition).where(JobDefinition.after_definition_id == definition.id)
        .values(after=None, after_definition_id=None).execution_options(synchronize_session=False)
    )
    session.delete(definition)
    session.commit()


def definition_history(session: Session, definition: JobDefinition, limit: int = 30) -> list[Run]:
    """The definition's most recent runs, newest first."""
    return list(session.scalars(
        select(Run).where(Run.definition_id == definition.id).order_by(Run.id.desc()).limit(limit)
    ))


# -- backfills ------------------------------------------------------------------------------
def create_backfill(session: Session, caller: Caller, definition_id: int,
                    body: BackfillIn | dict[str, Any], limits: JobLimits) -> Backfill:
    """Runs of the definition for the past, started a few at a time by the worker: one per
    existing partition of its on_batch table matching ``partition`` (for that partition's
    current batch), or, for a scheduled definition, one per day from ``from`` to ``to``
    (at that day's first tick of the schedule)."""
    definition = get_definition(session, caller, definition_id)
    if not isinstance(body, BackfillIn):
        body = BackfillIn.model_validate(body)
    by_day = body.from_ is not None or body.to is not None
    if body.partition is not None and by_day:
        raise _problem("partition", "give a partition pattern or a range of days, not both")
    if body.partition is not None:
        items = _partition_items(session, definition, body.partition, limits)
    elif by_day:
        items = _day_items(definition, body, limits)
    else:
        raise _problem("partition", "give a partition pattern (for a definition that runs "
                       "on new data) or a range of days from … to (for a scheduled one)")
    backfill = Backfill(definition_id=definition.id, owner=definition.owner, items=items,
                        next_index=0, max_parallel=body.max_parallel)
    session.add(backfill)
    session.commit()
    return backfill


def _partition_items(session: Session, definition: JobDefinition, pattern: dict[str, str],
                     limits: JobLimits) -> list[dict[str, Any]]:
    on_batch = definition.on_batch
    if not on_batch:
        raise _problem("partition", "this definition does not run on new data (on_batch); "
                       "backfill it by days instead")
    table = _find_table(session, on_batch["namespace"], on_batch["table"])
    if table is None:
        raise _problem("partition", f"the table {on_batch['namespace']}.{on_batch['table']} "
                       "no longer exists")
    problems = _check_partition_keys("partition", table, pattern)
    if problems:
        raise InvalidJob(problems)
    current = session.execute(
        select(PartitionPointer.partition, Batch.batch_id, Batch.partition_values)
        .join(Batch, Batch.id == PartitionPointer.batch_id)
        .where(PartitionPointer.table_id == table.id)
        .order_by(PartitionPointer.partition)
    )
    items: list[dict[str, Any]] = []
    for partition, batch_id, values in current:
        if partition_matches(pattern, values or {}):
            items.append({"namespace": table.namespace, "table": table.name,
                          "partition": partition, "batch_id": batch_id})
            if len(items) > limits.backfill_max_items:
                break
    name = f"{table.namespace}.{table.name}"
    if not items:
        raise _problem("partition", f"no partition of {name} matches")
    if len(items) > limits.backfill_max_items:
        raise _problem("partition", f"more than {limits.backfill_max_items} partitions of "
                       f"{name} match; at most {limits.backfill_max_items} runs per backfill "
                       "(DOCKYARD_BACKFILL_MAX_ITEMS): narrow the pattern")
    return items


def partition_matches(pattern: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """Each key of the pattern is the exact value or matches it as an fnmatch pattern (keys
    it does not name match anything): what a backfill and an on_batch trigger both ask."""
    for key, wanted in pattern.items():
        if key not in values:
            return False
        value, wanted = str(values[key]), str(wanted)
        if value != wanted and not fnmatch.fnmatchcase(value, wanted):
            return False
    return True


def _day_items(definition: JobDefinition, body: BackfillIn,
               limits: JobLimits) -> list[dict[str, Any]]:
    if not definition.schedule:
        raise _problem("from", "this definition has no schedule; backfill it by partitions "
                       "instead")
    if body.from_ is None or body.to is None:
        raise _problem("to" if body.from_ is not None else "from",
                       "give both from and to (days, YYYY-MM-DD)")
    if body.to < body.from_:
        raise _problem("to", "the last day is before the first")
    days = (body.to - body.from_).days + 1
    if days > limits.backfill_max_items:
        raise _problem("to", f"{days} days; at most {limits.backfill_max_items} runs per "
                       "backfill (DOCKYARD_BACKFILL_MAX_ITEMS)")
    zone = ZoneInfo(schedules.with_defaults(definition.schedule)["timezone"])
    items: list[dict[str, Any]] = []
    for offset in range(days):
        try:
            tick = _first_tick_of(definition.schedule, body.from_ + timedelta(days=offset),
                                  zone)
        except OverflowError:  # the first or last day of year 1 or 9999
            raise _problem("from" if offset == 0 else "to", "Dockyard works out days "
                           "from 0001-01-02 to 9999-12-30") from None
        if tick is not None:
            items.append({"tick": tick.isoformat()})
    if not items:
        raise _problem("from", "the schedule does not fire on any of these days")
    return items


def _first_tick_of(schedule: dict[str, Any], day: date, zone: ZoneInfo) -> datetime | None:
    """The schedule's first fire time on ``day`` in its time zone (None: none that day)."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    tick = schedules.next_fire_time(schedule, start.astimezone(UTC) - timedelta(microseconds=1))
    return tick if tick is not None and tick < end.astimezone(UTC) else None


def list_backfills(session: Session, caller: Caller, definition_id: int) -> list[Backfill]:
    definition = get_definition(session, caller, definition_id)
    return list(session.scalars(
        select(Backfill).where(Backfill.definition_id == definition.id)
        .order_by(Backfill.id.desc())
    ))


def backfill_active(session: Session, backfill: Backfill) -> int:
    """How many of the backfill's runs are still queued or running (the pages show it; the
    worker starts more while it is below ``max_parallel``)."""
    return session.scalar(
        select(func.count()).select_from(TriggerFire)
        .join(Run, Run.id == TriggerFire.run_id)
        .where(TriggerFire.definition_id == backfill.definition_id,
               TriggerFire.key.like(f"backfill:{backfill.id}:%"),
               Run.status.not_in(FINAL_STATES))
    ) or 0


# -- runs ----------------------------------------------------------------------------------
class _Owner:
    """A definition's owner as the pool policy sees them when no one is asking (a trigger):
    not an admin, so a pool that lists its users must list them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.admin = False


def run_from_definition(session: Session, definition: JobDefinition, *,
                        trigger: dict[str, Any] | None, actor: str, reason: str,
                        pools: PoolPolicy | None = None) -> Run:
    """Queue a run of ``definition`` as it is now (a notebook definition's runs run its
    snapshot), recording ``trigger``. When its image or pool may no longer be used, the
    run is made already FAILED with the reason, so the firing is visible. The caller
    commits. Without ``pools`` the pool is not checked."""
    problems = _check_image(session, definition.image)
    if pools is not None:
        if not definition.image and pools.needs_image(definition.pool):
            problems.append(FieldProblem("image", f"pool '{definition.pool}' needs an image"))
        problem = pools.problem(definition.pool, _Owner(definition.owner))
        if problem:
            problems.append(FieldProblem("pool", problem))
    values = {key: getattr(definition, key) for key in RUN_FIELDS}
    run = _new_run(definition.owner, definition, values, definition.tags, actor=actor,
                   reason=reason, kind=definition.kind, notebook=definition.notebook,
                   trigger=trigger)
    if problems:
        now = utcnow()
        why = "; ".join(f"{p.field}: {p.message}" for p in problems)
        run.status = RunState.FAILED
        run.finished_at = now
        run.reason = f"could not start: {why}"
        run.events.append(RunEvent(from_status=RunState.QUEUED.value,
                                   to_status=RunState.FAILED.value, actor=actor,
                                   reason=run.reason, at=now))
    session.add(run)
    session.flush()
    return run


def _new_run(owner: str, definition: JobDefinition | None, values: dict[str, Any],
             tags: list[str], *, actor: str, reason: str, kind: str,
             notebook: dict[str, Any] | None, trigger: dict[str, Any] | None) -> Run:
    """A queued first attempt with its first event: what every way of starting a run
    makes."""
    run = Run(owner=owner, definition_id=definition.id if definition else None,
              **{key: values[key] for key in RUN_FIELDS}, attempt=1, status=RunState.QUEUED,
              kind=kind, notebook=notebook, trigger=trigger)
    run.tags = [RunTag(tag=tag) for tag in tags]
    run.events = [RunEvent(from_status=None, to_status=RunState.QUEUED.value, actor=actor,
                           reason=reason)]
    return run


def get_run(session: Session, caller: Caller, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None or not (caller.admin or run.owner == caller.name):
        raise JobNotFound(f"no run #{run_id}")
    return run


def create_run(session: Session, caller: Caller, body: RunIn, limits: JobLimits, *,
               notebook_file: NotebookFile | None = None,
               artifacts: ArtifactStore | None = None,
               homes: HomeFiles | None = None) -> Run:
    """Queue a run: the definition's fields (if any), overridden by what the request gives.

    A notebook run comes with ``notebook_file`` (an upload) or ``body.notebook`` (a path in
    the caller's home, read through ``homes``); its snapshot goes to ``artifacts``."""
    problems: list[FieldProblem] = []
    values: dict[str, Any] = {"cpu": min(DEFAULT_CPU, limits.max_cpu),
                              "memory_mb": min(DEFAULT_MEMORY_MB, limits.max_memory_mb),
                              "gpu": 0, "env": {}, "tags": [], "timeout_seconds": None,
                              "max_retries": 0, "image": None, "command": None,
                              "pool": DEFAULT_POOL, "cluster": None}
    definition: JobDefinition | None = None
    if body.definition_id is not None:
        try:
            definition = get_definition(session, caller, body.definition_id)
        except JobNotFound:
            problems.append(FieldProblem("definition_id",
                                         f"you have no job definition #{body.definition_id}"))
        else:
            values.update({key: getattr(definition, key) for key in (*RUN_FIELDS, "tags")})
    given = body.model_dump(exclude={"definition_id", "notebook", "parameters"},
                            exclude_none=True)
    if definition is not None and "env" in given:
        given["env"] = {**definition.env, **given["env"]}
    values.update(given)
    problems += _fill_in_image(session, values, limits, "choose an image (or a definition)")
    notebook: _NotebookRun | None = None
    inherited: dict[str, Any] | None = None
    if notebook_file is not None or body.notebook is not None:
        notebook = _notebook_run(session, caller, body, values, limits, problems,
                                 notebook_file, homes)
    elif definition is not None and definition.kind == RunKind.NOTEBOOK:
        inherited = _definition_notebook(definition, body, problems)
    elif body.parameters is not None:
        problems.append(FieldProblem("parameters", "parameters are for notebook runs; send "
                                     "a notebook with them"))
    if not values["command"]:
        problems.append(FieldProblem("command", "give a command (or a definition)"))
    problems += limits.check(values)
    problems += _check_pool(limits, values["pool"], caller)
    problems += _check_cluster(session, caller.name, values, limits, problems, in_use=True)
    if problems:
        raise InvalidJob(problems)
    reason = f"submitted by run #{caller.run_id}" if caller.run_id else "submitted"
    kind, record = RunKind.COMMAND.value, None
    if notebook is not None:
        if artifacts is None:
            raise ValueError("a notebook run needs the artifact store for its snapshot")
        # The snapshot is written before the run exists: a run never points at nothing.
        kind = RunKind.NOTEBOOK.value
        record = {**notebook.record, "sha256": artifacts.save_snapshot(notebook.content)}
    elif inherited is not None:
        kind, record = RunKind.NOTEBOOK.value, inherited
    run = _new_run(caller.name, definition, values, values["tags"], actor=caller.name,
                   reason=reason, kind=kind, notebook=record, trigger=None)
    session.add(run)
    session.commit()
    return run


@dataclass(frozen=True)
class _NotebookRun:
    content: bytes
    #: The run's ``notebook`` column, but for the snapshot's sha256.
    record: dict[str, Any]


def _definition_notebook(definition: JobDefinition, body: RunIn,
                         problems: list[FieldProblem]) -> dict[str, Any]:
    """A run of a notebook definition runs the definition's snapshot, with the request's
    parameters over the definition's."""
    if "command" in body.model_fields_set and body.command is not None:
        problems.append(FieldProblem("command", f"definition '{definition.name}' runs a "
                                     "notebook; its command is Dockyard's own"))
    record = dict(definition.notebook or {})
    if body.parameters is not None:
        problems += notebooks.check_parameters(body.parameters)
        record["parameters"] = {**(record.get("parameters") or {}), **body.parameters}
    return record


def _notebook_run(session: Session, caller: Caller, body: RunIn | DefinitionIn,
                  values: dict[str, Any],
                  limits: JobLimits, problems: list[FieldProblem],
                  upload: NotebookFile | None, homes: HomeFiles | None) -> _NotebookRun | None:
    """Check a notebook run's (or definition's) notebook, parameters and image; make its
    command Dockyard's.
    Problems are added to ``problems``; None when the notebook could not be read."""
    if "command" in body.model_fields_set and body.command is not None:
        problems.append(FieldProblem("command", "a notebook run's command is Dockyard's own "
                                     "(papermill runs the notebook); leave the command out"))
    values["command"] = list(notebooks.NOTEBOOK_COMMAND)
    parameters = body.parameters or {}
    problems += notebooks.check_parameters(parameters)
    source = upload
    if upload is not None and body.notebook is not None:
        problems.append(FieldProblem("notebook", "send a notebook file or a path in your "
                                     "home, not both"))
        return None
    if source is None:
        assert body.notebook is not None
        source = _home_notebook(caller, body.notebook.path, limits, problems, homes)
        if source is None:
            return None
    facts, found = notebooks.read_notebook(source.content, limits.max_notebook_bytes)
    problems += found
    if facts is None:
        return None
    if values["image"]:
        image = resolve_image(session, values["image"], "jobs") if not any(
            p.field == "image" for p in problems) else None
        if image is not None:
            problems += notebooks.check_image_runs(image.contents, image.reference, facts.kernel)
    elif not any(p.field == "image" for p in problems):
        problems += notebooks.check_local_runs(facts.kernel)
    record = {"name": notebooks.safe_name(source.name), "source": source.source,
              "path": source.path, "parameters": parameters, "kernel": facts.kernel,
              "language": facts.language}
    return _NotebookRun(source.content, record)


def _home_notebook(caller: Caller, path: str, limits: JobLimits, problems: list[FieldProblem],
                   homes: HomeFiles | None) -> NotebookFile | None:
    relative = notebooks.home_path(path)
    if relative is None:
        problems.append(FieldProblem("notebook.path", f"'{path[:200]}' is outside your home; "
                                     "give a path relative to it, e.g. work/etl.ipynb"))
        return None
    if homes is None:
        problems.append(FieldProblem("notebook.path", "this installation cannot read homes; "
                                     "upload the notebook instead"))
        return None
    try:
        content = homes.read(caller.name, relative, limits.max_notebook_bytes + 1)
    except HomeFileMissing as exc:
        problems.append(FieldProblem("notebook.path", str(exc)))
        return None
    return NotebookFile(name=relative, content=content, source="home", path=relative)


def request_cancel(session: Session, caller: Caller, run_id: int) -> Run:
    """Ask the worker to cancel the run; it stops the job and records the outcome."""
    run = get_run(session, caller, run_id)
    if run.status in FINAL_STATES:
        raise JobConflict(f"run #{run.id} has already ended ({run.status.value}); "
                          "there is nothing to cancel")
    if not run.cancel_requested:
        result = session.execute(
            update(Run).where(Run.id == run.id, Run.status.not_in(FINAL_STATES))
            .values(cancel_requested=True).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.rollback()
            session.refresh(run)
            raise JobConflict(f"run #{run.id} has already ended ({run.status.value}); "
                              "there is nothing to cancel")
        session.add(RunEvent(run_id=run.id, from_status=run.status.value,
                             to_status=run.status.value, actor=caller.name,
                             reason="cancel requested"))
        session.commit()
        session.refresh(run)
    return run


def retry_run(session: Session, caller: Caller, run_id: int,
              limits: JobLimits | None = None) -> Run:
    """A new attempt of a run that has ended (the old one is kept)."""
    run = get_run(session, caller, run_id)
    if run.status not in FINAL_STATES:
        raise JobConflict(f"run #{run.id} is still {run.status.value}; wait for it to end "
                          "or cancel it first")
    problems = _check_image(session, run.image)
    if not run.image and limits is not None and limits.pools.needs_image(run.pool):
        problems.append(FieldProblem("image", f"run #{run.id} ran as a local process, without "
                                     f"an image, and pool '{run.pool}' now needs one; launch "
                                     "it again with an image"))
    if problems:
        raise InvalidJob(problems)
    attempt = new_attempt(session, run, actor=caller.name,
                          reason=f"retry of run #{run.id} requested by {caller.name}")
    session.commit()
    return attempt


def new_attempt(session: Session, run: Run, *, actor: str, reason: str) -> Run:
    """Queue the next attempt of ``run``'s chain (the caller commits)."""
    first = run.retry_of_id or run.id
    last = session.scalar(
        select(func.max(Run.attempt)).where(or_(Run.id == first, Run.retry_of_id == first))
    ) or run.attempt
    tags = list(session.scalars(select(RunTag.tag).where(RunTag.run_id == run.id)))
    attempt = Run(
        owner=run.owner, definition_id=run.definition_id,
        **{key: getattr(run, key) for key in ATTEMPT_FIELDS},
        attempt=last + 1, retry_of_id=first, status=RunState.QUEUED,
    )
    attempt.tags = [RunTag(tag=tag) for tag in tags]
    attempt.events = [RunEvent(from_status=None, to_status=RunState.QUEUED.value, actor=actor,
                               reason=reason)]
    session.add(attempt)
    session.flush()
    return attempt


def attempts_of(session: Session, run: Run) -> list[Run]:
    first = run.retry_of_id or run.id
    return list(session.scalars(
        select(Run).where(or_(Run.id == first, Run.retry_of_id == first))
        .order_by(Run.attempt, Run.id)
    ))


def events_of(session: Session, run: Run) -> list[RunEvent]:
    return list(session.scalars(
        select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id)
    ))


# -- the runs list: whitelisted filters, bound parameters, keyset pages ---------------------
SortKey = Literal["-queued", "queued", "-started", "started", "-finished", "finished"]
_SORT_COLUMNS = {"queued": Run.id, "started": Run.started_at, "finished": Run.finished_at}


@dataclass
class RunFilters:
    status: list[RunState] = field(default_factory=list)
    owner: str | None = None
    image: str | None = None
    tag: str | None = None
    kind: RunKind | None = None
    definition_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    sort: SortKey = "-queued"
    cursor: str | None = None
    limit: int = 50


@dataclass
class RunPage:
    runs: list[Run]
    next_cursor: str | None


@dataclass(frozen=True)
class _Cursor:
    value: str | None  # the sort column's value at the last row (ISO time), None for ids
    id: int | None  # None: at the very start of the rows without a value
    in_nulls: bool  # past the rows that have a value, into those that have none


def _encode_cursor(sort: str, value: datetime | None, run_id: int | None, in_nulls: bool) -> str:
    payload = {"s": sort, "v": value.isoformat() if value else None, "id": run_id, "n": in_nulls}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(sort: str, cursor: str) -> _Cursor:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if payload["s"] != sort:
            raise ValueError("cursor of another sort order")
        value = payload["v"]
        if value is not None:
            datetime.fromisoformat(value)
        run_id = payload["id"]
        if run_id is None and not payload["n"]:
            raise ValueError("cursor without a row")
        return _Cursor(value, None if run_id is None else int(run_id), bool(payload["n"]))
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError):
        raise _problem("cursor", "not a cursor from this list (or from another sort order); "
                       "start again from the first page") from None


def list_runs(session: Session, caller: Caller, filters: RunFilters) -> RunPage:
    query = select(Run).options(selectinload(Run.tags), selectinload(Run.definition))
    if not caller.admin:
        if filters.owner and filters.owner != caller.name:
            return RunPage([], None)  # other people's runs do not exist for you
        query = query.where(Run.owner == caller.name)
    elif filters.owner:
        query = query.where(Run.owner == filters.owner)
    if filters.status:
        query = query.where(Run.status.in_(filters.status))
    if filters.image:
        query = query.where(Run.image == filters.image)
    if filters.kind:
        query = query.where(Run.kind == filters.kind)
    if filters.definition_id is not None:
        query = query.where(Run.definition_id == filters.definition_id)
    if filters.tag:
        query = query.join(RunTag, and_(RunTag.run_id == Run.id, RunTag.tag == filters.tag))
    if filters.since:
        query = query.where(Run.queued_at >= filters.since)
    if filters.until:
        query = query.where(Run.queued_at < filters.until)

    descending = filters.sort.startswith("-")
    key = filters.sort.lstrip("-")
    cursor = _decode_cursor(filters.sort, filters.cursor) if filters.cursor else None
    limit = filters.limit
    if key == "queued":
        # With a tag, walk the (tag, run_id) index in order instead of sorting its matches.
        key_column = RunTag.run_id if filters.tag else Run.id
        if cursor and cursor.id is not None:
            query = query.where(key_column < cursor.id if descending else key_column > cursor.id)
        order = key_column.desc() if descending else key_column.asc()
        rows = list(session.scalars(query.order_by(order).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(filters.sort, None, rows[-1].id, False) if more else None
        return RunPage(rows, next_cursor)
    return _list_by_time(session, query, _SORT_COLUMNS[key], filters.sort, descending, cursor,
                         limit)


def _list_by_time(session: Session, query: Select[tuple[Run]], column: Any, sort: str,
                  descending: bool, cursor: _Cursor | None, limit: int) -> RunPage:
    """Rows with a time first (by time, then id), then rows without one (by id): two
    index-friendly keyset segments instead of one sort over an expression."""
    rows: list[Run] = []
    if cursor is None or not cursor.in_nulls:
        timed = query.where(column.is_not(None))
        if cursor is not None and cursor.value is not None:
            at = datetime.fromisoformat(cursor.value)
            if descending:
                timed = timed.where(or_(column < at, and_(column == at, Run.id < cursor.id)))
            else:
                timed = timed.where(or_(column > at, and_(column == at, Run.id > cursor.id)))
        order = (column.desc(), Run.id.desc()) if descending else (column.asc(), Run.id.asc())
        rows = list(session.scalars(timed.order_by(*order).limit(limit + 1)))
        if len(rows) > limit:
            last = rows[limit - 1]
            return RunPage(rows[:limit], _encode_cursor(sort, getattr(last, column.key), last.id,
                                                        False))
    untimed = query.where(column.is_(None))
    if cursor is not None and cursor.in_nulls and cursor.id is not None:
        untimed = untimed.where(Run.id < cursor.id if descending else Run.id > cursor.id)
    room = limit - len(rows)
    order_id = Run.id.desc() if descending else Run.id.asc()
    tail = list(session.scalars(untimed.order_by(order_id).limit(room + 1)))
    if len(tail) <= room:
        return RunPage(rows + tail, None)
    if room == 0:  # the page ended exactly where the rows without a value begin
        return RunPage(rows, _encode_cursor(sort, None, None, True))
    rows += tail[:room]
    return RunPage(rows, _encode_cursor(sort, None, rows[-1].id, True))
