"""REST API: job definitions and runs. Thin: parse, call dockyard.jobs.service, shape the answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import nbformat
from flask import Response, request, send_file
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import object_session

from dockyard.clusters.schemas import PlainText
from dockyard.clusters.service import clusters_of_runs
from dockyard.errors import Conflict, Forbidden, Invalid
from dockyard.jobs import service
from dockyard.jobs.artifacts import MEDIA_TYPES, OUTPUT, Artifact
from dockyard.jobs.notebooks import NotebookFile
from dockyard.jobs.run_logs import log_path, read_log
from dockyard.jobs.schemas import BackfillIn, Command, DefinitionIn, JobLimits, RunIn
from dockyard.jobs.service import RunFilters, SortKey
from dockyard.models import (
    MAX_ID,
    Backfill,
    JobDefinition,
    Run,
    RunEvent,
    RunKind,
    RunState,
    TriggerFire,
)
from dockyard.web.api import route
from dockyard.web.auth import User, current_user
from dockyard.web.context import artifacts, db, homes, settings, write_db
from dockyard.web.errors import ApiError

# -- what the API returns ------------------------------------------------------------------
NO_IMAGE_MEANS = ("null: no image; the run is a local process in Dockyard's own Python "
                  "environment (a local pool, on a machine without Docker).")


class NotebookOut(BaseModel):
    name: str = Field(description="The notebook's file name.")
    source: str = Field(description="upload, or home (read from the owner's home at submit).")
    path: str | None = Field(description="Its path in the home, when it came from there.")
    parameters: dict[str, Any] = Field(description="What papermill injected.")
    kernel: str
    language: str
    sha256: str = Field(description="Of the snapshot taken at submit (input.ipynb).")


class RunOut(BaseModel):
    id: int
    definition_id: int | None
    definition_name: str | None
    owner: str
    kind: RunKind = Field(description="command, or notebook: the command runs the notebook "
                          "snapshot with papermill.")
    notebook: NotebookOut | None = Field(description="A notebook run's notebook; null for a "
                                         "command run.")
    image: str | None = Field(description=NO_IMAGE_MEANS)
    command: Command
    cpu: float
    memory_mb: int
    gpu: int
    env: dict[str, str]
    tags: list[str]
    timeout_seconds: int | None
    max_retries: int
    attempt: int
    retry_of_id: int | None
    backend: str | None
    pool: str = Field(description="The job pool the run went to.")
    node: str | None = Field(description="Where it ran: the Swarm node, the ECS container "
                             "instance (or Fargate zone).")
    engine_handle: str | None = Field(description="The engine's id of its job: container "
                                      "id, Swarm service id, ECS task ARN.")
    status: RunState
    cancel_requested: bool
    exit_code: int | None
    reason: str
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="Running time, so far if still running.")
    trigger: dict[str, Any] | None = Field(
        description="What fired the run: {kind: schedule, tick}, {kind: after, run_id, "
        "definition_id}, {kind: batch, namespace, table, partition, batch_id} or {kind: "
        "backfill, backfill_id, item}; null for a run started by hand.")
    cluster: dict[str, Any] | None = Field(
        None, description="{kind, workers, worker_cpu, worker_memory_mb}: the Spark or Ray "
        "cluster the run drives; null: none.")
    cluster_id: int | None = Field(
        None, description="That cluster (GET /clusters/{id}), once the worker made it.")

    @classmethod
    def of(cls, run: Run, cluster_ids: dict[int, int] | None = None) -> RunOut:
        """``cluster_ids`` (run id → its cluster's id) when a page of runs was looked up
        at once (``cluster_ids_of``); without it the run's own is looked up."""
        return cls(
            id=run.id, definition_id=run.definition_id,
            definition_name=run.definition.name if run.definition else None, owner=run.owner,
            kind=RunKind(run.kind),
            notebook=NotebookOut.model_validate(run.notebook) if run.notebook else None,
            image=run.image or None, command=run.command, cpu=run.cpu, memory_mb=run.memory_mb,
            gpu=run.gpu, env=run.env, tags=[t.tag for t in run.tags],
            timeout_seconds=run.timeout_seconds, max_retries=run.max_retries,
            attempt=run.attempt, retry_of_id=run.retry_of_id, backend=run.backend,
            pool=run.pool, node=run.node, engine_handle=run.engine_handle,
            status=run.status, cancel_requested=run.cancel_requested, exit_code=run.exit_code,
            reason=run.reason, queued_at=run.queued_at, started_at=run.started_at,
            finished_at=run.finished_at, duration_seconds=duration_seconds(run),
            trigger=run.trigger, cluster=run.cluster,
            cluster_id=(cluster_ids.get(run.id) if cluster_ids is not None
                        else cluster_ids_of([run]).get(run.id)),
        )


def cluster_ids_of(runs: list[Run]) -> dict[int, int]:
    """Run id → its cluster's id (its latest), for the runs that asked for one: one
    query for a whole page."""
    asked = [run.id for run in runs if run.cluster]
    session = object_session(runs[0]) if asked else None
    if session is None:
        return {}
    return clusters_of_runs(session, asked)


def duration_seconds(run: Run) -> float | None:
    if run.started_at is None:
        return None
    from dockyard.models import utcnow

    end = run.finished_at or utcnow()
    return round(max(0.0, (end - run.started_at).total_seconds()), 3)


class RunPageOut(BaseModel):
    runs: list[RunOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; "
                                    "null on the last page.")


class DefinitionOut(BaseModel):
    id: int
    owner: str
    name: str
    description: str
    image: str | None = Field(description=NO_IMAGE_MEANS)
    command: Command
    cpu: float
    memory_mb: int
    gpu: int
    env: dict[str, str]
    tags: list[str]
    timeout_seconds: int | None
    max_retries: int
    pool: str
    kind: RunKind = Field(description="command, or notebook: its runs run the notebook "
                          "snapshot taken when the definition was saved.")
    notebook: NotebookOut | None = Field(description="A notebook definition's notebook.")
    schedule: dict[str, Any] | None = Field(description="{cron, timezone, concurrency, "
                                            "missed}, or null: not scheduled.")
    paused: bool = Field(description="Paused: none of its triggers fire (schedule, after, "
                         "on_batch); ticks, upstream runs and batches that come while paused "
                         "are never fired later. A backfill already started goes on.")
    after: dict[str, Any] | None = Field(description="{definition_id, on}: runs after that "
                                         "definition's runs end.")
    on_batch: dict[str, Any] | None = Field(description="{namespace, table, partition}: runs "
                                            "on each new batch of that table.")
    cluster: dict[str, Any] | None = Field(None, description="{kind, workers, worker_cpu, "
                                           "worker_memory_mb}: its runs drive a Spark or Ray "
                                           "cluster of this size; null: none.")
    next_runs: list[datetime] = Field(description="The next 5 fire times (UTC); [] when "
                                      "not scheduled or paused.")
    created_at: datetime
    updated_at: datetime

    @field_validator("image", mode="before")
    @classmethod
    def _none_for_no_image(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def of(cls, definition: JobDefinition) -> DefinitionOut:
        fields = {name: getattr(definition, name) for name in cls.model_fields
                  if name != "next_runs"}
        return cls.model_validate({**fields, "next_runs": service.next_runs(definition)})


class DefinitionListOut(BaseModel):
    definitions: list[DefinitionOut]


class PoolOut(BaseModel):
    name: str
    backend: str = Field(description="docker, swarm, ecs or local (auto: the installation's "
                         "choice).")
    description: str


class PoolListOut(BaseModel):
    pools: list[PoolOut]


class EventOut(BaseModel):
    at: datetime
    from_status: str | None
    to_status: str
    actor: str
    reason: str

    @classmethod
    def of(cls, event: RunEvent) -> EventOut:
        return cls.model_validate(event, from_attributes=True)


class EventListOut(BaseModel):
    events: list[EventOut]


class LogOut(BaseModel):
    run_id: int
    status: RunState
    offset: int
    next_offset: int = Field(description="Ask again with ?offset= this for what follows.")
    size: int = Field(description="Bytes kept so far.")
    text: str
    complete: bool = Field(description="The run has ended and everything has been read.")


# -- what the API accepts in query strings -------------------------------------------------
class RunsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: list[RunState] | None = Field(None, description="Repeat for several.")
    owner: PlainText | None = Field(None, max_length=64,
                                    description="Admins: someone's runs.")
    image: PlainText | None = Field(None, max_length=255)
    tag: PlainText | None = Field(None, max_length=64)
    kind: RunKind | None = Field(None, description="command or notebook runs only.")
    definition: int | None = Field(None, ge=1, le=MAX_ID, description="A definition id.")
    since: datetime | None = Field(None, description="Queued at or after (ISO 8601).")
    until: datetime | None = Field(None, description="Queued before (ISO 8601).")
    sort: SortKey = Field("-queued", description="queued, started or finished; '-' for newest "
                          "first.")
    cursor: PlainText | None = Field(None, max_length=512)
    limit: int = Field(50, ge=1, description="Page size (at most DOCKYARD_API_PAGE_SIZE_MAX).")

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """Times without a zone are UTC; times that cannot be told in UTC are refused."""
        if value is None:
            return None
        try:
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range") from None


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset: int = Field(0, ge=0, description="Byte offset to read from.")
    format: str = Field("json", pattern="^(json|text)$",
                        description="json: a piece with the next offset; text: the whole log "
                        "as a download.")


# -- helpers -------------------------------------------------------------------------------
def _caller() -> User:
    user = current_user()
    assert user is not None  # the route decorator has authenticated
    return user


def _limits() -> JobLimits:
    return JobLimits.from_settings(settings())


# -- definitions ---------------------------------------------------------------------------
@route("/definitions", tag="jobs", response=DefinitionListOut)
def list_definitions() -> DefinitionListOut:
    """Your job definitions (admins: everyone's)."""
    found = service.list_definitions(db(), _caller())
    return DefinitionListOut(definitions=[DefinitionOut.of(d) for d in found])


def _notebook_upload() -> NotebookFile | None:
    """The notebook file of a multipart request (part 'notebook'), if any."""
    if request.mimetype != "multipart/form-data":
        return None
    # A text part named 'notebook' was refused with the body (see route's file_part).
    uploads = request.files.getlist("notebook")
    if len(uploads) > 1:
        raise Invalid([{"field": "notebook", "message": "send one notebook"}])
    if not uploads:
        return None
    return NotebookFile(name=uploads[0].filename or "notebook.ipynb",
                        content=uploads[0].read(), source="upload")


@route("/definitions", "POST", tag="jobs", body=DefinitionIn, response=DefinitionOut, status=201,
       responses={409: "You already have a definition of that name"}, file_part="notebook")
def create_definition(body: DefinitionIn) -> DefinitionOut:
    """Create a job definition: a named recipe (image, command, resources) for runs, and
    what starts them by themselves (a schedule, after another definition's runs, on new
    data).

    A notebook definition: JSON with "notebook": {"path": ...} (a file in your home), or
    multipart/form-data with the notebook file in the part 'notebook'; its runs run the
    snapshot taken now, with "parameters"."""
    return DefinitionOut.of(service.create_definition(
        write_db(), _caller(), body, _limits(), notebook_file=_notebook_upload(),
        artifacts=artifacts(), homes=homes()))


@route("/definitions/<int:definition_id>", tag="jobs", response=DefinitionOut)
def get_definition(definition_id: int) -> DefinitionOut:
    """One job definition, with its next fire times."""
    return DefinitionOut.of(service.get_definition(db(), _caller(), definition_id))


@route("/definitions/<int:definition_id>", "PUT", tag="jobs", body=DefinitionIn,
       response=DefinitionOut, responses={409: "You already have a definition of that name"},
       file_part="notebook")
def update_definition(definition_id: int, body: DefinitionIn) -> DefinitionOut:
    """Replace a job definition (runs already made from it keep their copy). A notebook
    definition sent without a notebook keeps its snapshot."""
    return DefinitionOut.of(service.update_definition(
        write_db(), _caller(), definition_id, body, _limits(),
        notebook_file=_notebook_upload(), artifacts=artifacts(), homes=homes()))


@route("/definitions/<int:definition_id>/pause", "POST", tag="jobs", response=DefinitionOut)
def pause_definition(definition_id: int) -> DefinitionOut:
    """Pause the definition: none of its triggers (schedule, after, on_batch) fire until
    resumed, and the ticks, upstream runs and batches that come while paused are never
    fired later. A backfill already started goes on."""
    return DefinitionOut.of(service.pause_definition(write_db(), _caller(), definition_id))


@route("/definitions/<int:definition_id>/resume", "POST", tag="jobs", response=DefinitionOut)
def resume_definition(definition_id: int) -> DefinitionOut:
    """Resume the definition: its schedule fires from the next tick after now, its after
    and on_batch triggers from the next run end or batch (what came while paused is not
    made up)."""
    return DefinitionOut.of(service.resume_definition(write_db(), _caller(), definition_id))


class FireOut(BaseModel):
    key: str = Field(description="What fired: schedule:<tick>, after:<run id>, "
                     "batch:<batch id> or backfill:<backfill id>:<item>.")
    run_id: int | None = Field(description="The run it started (null: skipped, or the run "
                               "was deleted).")
    outcome: str = Field(description="started, or skipped: why.")
    at: datetime

    @classmethod
    def of(cls, fire: TriggerFire) -> FireOut:
        return cls.model_validate(fire, from_attributes=True)


class FireListOut(BaseModel):
    fires: list[FireOut]


class FiresQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, description="How many (at most DOCKYARD_API_PAGE_SIZE_MAX).")


@route("/definitions/<int:definition_id>/fires", tag="jobs", query=FiresQuery,
       response=FireListOut)
def list_fires(definition_id: int, query: FiresQuery) -> FireListOut:
    """The definition's triggers' firings and skipped ticks, newest first."""
    cap = settings().api_page_size_max
    if query.limit > cap:
        raise ApiError(422, "Invalid query parameters",
                       [{"field": "limit", "message": f"at most {cap}"}])
    fires = service.list_fires(db(), _caller(), definition_id, query.limit)
    return FireListOut(fires=[FireOut.of(f) for f in fires])


class BackfillOut(BaseModel):
    id: int
    definition_id: int
    items_total: int = Field(description="Runs the backfill makes in all.")
    started: int = Field(description="Runs started so far.")
    active: int = Field(description="Its runs queued or running now.")
    max_parallel: int
    created_at: datetime
    finished_at: datetime | None = Field(description="When its last run ended (null: not "
                                         "yet).")

    @classmethod
    def of(cls, backfill: Backfill, active: int) -> BackfillOut:
        return cls(id=backfill.id, definition_id=backfill.definition_id,
                   items_total=len(backfill.items), started=backfill.next_index, active=active,
                   max_parallel=backfill.max_parallel, created_at=backfill.created_at,
                   finished_at=backfill.finished_at)


class BackfillListOut(BaseModel):
    backfills: list[BackfillOut]


@route("/definitions/<int:definition_id>/backfills", "POST", tag="jobs", body=BackfillIn,
       response=BackfillOut, status=201)
def create_backfill(definition_id: int, body: BackfillIn) -> BackfillOut:
    """Run the definition for the past, a few runs at a time: {"partition": {"date":
    "2024-01-*"}} for each matching partition of its on_batch table (with its current
    batch), or {"from": "2024-01-01", "to": "2024-01-31"} for each day of a scheduled
    definition (at that day's first tick)."""
    session = write_db()
    backfill = service.create_backfill(session, _caller(), definition_id, body, _limits())
    return BackfillOut.of(backfill, service.backfill_active(session, backfill))


@route("/definitions/<int:definition_id>/backfills", tag="jobs", response=BackfillListOut)
def list_backfills(definition_id: int) -> BackfillListOut:
    """The definition's backfills and their progress, newest first."""
    session = db()
    found = service.list_backfills(session, _caller(), definition_id)
    return BackfillListOut(backfills=[BackfillOut.of(b, service.backfill_active(session, b))
                                      for b in found])


@route("/definitions/<int:definition_id>", "DELETE", tag="jobs", status=204)
def delete_definition(definition_id: int) -> Response:
    """Delete a job definition; its runs stay, as ad-hoc runs."""
    service.delete_definition(write_db(), _caller(), definition_id)
    return Response(status=204)


# -- runs ------------------------------------------------------------------------------------
@route("/pools", tag="jobs", response=PoolListOut)
def list_pools() -> PoolListOut:
    """The job pools you may send runs to ('default' first)."""
    usable = _limits().pools.usable_by(_caller())
    return PoolListOut(pools=[PoolOut(name=p.name, backend=p.backend,
                                      description=p.description) for p in usable])


@route("/runs", "POST", tag="jobs", body=RunIn, response=RunOut, status=201,
       file_part="notebook")
def create_run(body: RunIn) -> RunOut:
    """Queue a run, from a definition (other fields override it) or ad hoc.

    A notebook run: JSON with "notebook": {"path": ...} (a file in your home), or
    multipart/form-data with the notebook file in the part 'notebook'; "parameters" are
    injected by papermill. Dockyard keeps a snapshot of the notebook as it was now."""
    return RunOut.of(service.create_run(write_db(), _caller(), body, _limits(),
                                        notebook_file=_notebook_upload(),
                                        artifacts=artifacts(), homes=homes()))


@route("/runs", tag="jobs", query=RunsQuery, response=RunPageOut)
def list_runs(query: RunsQuery) -> RunPageOut:
    """Your runs, newest first (admins: everyone's), filtered, a keyset page at a time."""
    cap = settings().api_page_size_max
    # Without ?limit= a page is the default size or the cap, whichever is smaller.
    limit = query.limit if "limit" in query.model_fields_set else min(query.limit, cap)
    if limit > cap:
        raise ApiError(422, "Invalid query parameters",
                       [{"field": "limit", "message": f"at most {cap} per page"}])
    filters = RunFilters(
        status=query.status or [], owner=query.owner, image=query.image, tag=query.tag,
        kind=query.kind, definition_id=query.definition, since=query.since,
        until=query.until, sort=query.sort, cursor=query.cursor, limit=limit,
    )
    page = service.list_runs(db(), _caller(), filters)
    cluster_ids = cluster_ids_of(page.runs)
    return RunPageOut(runs=[RunOut.of(r, cluster_ids) for r in page.runs],
                      next_cursor=page.next_cursor)


@route("/runs/<int:run_id>", tag="jobs", response=RunOut)
def get_run(run_id: int) -> RunOut:
    """One run: status, timing, exit code and reason."""
    return RunOut.of(service.get_run(db(), _caller(), run_id))


@route("/runs/<int:run_id>/cancel", "POST", tag="jobs", response=RunOut, status=202,
       responses={409: "The run has already ended"})
def cancel_run(run_id: int) -> RunOut:
    """Ask for a run to be cancelled; the worker stops it. 409 if it has already ended."""
    return RunOut.of(service.request_cancel(write_db(), _caller(), run_id))


@route("/runs/<int:run_id>/retry", "POST", tag="jobs", response=RunOut, status=201,
       responses={409: "The run has not ended yet", 422: "Its image or pool may no longer "
                  "be used"})
def retry_run(run_id: int) -> RunOut:
    """Queue a new attempt of a run that has ended; the old attempt is kept."""
    return RunOut.of(service.retry_run(write_db(), _caller(), run_id, _limits()))


@route("/runs/<int:run_id>/events", tag="jobs", response=EventListOut)
def run_events(run_id: int) -> EventListOut:
    """Every change of the run's status, with who and why."""
    run = service.get_run(db(), _caller(), run_id)
    return EventListOut(events=[EventOut.of(e) for e in service.events_of(db(), run)])


@route("/runs/<int:run_id>/logs", tag="jobs", query=LogQuery, response=LogOut)
def run_logs(run_id: int, query: LogQuery) -> Any:
    """The run's output after byte ?offset= (poll with next_offset while it runs), or
    ?format=text for the whole log as a file."""
    run = service.get_run(db(), _caller(), run_id)
    path = log_path(settings(), run.id)
    if query.format == "text":
        if not path.exists():
            return Response("", mimetype="text/plain")
        return send_file(path, mimetype="text/plain", as_attachment=True,
                         download_name=f"run-{run.id}.log", max_age=0)
    chunk = read_log(path, query.offset)
    complete = run.status.is_final and chunk.next_offset >= chunk.size
    return LogOut(run_id=run.id, status=run.status, offset=chunk.offset,
                  next_offset=chunk.next_offset, size=chunk.size, text=chunk.text,
                  complete=complete)


# -- a run's files -----------------------------------------------------------------------------
class ArtifactOut(BaseModel):
    name: str
    size: int | None = Field(description="Bytes; null for output.html until it is first "
                             "asked for (it is rendered then).")
    media_type: str

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls(name=artifact.name, size=artifact.size, media_type=artifact.media_type)


class ArtifactListOut(BaseModel):
    artifacts: list[ArtifactOut]


class OutputSent(Conflict):
    error = "Run has ended"


class NotTheRunsJob(Forbidden):
    error = "Only the run's job sends its files"


@route("/runs/<int:run_id>/artifacts", tag="jobs", response=ArtifactListOut)
def list_artifacts(run_id: int) -> ArtifactListOut:
    """The run's files: a notebook run's input.ipynb (the snapshot), and once it has run,
    output.ipynb (the executed notebook) and output.html."""
    run = service.get_run(db(), _caller(), run_id)
    return ArtifactListOut(artifacts=[ArtifactOut.of(a) for a in artifacts().list(run)])


@route("/runs/<int:run_id>/artifacts/<name>", tag="jobs",
       responses={200: "The file, as a download"})
def get_artifact(run_id: int, name: str) -> Response:
    """Download one of the run's files by name (see the list)."""
    run = service.get_run(db(), _caller(), run_id)
    content = artifacts().read(run, name)
    return Response(content, mimetype=MEDIA_TYPES[name], headers={
        "Content-Disposition": f'attachment; filename="run-{run.id}-{name}"',
        "X-Content-Type-Options": "nosniff",
        # A downloaded page must never run as Dockyard's origin, even if opened inline.
        "Content-Security-Policy": "sandbox",
        "Cache-Control": "private, no-cache",
    })


@route("/runs/<int:run_id>/artifacts/<name>", "PUT", tag="jobs", status=204,
       responses={403: "Not the run's own job", 409: "The run has ended",
                  422: "Not a notebook"})
def put_artifact(run_id: int, name: str) -> Response:
    """Keep the executed notebook: called by a notebook run's job, with its own token,
    while the run has not ended (body: the notebook's JSON)."""
    caller = _caller()
    run = service.get_run(db(), caller, run_id)
    if caller.run_id != run.id:
        raise NotTheRunsJob(f"only the job of run #{run.id} (with its DOCKYARD_TOKEN) sends "
                            "its files")
    if name != OUTPUT:
        raise Invalid([{"field": "name", "message": f"a run's job sends only {OUTPUT}"}])
    if run.status.is_final:
        raise OutputSent(f"run #{run.id} has ended ({run.status.value}); its files are kept "
                         "as they were")
    content = request.get_data(cache=False)
    try:
        # The whole notebook format, not only its JSON: the pages and the worker's reading
        # of the failed cell rely on it.
        nbformat.validate(nbformat.reads(content.decode("utf-8"), as_version=4))
    except Exception as exc:  # JSON, encoding, nbformat: each its own exception type
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise Invalid([{"field": "body", "message": "not a valid notebook (send the executed "
                        f".ipynb JSON): {message}"}]) from None
    artifacts().save_output(run, content)
    return Response(status=204)
