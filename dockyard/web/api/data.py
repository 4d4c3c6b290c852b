"""REST API: the data catalog (tables, batches, partitions, history, rollback).

A write is two calls: ``POST …/batches`` begins a batch and answers where to write;
the client writes parquet files and a manifest there, then ``POST …/batches/{id}/commit``
makes the batch the partition's current one. Reads ask ``POST …/reads`` which batches to
read (current, pinned or as of a time), which also records lineage for job runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from flask import jsonify
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
)
from sqlalchemy import select

from dockyard.data import Actor
from dockyard.models import MAX_ID, Run
from dockyard.web.api import route
from dockyard.web.auth import current_user
from dockyard.web.context import catalog, db
from dockyard.web.errors import ApiError

TAG = "data"


def _partition_value(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("a partition value is a string or an integer")
    return value


PartitionValue = Annotated[StrictStr | StrictInt, BeforeValidator(_partition_value)]
PartitionSpec = dict[str, PartitionValue]


def actor() -> Actor:
    user = current_user()
    if user is None:  # the route decorator has already answered 401
        raise ApiError(401, "Unauthorized", "Send a JupyterHub token.")
    return Actor(user.name, user.admin, user.run_id)


# -- models ----------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ColumnField(BaseModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    name: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=512, description="Arrow type name, e.g. int64")
    nullable: bool = True


class StorageOut(_Out):
    kind: str = Field(description="local or s3")
    root: str
    endpoint_url: str = ""
    region: str = ""


class NamespaceOut(_Out):
    name: str
    owner: str
    created_at: datetime
    tables: int
    can_write: bool


class NamespaceList(_Out):
    namespaces: list[NamespaceOut]


class NamespaceIn(_In):
    owner: str = Field(min_length=1, max_length=64, description="User who owns the namespace")


class TableOut(_Out):
    namespace: str
    name: str
    description: str
    partition_keys: list[str]
    schema_: list[ColumnField] = Field(alias="schema", serialization_alias="schema")
    owner: str
    created_by: str
    created_at: datetime
    partitions: int
    rows: int
    bytes: int
    last_commit_at: datetime | None
    can_write: bool

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class TableList(_Out):
    tables: list[TableOut]


class TablesQuery(_In):
    namespace: str | None = Field(None, max_length=64)


class TableIn(_In):
    partition_keys: list[StrictStr] | None = Field(
        None, description="Partition columns; fixed once the table has a batch")
    description: str | None = Field(None, max_length=2000)


class BatchOut(_Out):
    batch_id: str
    namespace: str
    table: str
    partition: str
    partition_values: dict[str, str]
    location: str
    state: str
    rows: int | None
    bytes: int | None
    files: list[str]
    created_by: str
    created_at: datetime
    committed_at: datetime | None
    run_id: int | None
    columns: list[str]


class BeginIn(_In):
    partition: PartitionSpec = Field(default_factory=dict,
                                     description="Partition values, e.g. {\"date\": \"20161031\"}")
    schema_: list[ColumnField] | None = Field(
        None, alias="schema", description="Columns about to be written; checked now so that a "
        "mismatch is refused before any data is written")
    evolve: bool = Field(False, description="Allow new nullable columns")
    run_id: int | None = Field(None, ge=1, le=MAX_ID, description="The job run writing "
                               "(lineage); a run-scoped token implies it")


class BeginOut(_Out):
    batch_id: str
    location: str = Field(description="Directory to write the parquet files and manifest to")
    partition: str
    partition_values: dict[str, str]
    storage: StorageOut
    table_created: bool


class CommitIn(_In):
    evolve: bool = Field(False, description="Allow new nullable columns")


class CommitOut(_Out):
    batch: BatchOut
    previous_batch_id: str | None
    version: int
    already_committed: bool


class PartitionOut(_Out):
    partition: str
    values: dict[str, str]
    version: int
    updated_at: datetime
    batch: BatchOut


class PartitionList(_Out):
    partitions: list[PartitionOut]


class HistoryQuery(_In):
    partition: str | None = Field(None, max_length=512,
                                  description="key=value/key=value; default: all partitions")
    limit: int = Field(1000, ge=1, le=10000, description="The last N entries")


class HistoryOut(_Out):
    id: int
    partition: str
    action: str
    batch_id: str
    previous_batch_id: str | None
    actor: str
    run_id: int | None
    at: datetime
    rows: int | None
    bytes: int | None
    batch_run_id: int | None
    batch_created_by: str


class HistoryList(_Out):
    history: list[HistoryOut]


class RollbackIn(_In):
    partition: PartitionSpec = Field(default_factory=dict)
    to_batch: str | None = Field(None, min_length=1, max_length=40,
                                 description="Default: the batch committed before the current one")


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC) if value is not None else None
    except OverflowError:  # near year 1 or 9999 with an offset: no such time in UTC
        raise ValueError("out of range") from None


class ReadsIn(_In):
    partitions: list[PartitionSpec] | None = Field(
        None, description="Partitions to read; a partial spec selects every matching one")
    batch_id: str | None = Field(None, min_length=1, max_length=40,
                                 description="Read exactly this committed batch")
    as_of: datetime | None = Field(None, description="Read the state at this time (UTC if no "
                                   "zone is given)")
    run_id: int | None = Field(None, ge=1, le=MAX_ID)

    @field_validator("as_of")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class ReadPlanOut(_Out):
    batches: list[BatchOut]
    schema_: list[ColumnField] = Field(alias="schema", serialization_alias="schema")
    storage: StorageOut

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class PreviewQuery(_In):
    partition: str | None = Field(None, max_length=512)
    batch_id: str | None = Field(None, max_length=40)
    limit: int = Field(20, ge=1, le=200)


class PreviewOut(_Out):
    batch_id: str
    partition: str
    columns: list[str]
    rows: list[list[Any]]
    total_rows: int | None


class RunLineageOut(_Out):
    run_id: int
    wrote: list[BatchOut]
    read: list[BatchOut]


def _dump(model: BaseModel, status: int = 200) -> Any:
    return jsonify(model.model_dump(mode="json", by_alias=True)), status


# -- routes ----------------------------------------------------------------------------

WRITE_REFUSED = "Only the namespace's owner and admins may write to it (everyone may read)"


@route("/namespaces", tag=TAG, response=NamespaceList)
def list_namespaces() -> Any:
    """Namespaces, their owners and whether the caller may write to them."""
    return NamespaceList(namespaces=[NamespaceOut.model_validate(n)
                                     for n in catalog().namespaces(actor())])


@route("/namespaces/<namespace>", "PUT", tag=TAG, body=NamespaceIn, response=NamespaceOut,
       admin=True)
def put_namespace(namespace: str, body: NamespaceIn) -> Any:
    """Create a namespace for a user or hand it to another owner (admins)."""
    return NamespaceOut.model_validate(catalog().set_namespace_owner(actor(), namespace,
                                                                     body.owner))


@route("/tables", tag=TAG, query=TablesQuery, response=TableList)
def list_tables(query: TablesQuery) -> Any:
    """All tables (everyone may read every table), optionally of one namespace."""
    tables = catalog().list_tables(actor(), query.namespace)
    return _dump(TableList(tables=[TableOut.model_validate(t) for t in tables]))


@route("/tables/<namespace>/<name>", tag=TAG, response=TableOut)
def get_table(namespace: str, name: str) -> Any:
    """A table: partition keys, schema, owner, size, and whether the caller may write."""
    return _dump(TableOut.model_validate(catalog().table(actor(), namespace, name)))


@route("/tables/<namespace>/<name>", "PUT", tag=TAG, body=TableIn, response=TableOut,
       responses={201: "Created", 403: WRITE_REFUSED,
                  409: "Partition keys cannot change once the table has a batch"})
def put_table(namespace: str, name: str, body: TableIn) -> Any:
    """Create a table (201) or change its description (200).

    The namespace is created on first use, owned by the caller. Tables are also created
    by their first write, so this call is optional."""
    table, created = catalog().put_table(actor(), namespace, name,
                                         partition_keys=body.partition_keys,
                                         description=body.description)
    return _dump(TableOut.model_validate(table), 201 if created else 200)


@route("/tables/<namespace>/<name>/batches", "POST", tag=TAG, body=BeginIn, response=BeginOut,
       status=201, responses={403: WRITE_REFUSED, 409: "The schema does not match the table's"})
def begin_batch(namespace: str, name: str, body: BeginIn) -> Any:
    """Begin a batch: returns its id and the directory to write parquet files to.

    Nothing is visible to readers until the batch is committed."""
    fields = [f.model_dump() for f in body.schema_] if body.schema_ is not None else None
    began = catalog().begin_batch(actor(), namespace, name, body.partition, fields=fields,
                                  evolve=body.evolve, run_id=body.run_id)
    return BeginOut.model_validate(began)


@route("/tables/<namespace>/<name>/batches/<batch_id>", tag=TAG, response=BatchOut)
def get_batch(namespace: str, name: str, batch_id: str) -> Any:
    """One batch: state, files, rows, bytes, who wrote it and from which run."""
    return BatchOut.model_validate(catalog().batch(actor(), namespace, name, batch_id))


@route("/tables/<namespace>/<name>/batches/<batch_id>/commit", "POST", tag=TAG, body=CommitIn,
       response=CommitOut, responses={403: WRITE_REFUSED,
                                      409: "Files missing, or the schema does not match"})
def commit_batch(namespace: str, name: str, batch_id: str, body: CommitIn) -> Any:
    """Commit a batch: verify its files and make it the partition's current batch.

    One transaction marks the batch committed, moves the partition pointer
    (compare-and-swap) and records the move in the history. Committing twice is
    harmless: the second call reports ``already_committed``."""
    result = catalog().commit_batch(actor(), namespace, name, batch_id, evolve=body.evolve)
    return CommitOut.model_validate(result)


@route("/tables/<namespace>/<name>/partitions", tag=TAG, response=PartitionList)
def list_partitions(namespace: str, name: str) -> Any:
    """Committed partitions and their current batches."""
    parts = catalog().partitions(actor(), namespace, name)
    return PartitionList(partitions=[PartitionOut.model_validate(p) for p in parts])


@route("/tables/<namespace>/<name>/history", tag=TAG, query=HistoryQuery, response=HistoryList)
def table_history(namespace: str, name: str, query: HistoryQuery) -> Any:
    """Every pointer move (commit or rollback), oldest first."""
    entries = catalog().history(actor(), namespace, name, query.partition, limit=query.limit)
    return HistoryList(history=[HistoryOut.model_validate(h) for h in entries])


@route("/tables/<namespace>/<name>/rollback", "POST", tag=TAG, body=RollbackIn,
       response=HistoryOut, responses={403: WRITE_REFUSED, 409: "Nothing to roll back to"})
def rollback(namespace: str, name: str, body: RollbackIn) -> Any:
    """Point a partition back at an earlier committed batch (owners and admins).

    The rollback is itself a history entry; no batch is deleted."""
    entry = catalog().rollback(actor(), namespace, name, body.partition, to_batch=body.to_batch)
    return HistoryOut.model_validate(entry)


@route("/tables/<namespace>/<name>/reads", "POST", tag=TAG, body=ReadsIn, response=ReadPlanOut)
def resolve_reads(namespace: str, name: str, body: ReadsIn) -> Any:
    """Which committed batches and files to read, recorded as lineage for job runs.

    Give ``partitions`` (each possibly partial), or ``as_of`` a time, or pin one
    ``batch_id``; by default the current batch of every partition."""
    if body.batch_id is not None and (body.partitions or body.as_of is not None):
        raise ApiError(422, "Invalid input", [{"field": "batch_id", "message": "a pinned "
                       "batch_id cannot be combined with partitions or as_of"}])
    plan = catalog().resolve_reads(actor(), namespace, name, partitions=body.partitions,
                                   batch_id=body.batch_id, as_of=body.as_of,
                                   run_id=body.run_id)
    return _dump(ReadPlanOut.model_validate(plan))


@route("/tables/<namespace>/<name>/preview", tag=TAG, query=PreviewQuery, response=PreviewOut)
def preview(namespace: str, name: str, query: PreviewQuery) -> Any:
    """The first rows of a partition's current batch, or of a pinned batch."""
    result = catalog().preview(actor(), namespace, name, partition=query.partition,
                               batch_id=query.batch_id, limit=query.limit)
    return PreviewOut.model_validate(result)


@route("/lineage/runs/<int:run_id>", tag=TAG, response=RunLineageOut)
def run_lineage(run_id: int) -> Any:
    """The batches a run wrote and read (its owner and admins)."""
    who = actor()
    owner = db().scalar(select(Run.owner).where(Run.id == run_id))
    if owner is None or (owner != who.name and not who.admin):
        raise ApiError(404, "Run not found", f"There is no run {run_id} of yours.")
    lineage = catalog().run_lineage(run_id)
    return RunLineageOut(run_id=run_id, wrote=[BatchOut.model_validate(b) for b in lineage.wrote],
                         read=[BatchOut.model_validate(b) for b in lineage.read])
