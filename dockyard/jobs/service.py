"""What may happen to job definitions and runs, on behalf of whom. No Flask here.

The web pages and the REST API call these functions; the worker shares ``new_attempt``.
Everyone sees and acts on their own definitions and runs only (admins on all); another
user's object is reported as missing, never as forbidden.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from dockyard.errors import Conflict, NotFound
from dockyard.images.catalog import ImageNotAllowed, default_image, resolve_image, usable_images
from dockyard.jobs import notebooks
from dockyard.jobs.artifacts import ArtifactStore
from dockyard.jobs.notebooks import HomeFileMissing, HomeFiles, NotebookFile
from dockyard.jobs.schemas import DefinitionIn, FieldProblem, InvalidJob, JobLimits, RunIn
from dockyard.models import (
    FINAL_STATES,
    JobDefinition,
    Run,
    RunEvent,
    RunKind,
    RunState,
    RunTag,
)
from dockyard.settings.job_pools import DEFAULT_POOL

DEFAULT_CPU = 1.0
DEFAULT_MEMORY_MB = 1024
RUN_FIELDS = ("image", "command", "cpu", "memory_mb", "gpu", "env", "timeout_seconds",
              "max_retries", "pool")
#: What a retry copies besides RUN_FIELDS: a notebook run's retry runs the same snapshot.
ATTEMPT_FIELDS = (*RUN_FIELDS, "kind", "notebook")


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


def _definition_values(body: DefinitionIn, limits: JobLimits, session: Session,
                       caller: Caller) -> dict[str, Any]:
    values = body.model_dump()
    values["pool"] = values["pool"] or DEFAULT_POOL
    values["cpu"] = values["cpu"] if values["cpu"] is not None else min(DEFAULT_CPU, limits.max_cpu)
    if values["memory_mb"] is None:
        values["memory_mb"] = min(DEFAULT_MEMORY_MB, limits.max_memory_mb)
    values["gpu"] = values["gpu"] or 0
    values["env"] = values["env"] or {}
    values["tags"] = values["tags"] or []
    values["max_retries"] = values["max_retries"] or 0
    problems = limits.check(values) + _fill_in_image(session, values, limits, "choose an image")
    problems += _check_pool(limits, values["pool"], caller)
    if problems:
        raise InvalidJob(problems)
    return values


def create_definition(session: Session, caller: Caller, body: DefinitionIn,
                      limits: JobLimits) -> JobDefinition:
    values = _definition_values(body, limits, session, caller)
    definition = JobDefinition(owner=caller.name, **values)
    session.add(definition)
    _commit_unique_name(session, body.name)
    return definition


def update_definition(session: Session, caller: Caller, definition_id: int, body: DefinitionIn,
                      limits: JobLimits) -> JobDefinition:
    definition = get_definition(session, caller, definition_id)
    for key, value in _definition_values(body, limits, session, caller).items():
        setattr(definition, key, value)
    _commit_unique_name(session, body.name)
    return definition


def _commit_unique_name(session: Session, name: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise JobConflict("name taken", [FieldProblem(
            "name", f"you already have a definition named '{name}'")]) from None


def delete_definition(session: Session, caller: Caller, definition_id: int) -> None:
    """Runs made from it stay (their definition becomes 'ad hoc')."""
    definition = get_definition(session, caller, definition_id)
    session.delete(definition)
    session.commit()


def definition_history(session: Session, definition: JobDefinition, limit: int = 30) -> list[Run]:
    """The definition's most recent runs, newest first."""
    return list(session.scalars(
        select(Run).where(Run.definition_id == definition.id).order_by(Run.id.desc()).limit(limit)
    ))


# -- runs ----------------------------------------------------------------------------------
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
                              "pool": DEFAULT_POOL}
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
    if notebook_file is not None or body.notebook is not None:
        notebook = _notebook_run(session, caller, body, values, limits, problems,
                                 notebook_file, homes)
    elif body.parameters is not None:
        problems.append(FieldProblem("parameters", "parameters are for notebook runs; send "
                                     "a notebook with them"))
    if not values["command"]:
        problems.append(FieldProblem("command", "give a command (or a definition)"))
    problems += limits.check(values)
    problems += _check_pool(limits, values["pool"], caller)
    if problems:
        raise InvalidJob(problems)
    reason = f"submitted by run #{caller.run_id}" if caller.run_id else "submitted"
    run = Run(
        owner=caller.name, definition_id=definition.id if definition else None,
        **{key: values[key] for key in RUN_FIELDS}, attempt=1, status=RunState.QUEUED,
    )
    if notebook is not None:
        if artifacts is None:
            raise ValueError("a notebook run needs the artifact store for its snapshot")
        # The snapshot is written before the run exists: a run never points at nothing.
        run.kind = RunKind.NOTEBOOK
        run.notebook = {**notebook.record, "sha256": artifacts.save_snapshot(notebook.content)}
    run.tags = [RunTag(tag=tag) for tag in values["tags"]]
    run.events = [RunEvent(from_status=None, to_status=RunState.QUEUED.value, actor=caller.name,
                           reason=reason)]
    session.add(run)
    session.commit()
    return run


@dataclass(frozen=True)
class _NotebookRun:
    content: bytes
    #: The run's ``notebook`` column, but for the snapshot's sha256.
    record: dict[str, Any]


def _notebook_run(session: Session, caller: Caller, body: RunIn, values: dict[str, Any],
                  limits: JobLimits, problems: list[FieldProblem],
                  upload: NotebookFile | None, homes: HomeFiles | None) -> _NotebookRun | None:
    """Check a notebook run's notebook, parameters and image; make its command Dockyard's.
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
