"""The data catalog: what may happen to tables, batches and partition pointers.

Every write of a partition is a new batch in its own directory. A batch becomes visible
only when ``commit_batch`` switches the partition's pointer to it, in one transaction
that also marks the batch committed and appends to the pointer history. The switch is a
compare-and-swap on the pointer's ``version`` (``UPDATE … WHERE version = :seen``), so
concurrent commits to one partition serialise in the database: each one re-reads and
retries, every batch is kept, and the history lists them in the order the pointer moved.

Nothing here deletes data except ``collect_garbage``, which only ever removes batches
that were begun, never committed, and that no pointer has ever referenced.

No Flask here: the web API and pages, the CLI and the tests all call this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker
from ulid import ULID

from dockyard.data import names
from dockyard.data.errors import (
    BatchNotFound,
    InvalidName,
    NothingToRollBack,
    PartitionKeysFixed,
    PartitionNotFound,
    PermissionDenied,
    RunNotFound,
    TableNotFound,
)
from dockyard.data.schema import SchemaFields, check_schema, enforce_schema
from dockyard.data.storage import PREVIEW_MAX_ROWS, Storage, StorageConfig
from dockyard.db import make_engine, make_session_factory, write_sessions
from dockyard.models import (
    Batch,
    BatchRead,
    BatchState,
    DataTable,
    Namespace,
    PartitionPointer,
    PointerAction,
    PointerHistory,
    Run,
    utcnow,
)
from dockyard.settings import Settings

log = logging.getLogger(__name__)

WriteAccess = Literal["owner", "everyone"]
T = TypeVar("T")

# A pointer switch that loses the compare-and-swap re-reads and tries again; this many
# losses in a row would mean a livelock, not contention.
_MAX_SWITCH_ATTEMPTS = 1000
# PostgreSQL may still pick a deadlock victim or refuse a serialisation; the whole
# transaction is then retried from the start.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}
_MAX_TRANSACTION_ATTEMPTS = 8


@dataclass(frozen=True)
class Actor:
    """Who acts: a user, possibly as a job run (from a run-scoped token)."""

    name: str
    admin: bool = False
    run_id: int | None = None


# -- what callers get back (plain values, safe after the session is gone) ---------------


@dataclass(frozen=True)
class NamespaceView:
    name: str
    owner: str
    created_at: datetime
    tables: int
    can_write: bool


@dataclass(frozen=True)
class TableView:
    namespace: str
    name: str
    description: str
    partition_keys: list[str]
    schema: SchemaFields
    owner: str
    created_by: str
    created_at: datetime
    partitions: int
    rows: int
    bytes: int
    last_commit_at: datetime | None
    can_write: bool


@dataclass(frozen=True)
class BatchView:
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
    # Column names of the batch's files (a batch written before an evolution lacks the
    # columns added later).
    columns: list[str]


@dataclass(frozen=True)
class PartitionView:
    partition: str
    values: dict[str, str]
    version: int
    updated_at: datetime
    batch: BatchView


@dataclass(frozen=True)
class HistoryView:
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


@dataclass(frozen=True)
class BeganBatch:
    batch_id: str
    location: str
    partition: str
    partition_values: dict[str, str]
    storage: dict[str, str]
    table_created: bool


@dataclass(frozen=True)
class CommitResult:
    batch: BatchView
    previous_batch_id: str | None
    version: int
    already_committed: bool = False


@dataclass(frozen=True)
class ReadPlan:
    batches: list[BatchView]
    schema: SchemaFields
    storage: dict[str, str]


@dataclass(frozen=True)
class Preview:
    batch_id: str
    partition: str
    columns: list[str]
    rows: list[list[Any]]
    total_rows: int | None


@dataclass
class GarbageReport:
    abandoned: list[BatchView] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunLineage:
    wrote: list[BatchView]
    read: list[BatchView]


class Catalog:
    """The catalog over one database and one storage root."""

    def __init__(self, engine: Engine, storage: Storage, *,
                 write_access: WriteAccess = "owner",
                 pending_expiry: timedelta = timedelta(hours=24),
                 sessions: sessionmaker[Session] | None = None,
                 writes: sessionmaker[Session] | None = None) -> None:
        """``sessions`` and ``writes`` are the read and write session factories over
        ``engine`` of a program that already has them (the web app); a catalog on its own
        (the command line, the tests) makes its own."""
        self.engine = engine
        self.storage = storage
        self.write_access = write_access
        self.pending_expiry = pending_expiry
        self._reads = sessions or make_session_factory(engine)
        self._writes = writes or write_sessions(engine)

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine | None = None, *,
                      sessions: sessionmaker[Session] | None = None,
                      writes: sessionmaker[Session] | None = None) -> Catalog:
        return cls(
            engine or make_engine(settings.db_url),
            Storage(StorageConfig(settings.data_dir, settings.data_s3_endpoint_url,
                                  settings.data_s3_region)),
            write_access=settings.data_write_access,
            pending_expiry=timedelta(hours=settings.data_pending_expiry_hours),
            sessions=sessions, writes=writes,
        )

    # -- sessions --------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reads() as session:
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, retrying it whole when PostgreSQL
        chose it as a deadlock or serialisation victim."""
        for attempt in range(1, _MAX_TRANSACTION_ATTEMPTS + 1):
            try:
                with self._writes() as session, session.begin():
                    return work(session)
            except (OperationalError, DBAPIError) as exc:
                code = getattr(exc.orig, "sqlstate", None)
                if code not in _RETRYABLE_SQLSTATES or attempt == _MAX_TRANSACTION_ATTEMPTS:
                    raise
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    # -- namespaces and tables -------------------------------------------------------
    def may_write(self, actor: Actor, owner: str) -> bool:
        return actor.admin or self.write_access == "everyone" or actor.name == owner

    def namespaces(self, actor: Actor) -> list[NamespaceView]:
        with self._read() as session:
            counts = dict(
                session.execute(
                    select(DataTable.namespace, func.count()).group_by(DataTable.namespace)
                ).all()
            )
            return [
                NamespaceView(ns.name, ns.owner, ns.created_at, counts.get(ns.name, 0),
                              self.may_write(actor, ns.owner))
                for ns in session.scalars(select(Namespace).order_by(Namespace.name))
            ]

    def set_namespace_owner(self, actor: Actor, namespace: str, owner: str) -> NamespaceView:
        """Admins create a namespace for someone, or hand one over."""
        names.check_name("namespace", namespace)
        if not actor.admin:
            raise PermissionDenied("Only admins may create a namespace for someone or change "
                                   "its owner.")
        if not owner:
            raise InvalidName("owner", "name the user who owns the namespace")

        def work(session: Session) -> NamespaceView:
            ns = session.get(Namespace, namespace)
            if ns is None:
                ns = Namespace(name=namespace, owner=owner, created_at=utcnow())
                session.add(ns)
            else:
                ns.owner = owner
            session.flush()
            tables = session.scalar(select(func.count()).where(DataTable.namespace == namespace))
            return NamespaceView(ns.name, ns.owner, ns.created_at, tables or 0,
                                 self.may_write(actor, ns.owner))

        return self._write(work)

    def list_tables(self, actor: Actor, namespace: str | None = None) -> list[TableView]:
        with self._read() as session:
            query = select(DataTable).order_by(DataTable.namespace, DataTable.name)
            if namespace:
                query = query.where(DataTable.namespace == namespace)
            tables = session.scalars(query).all()
            return self._table_views(session, actor, tables)

    def table(self, actor: Actor, namespace: str, name: str) -> TableView:
        with self._read() as session:
            return self._table_views(session, actor, [self._table(session, namespace, name)])[0]

    def put_table(self, actor: Actor, namespace: str, name: str, *,
                  partition_keys: Sequence[str] | None = None,
                  description: str | None = None) -> tuple[TableView, bool]:
        """Create a table (and its namespace, owned by the caller) or update its
        description. Partition keys are fixed once the table has a batch."""
        names.check_name("namespace", namespace)
        names.check_name("table", name)
        keys = names.check_partition_keys(partition_keys) if partition_keys is not None else None

        def work(session: Session) -> tuple[str, bool]:
            table, created = self._table_for_writing(session, actor, namespace, name, keys or [])
            if not created and keys is not None and keys != table.partition_keys:
                has_batches = session.scalar(
                    select(func.count()).select_from(Batch).where(Batch.table_id == table.id))
                if has_batches:
                    raise PartitionKeysFixed(
                        f"{namespace}.{name} already has batches partitioned by "
                        f"{table.partition_keys}; its partition keys cannot change")
                table.partition_keys = keys
            if description is not None:
                table.description = description
            return table.name, created

        _, created = self._write(work)
        return self.table(actor, namespace, name), created

    # -- writing ---------------------------------------------------------------------
    def begin_batch(self, actor: Actor, namespace: str, name: str,
                    partition: Mapping[str, Any] | None = None, *,
                    fields: SchemaFields | None = None, evolve: bool = False,
                    run_id: int | None = None) -> BeganBatch:
        """Start a batch: a new directory for the client to write into. The table and its
        namespace are created on first write. A schema given here is checked now, so a
        mismatch is refused before gigabytes are written."""
        names.check_name("namespace", namespace)
        names.check_name("table", name)
        given = dict(partition or {})

        def work(session: Session) -> BeganBatch:
            writer_run = self._run_for(session, actor, run_id)
            table, created = self._table_for_writing(
                session, actor, namespace, name, names.check_partition_keys(list(given)))
            values = names.partition_values(table.partition_keys, given)
            if fields is not None and table_fields(table):
                enforce_schema(f"{namespace}.{name}", table_fields(table), fields, evolve=evolve)
            batch_id = str(ULID())
            partition_text = names.canonical(values)
            location = self.storage.location(namespace, name, partition_text, batch_id)
            session.add(Batch(
                table_id=table.id, partition=partition_text, partition_values=values,
                batch_id=batch_id, location=location, state=BatchState.PENDING,
                files=[], schema={}, created_by=actor.name, run_id=writer_run,
                created_at=utcnow(),
            ))
            return BeganBatch(batch_id, location, partition_text, values,
                              self.storage.config.public(), created)

        return self._write(work)

    def commit_batch(self, actor: Actor, namespace: str, name: str, batch_id: str, *,
                     evolve: bool = False) -> CommitResult:
        """Verify the batch's files, then in one transaction: switch the partition's
        pointer to it (compare-and-swap), append to the history and mark it committed."""
        with self._read() as session:
            found = session.execute(
                select(Batch, DataTable, Namespace.owner)
                .join(DataTable, DataTable.id == Batch.table_id)
                .join(Namespace, Namespace.name == DataTable.namespace)
                .where(DataTable.namespace == namespace, DataTable.name == name,
                       Batch.batch_id == batch_id)
            ).first()
            if found is None or (found[0].created_by != actor.name and not actor.admin):
                self._table(session, namespace, name)  # TableNotFound first, if that is it
                raise BatchNotFound(f"{namespace}.{name} has no batch {batch_id} of yours; "
                                    "begin one with POST …/batches")
            batch, table, owner = found
            if batch.state == BatchState.COMMITTED:
                return self._already_committed(session, table, batch)
            if not self.may_write(actor, owner):
                raise PermissionDenied(f"Namespace {namespace} belongs to {owner}; only its "
                                       "owner and admins may write to it (everyone may read).")
        # Storage is read outside the transaction: no lock is held while S3 answers.
        contents = self.storage.inspect_batch(batch.location)
        label = f"{namespace}.{name}"

        def work(session: Session) -> CommitResult:
            by_id = select(DataTable.schema).where(DataTable.id == table.id)
            recorded = (session.execute(by_id).scalar_one() or {}).get("fields", [])
            check = check_schema(recorded, contents.fields, evolve=evolve)
            if check.changed and not check.problems:
                # The recorded schema changes (first batch or evolution): take the table
                # row so two writers cannot record different schemas at once.
                locked = by_id.with_for_update(key_share=True)
                recorded = (session.execute(locked).scalar_one() or {}).get("fields", [])
            check = enforce_schema(label, recorded, contents.fields, evolve=evolve)
            if check.changed:
                session.execute(update(DataTable).where(DataTable.id == table.id)
                                .values(schema={"fields": check.schema})
                                .execution_options(synchronize_session=False))
            previous, version, at = _switch_pointer(
                session, table_id=table.id, partition=batch.partition, to_batch=batch.id,
                action=PointerAction.COMMIT, actor=actor.name,
                run_id=actor.run_id or batch.run_id,
            )
            # Claimed last, so that committed_at is the time the pointer moved; a batch
            # committed meanwhile by a retry of the same commit undoes this transaction.
            claimed = session.execute(
                update(Batch).where(Batch.id == batch.id, Batch.state == BatchState.PENDING)
                .values(state=BatchState.COMMITTED, rows=contents.rows, bytes=contents.bytes,
                        files=contents.files, schema={"fields": contents.fields},
                        committed_at=at)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:
                raise _AlreadyCommitted
            view = replace(_batch_view(batch, table), state=BatchState.COMMITTED.value,
                           rows=contents.rows, bytes=contents.bytes, files=contents.files,
                           committed_at=at, columns=[f["name"] for f in contents.fields])
            return CommitResult(view, previous, version)

        try:
            return self._write(work)
        except _AlreadyCommitted:
            with self._read() as session:
                again = session.scalars(select(Batch).where(Batch.id == batch.id)).one_or_none()
                if again is None:
                    raise BatchNotFound(f"Batch {batch_id} no longer exists (it was abandoned "
                                        "and removed by 'dockyard data gc'); write the data "
                                        "again.") from None
                return self._already_committed(session, table, again)

    def rollback(self, actor: Actor, namespace: str, name: str,
                 partition: Mapping[str, Any] | None = None, *,
                 to_batch: str | None = None) -> HistoryView:
        """Move a partition's pointer back: to ``to_batch`` (any committed batch of the
        partition) or, by default, to the batch committed before the current one. The
        move is itself a history entry; no batch is touched."""

        def work(session: Session) -> int:
            table = self._table(session, namespace, name)
            self._require_write(session, actor, table)
            values = names.partition_values(table.partition_keys, dict(partition or {}))
            partition_text = names.canonical(values)
            shown = partition_text or "(unpartitioned)"
            for _ in range(_MAX_SWITCH_ATTEMPTS):
                pointer = session.execute(
                    select(PartitionPointer.id, PartitionPointer.batch_id,
                           PartitionPointer.version)
                    .where(PartitionPointer.table_id == table.id,
                           PartitionPointer.partition == partition_text)
                ).first()
                if pointer is None:
                    raise PartitionNotFound(f"{namespace}.{name} has no committed partition "
                                            f"{shown}")
                target = self._rollback_target(session, table, partition_text, pointer.batch_id,
                                               to_batch)
                if target == pointer.batch_id:
                    raise NothingToRollBack(f"Batch {to_batch} is already the current batch of "
                                            f"{shown}")
                switched = session.execute(
                    update(PartitionPointer)
                    .where(PartitionPointer.id == pointer.id,
                           PartitionPointer.version == pointer.version)
                    .values(batch_id=target, version=PartitionPointer.version + 1,
                            updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                if switched.rowcount == 1:
                    history = session.execute(insert(PointerHistory).values(
                        table_id=table.id, partition=partition_text, batch_id=target,
                        previous_batch_id=pointer.batch_id, action=PointerAction.ROLLBACK,
                        actor=actor.name, run_id=actor.run_id, at=utcnow(),
                    ).returning(PointerHistory.id))
                    return int(history.scalar_one())
                session.expire_all()
            raise RuntimeError("the partition pointer kept moving; try again")

        entry_id = self._write(work)
        with self._read() as session:
            table = self._table(session, namespace, name)
            return self._history(session, table, entry_ids=[entry_id])[0]

    def _rollback_target(self, session: Session, table: DataTable, partition: str,
                         current: int, to_batch: str | None) -> int:
        if to_batch is not None:
            target = session.scalar(
                select(Batch.id).where(
                    Batch.batch_id == to_batch, Batch.table_id == table.id,
                    Batch.partition == partition, Batch.state == BatchState.COMMITTED,
                )
            )
            if target is None:
                raise BatchNotFound(f"{to_batch} is not a committed batch of partition "
                                    f"{partition or '(unpartitioned)'} of "
                                    f"{table.namespace}.{table.name}")
            return int(target)
        commits = session.scalars(
            select(PointerHistory.batch_id)
            .where(PointerHistory.table_id == table.id, PointerHistory.partition == partition,
                   PointerHistory.action == PointerAction.COMMIT)
            .order_by(PointerHistory.id)
        ).all()
        position = commits.index(current) if current in commits else len(commits)
        if position == 0:
            raise NothingToRollBack(
                f"The current batch of {partition or '(unpartitioned)'} is its first commit; "
                "there is no earlier batch to go back to")
        return int(commits[position - 1])

    # -- reading ---------------------------------------------------------------------
    def partitions(self, actor: Actor, namespace: str, name: str) -> list[PartitionView]:
        with self._read() as session:
            table = self._table(session, namespace, name)
            rows = session.execute(
                select(PartitionPointer, Batch)
                .join(Batch, Batch.id == PartitionPointer.batch_id)
                .where(PartitionPointer.table_id == table.id)
                .order_by(PartitionPointer.partition)
            ).all()
            return [
                PartitionView(p.partition, dict(b.partition_values), p.version, p.updated_at,
                              _batch_view(b, table))
                for p, b in rows
            ]

    def history(self, actor: Actor, namespace: str, name: str, partition: str | None = None,
                *, limit: int = 1000) -> list[HistoryView]:
        """Pointer moves, oldest first (the last ``limit`` of them)."""
        with self._read() as session:
            table = self._table(session, namespace, name)
            text = None
            if partition is not None:
                text = names.canonical(names.parse_canonical(table.partition_keys, partition))
            return self._history(session, table, partition=text, limit=limit)

    def batch(self, actor: Actor, namespace: str, name: str, batch_id: str) -> BatchView:
        with self._read() as session:
            table = self._table(session, namespace, name)
            batch = session.scalars(
                select(Batch).where(Batch.batch_id == batch_id, Batch.table_id == table.id)
            ).one_or_none()
            # Others' pending batches are invisible; committed ones are everyone's to read.
            if batch is None or (batch.state != BatchState.COMMITTED
                                 and batch.created_by != actor.name and not actor.admin):
                raise BatchNotFound(f"{namespace}.{name} has no batch {batch_id}")
            return _batch_view(batch, table)

    def resolve_reads(self, actor: Actor, namespace: str, name: str, *,
                      partitions: Sequence[Mapping[str, Any]] | None = None,
                      batch_id: str | None = None, as_of: datetime | None = None,
                      run_id: int | None = None) -> ReadPlan:
        """Which committed batches a load reads: the current batch of each selected
        partition, the state ``as_of`` a time, or one pinned batch. When the reader is a
        job run the reads are recorded for lineage."""
        with self._read() as session:
            table = self._table(session, namespace, name)
            if batch_id is not None:
                batch = session.scalars(select(Batch).where(
                    Batch.batch_id == batch_id, Batch.table_id == table.id,
                    Batch.state == BatchState.COMMITTED)).one_or_none()
                if batch is None:
                    raise BatchNotFound(f"{namespace}.{name} has no committed batch {batch_id}")
                chosen = [batch]
            else:
                only = _whole_partitions(table, partitions)
                chosen = self._visible_batches(session, table, as_of, only)
                chosen = _select_partitions(table, chosen, partitions, as_of)
            views = [_batch_view(b, table) for b in chosen]
            batch_pks = [b.id for b in chosen]
            schema = table_fields(table)
        reader_run = actor.run_id or run_id
        if reader_run is not None and batch_pks:
            self._write(lambda session: self._record_reads(session, actor, run_id, batch_pks))
        return ReadPlan(views, schema, self.storage.config.public())

    def preview(self, actor: Actor, namespace: str, name: str, *, partition: str | None = None,
                batch_id: str | None = None, limit: int = 20) -> Preview:
        limit = max(1, min(limit, PREVIEW_MAX_ROWS))
        with self._read() as session:
            table = self._table(session, namespace, name)
            if batch_id is not None:
                chosen = session.scalars(select(Batch).where(
                    Batch.batch_id == batch_id, Batch.table_id == table.id,
                    Batch.state == BatchState.COMMITTED)).one_or_none()
                if chosen is None:
                    raise BatchNotFound(f"{namespace}.{name} has no committed batch {batch_id}")
            else:
                text = None
                if partition is not None:
                    text = names.canonical(names.parse_canonical(table.partition_keys, partition))
                query = (select(Batch).join(PartitionPointer,
                                            PartitionPointer.batch_id == Batch.id)
                         .where(PartitionPointer.table_id == table.id)
                         .order_by(PartitionPointer.partition).limit(1))
                if text is not None:
                    query = query.where(PartitionPointer.partition == text)
                chosen = session.scalars(query).first()
                if chosen is None:
                    raise PartitionNotFound(f"{namespace}.{name} has no committed partition "
                                            f"{text or ''}".rstrip())
            location, files = chosen.location, list(chosen.files)
            result = (chosen.batch_id, chosen.partition, chosen.rows)
        columns, rows = self.storage.preview(location, files, limit)
        return Preview(result[0], result[1], columns, rows, result[2])

    # -- lineage ---------------------------------------------------------------------
    def run_lineage(self, run_id: int) -> RunLineage:
        """The batches a run wrote and read (for the run's page)."""
        with self._read() as session:
            wrote = session.execute(
                select(Batch, DataTable).join(DataTable, DataTable.id == Batch.table_id)
                .where(Batch.run_id == run_id, Batch.state == BatchState.COMMITTED)
                .order_by(Batch.id)
            ).all()
            read = session.execute(
                select(Batch, DataTable).join(BatchRead, BatchRead.batch_id == Batch.id)
                .join(DataTable, DataTable.id == Batch.table_id)
                .where(BatchRead.run_id == run_id).order_by(BatchRead.at, Batch.id)
            ).all()
            return RunLineage([_batch_view(b, t) for b, t in wrote],
                              [_batch_view(b, t) for b, t in read])

    # -- abandoned batches -----------------------------------------------------------
    def abandoned_batches(self, older_than: timedelta | None = None) -> list[BatchView]:
        """Batches begun longer ago than ``older_than`` and never committed, that no
        pointer ever referenced: what a crashed or killed writer leaves behind."""
        cutoff = utcnow() - (older_than if older_than is not None else self.pending_expiry)
        referenced = select(PointerHistory.batch_id).union(
            select(PointerHistory.previous_batch_id)
            .where(PointerHistory.previous_batch_id.is_not(None)),
            select(PartitionPointer.batch_id),
        )
        with self._read() as session:
            rows = session.execute(
                select(Batch, DataTable).join(DataTable, DataTable.id == Batch.table_id)
                .where(Batch.state == BatchState.PENDING, Batch.created_at < cutoff,
                       Batch.id.not_in(referenced))
                .order_by(Batch.id)
            ).all()
            return [_batch_view(b, t) for b, t in rows]

    def collect_garbage(self, older_than: timedelta | None = None, *,
                        dry_run: bool = False) -> GarbageReport:
        """Remove abandoned batches: the row first, in a transaction that re-checks it is
        still pending and unreferenced (a late commit wins), then its directory."""
        report = GarbageReport(abandoned=self.abandoned_batches(older_than))
        if dry_run:
            return report
        for batch in report.abandoned:
            def work(session: Session, batch_id: str = batch.batch_id) -> bool:
                row = session.scalars(select(Batch).where(
                    Batch.batch_id == batch_id, Batch.state == BatchState.PENDING
                ).with_for_update()).one_or_none()
                if row is None:
                    return False
                ever_pointed = session.scalar(select(func.count()).select_from(PointerHistory)
                                              .where(or_(PointerHistory.batch_id == row.id,
                                                         PointerHistory.previous_batch_id
                                                         == row.id)))
                in_use = session.scalar(select(func.count()).select_from(PartitionPointer)
                                        .where(PartitionPointer.batch_id == row.id))
                if ever_pointed or in_use:
                    return False
                gone = session.execute(
                    delete(Batch).where(Batch.id == row.id, Batch.state == BatchState.PENDING)
                    .execution_options(synchronize_session=False))
                return gone.rowcount == 1

            try:
                if self._write(work):
                    self.storage.remove(batch.location)
                    report.removed.append(batch.batch_id)
            except Exception as exc:  # one unreachable directory must not stop the rest
                log.warning("Could not remove abandoned batch %s: %s", batch.batch_id, exc)
                report.failed[batch.batch_id] = str(exc)
        return report

    # -- helpers ---------------------------------------------------------------------
    def _table(self, session: Session, namespace: str, name: str) -> DataTable:
        table = session.scalars(
            select(DataTable).where(DataTable.namespace == namespace, DataTable.name == name)
        ).one_or_none()
        if table is None:
            raise TableNotFound(f"There is no table {namespace}.{name}")
        return table

    def _owner(self, session: Session, namespace: str) -> str:
        return session.scalar(select(Namespace.owner).where(Namespace.name == namespace)) or ""

    def _require_write(self, session: Session, actor: Actor, table: DataTable) -> None:
        owner = self._owner(session, table.namespace)
        if not self.may_write(actor, owner):
            raise PermissionDenied(f"Namespace {table.namespace} belongs to {owner}; only its "
                                   "owner and admins may write to it (everyone may read).")

    def _table_for_writing(self, session: Session, actor: Actor, namespace: str, name: str,
                           partition_keys: list[str]) -> tuple[DataTable, bool]:
        """The table, created with its namespace on first write, if the actor may write."""
        ns = session.get(Namespace, namespace)
        if ns is None:
            ns = _insert_once(session, Namespace(name=namespace, owner=actor.name,
                                                 created_at=utcnow()),
                              lambda: session.get(Namespace, namespace))
        if not self.may_write(actor, ns.owner):
            raise PermissionDenied(f"Namespace {namespace} belongs to {ns.owner}; only its "
                                   "owner and admins may write to it (everyone may read).")
        find = select(DataTable).where(DataTable.namespace == namespace, DataTable.name == name)
        table = session.scalars(find).one_or_none()
        if table is not None:
            return table, False
        created = DataTable(namespace=namespace, name=name, partition_keys=partition_keys,
                            schema={"fields": []}, description="", created_by=actor.name,
                            created_at=utcnow())
        table = _insert_once(session, created, lambda: session.scalars(find).one_or_none())
        return table, table is created

    def _already_committed(self, session: Session, table: DataTable,
                           batch: Batch) -> CommitResult:
        entry = session.execute(
            select(PointerHistory.previous_batch_id)
            .where(PointerHistory.batch_id == batch.id,
                   PointerHistory.action == PointerAction.COMMIT)
        ).first()
        previous = None
        if entry is not None and entry.previous_batch_id is not None:
            previous = session.scalar(select(Batch.batch_id)
                                      .where(Batch.id == entry.previous_batch_id))
        version = session.scalar(select(PartitionPointer.version).where(
            PartitionPointer.table_id == table.id,
            PartitionPointer.partition == batch.partition)) or 0
        return CommitResult(_batch_view(batch, table), previous, version, already_committed=True)

    def _run_for(self, session: Session, actor: Actor, run_id: int | None) -> int | None:
        """The run a write or read belongs to: the run-scoped token's own run, or a run
        the caller names, which must be one of theirs."""
        if actor.run_id is not None:
            if run_id is not None and run_id != actor.run_id:
                raise InvalidName("run_id", f"this token belongs to run {actor.run_id}, not "
                                  f"run {run_id}")
            return actor.run_id
        if run_id is None:
            return None
        owner = session.scalar(select(Run.owner).where(Run.id == run_id))
        if owner is None or (owner != actor.name and not actor.admin):
            raise RunNotFound(f"There is no run {run_id} of yours")
        return run_id

    def _record_reads(self, session: Session, actor: Actor, run_id: int | None,
                      batch_pks: list[int]) -> None:
        reader = self._run_for(session, actor, run_id)
        if reader is None:
            return
        known = set(session.scalars(select(BatchRead.batch_id).where(
            BatchRead.run_id == reader, BatchRead.batch_id.in_(batch_pks))))
        now = utcnow()
        for pk in dict.fromkeys(batch_pks):
            if pk in known:
                continue
            try:
                with session.begin_nested():
                    session.execute(insert(BatchRead).values(run_id=reader, batch_id=pk, at=now))
            except IntegrityError:
                pass  # recorded by a concurrent load of the same run

    def _visible_batches(self, session: Session, table: DataTable, as_of: datetime | None,
                         only: list[str] | None = None) -> list[Batch]:
        """The current batch (or the batch ``as_of`` a time) of every partition, or of
        the partitions named in ``only``."""
        if as_of is None:
            current = (
                select(Batch).join(PartitionPointer, PartitionPointer.batch_id == Batch.id)
                .where(PartitionPointer.table_id == table.id)
                .order_by(PartitionPointer.partition)
            )
            if only is not None:
                current = current.where(PartitionPointer.partition.in_(only))
            return list(session.scalars(current))
        latest_query = (
            select(func.max(PointerHistory.id).label("id"))
            .where(PointerHistory.table_id == table.id, PointerHistory.at <= as_of)
            .group_by(PointerHistory.partition)
        )
        if only is not None:
            latest_query = latest_query.where(PointerHistory.partition.in_(only))
        latest = latest_query.subquery()
        return list(session.scalars(
            select(Batch)
            .join(PointerHistory, PointerHistory.batch_id == Batch.id)
            .join(latest, latest.c.id == PointerHistory.id)
            .order_by(PointerHistory.partition)
        ))

    def _history(self, session: Session, table: DataTable, *, partition: str | None = None,
                 limit: int = 1000, entry_ids: list[int] | None = None) -> list[HistoryView]:
        # Columns, not entities: a history is up to thousands of rows, and loading whole
        # batches would build an ORM object and parse three JSON columns for each.
        previous = aliased(Batch)
        query = (
            select(PointerHistory.id, PointerHistory.partition, PointerHistory.action,
                   Batch.batch_id, previous.batch_id, PointerHistory.actor,
                   PointerHistory.run_id, PointerHistory.at, Batch.rows, Batch.bytes,
                   Batch.run_id, Batch.created_by)
            .join(Batch, Batch.id == PointerHistory.batch_id)
            .outerjoin(previous, previous.id == PointerHistory.previous_batch_id)
            .where(PointerHistory.table_id == table.id)
            .order_by(PointerHistory.id.desc())
            .limit(limit)
        )
        if partition is not None:
            query = query.where(PointerHistory.partition == partition)
        if entry_ids is not None:
            query = query.where(PointerHistory.id.in_(entry_ids))
        rows = session.execute(query).all()
        return [
            HistoryView(entry_id, partition_, action.value, batch_id, previous_id, actor_name,
                        run_id, at, rows_, bytes_, batch_run_id, created_by)
            for (entry_id, partition_, action, batch_id, previous_id, actor_name, run_id, at,
                 rows_, bytes_, batch_run_id, created_by) in reversed(rows)
        ]

    def _table_views(self, session: Session, actor: Actor,
                     tables: Sequence[DataTable]) -> list[TableView]:
        if not tables:
            return []
        ids = [t.id for t in tables]
        stats = {
            row.table_id: row
            for row in session.execute(
                select(PartitionPointer.table_id, func.count().label("partitions"),
                       func.coalesce(func.sum(Batch.rows), 0).label("rows"),
                       func.coalesce(func.sum(Batch.bytes), 0).label("bytes"),
                       func.max(Batch.committed_at).label("last_commit_at"))
                .join(Batch, Batch.id == PartitionPointer.batch_id)
                .where(PartitionPointer.table_id.in_(ids))
                .group_by(PartitionPointer.table_id)
            )
        }
        owners = dict(session.execute(
            select(Namespace.name, Namespace.owner)
            .where(Namespace.name.in_({t.namespace for t in tables}))
        ).all())
        views = []
        for t in tables:
            s = stats.get(t.id)
            owner = owners.get(t.namespace, "")
            views.append(TableView(
                t.namespace, t.name, t.description, list(t.partition_keys or []),
                table_fields(t), owner, t.created_by, t.created_at,
                s.partitions if s else 0, int(s.rows) if s else 0, int(s.bytes) if s else 0,
                s.last_commit_at if s else None, self.may_write(actor, owner),
            ))
        return views


def _switch_pointer(session: Session, *, table_id: int, partition: str, to_batch: int,
                    action: PointerAction, actor: str,
                    run_id: int | None) -> tuple[str | None, int, datetime]:
    """Point the partition at ``to_batch`` with a compare-and-swap on its version and
    append the move to the history; returns (previous batch id, new version, when)."""
    for _ in range(_MAX_SWITCH_ATTEMPTS):
        pointer = session.execute(
            select(PartitionPointer.id, PartitionPointer.batch_id, PartitionPointer.version,
                   Batch.batch_id.label("public_id"))
            .join(Batch, Batch.id == PartitionPointer.batch_id)
            .where(PartitionPointer.table_id == table_id, PartitionPointer.partition == partition)
        ).first()
        if pointer is None:
            try:
                with session.begin_nested():
                    session.execute(insert(PartitionPointer).values(
                        table_id=table_id, partition=partition, batch_id=to_batch, version=1,
                        updated_at=utcnow()))
            except IntegrityError:
                continue  # another commit created the pointer first: read it and swap
            previous, previous_id, version = None, None, 1
            break
        swapped = session.execute(
            update(PartitionPointer)
            .where(PartitionPointer.id == pointer.id, PartitionPointer.version == pointer.version)
            .values(batch_id=to_batch, version=PartitionPointer.version + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if swapped.rowcount == 1:
            previous, previous_id = pointer.batch_id, pointer.public_id
            version = pointer.version + 1
            break
    else:
        raise RuntimeError("the partition pointer kept moving; try again")
    # The history row is written after the swap succeeded, and timed then: a commit that
    # waited for another's row lock swaps only after that one committed, so history ids
    # and times both follow the order in which the pointer actually moved (as_of relies
    # on it).
    at = utcnow()
    session.execute(insert(PointerHistory).values(
        table_id=table_id, partition=partition, batch_id=to_batch, previous_batch_id=previous,
        action=action, actor=actor, run_id=run_id, at=at,
    ))
    return previous_id, version, at


class _AlreadyCommitted(Exception):
    """The batch was committed by another call while this one was switching."""


def _insert_once(session: Session, row: T, reread: Callable[[], T | None]) -> T:
    """Insert a row another writer may be inserting at the same moment; if they win,
    use theirs."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
        return row
    except IntegrityError:
        existing = reread()
        if existing is None:
            raise
        return existing


# Up to this many whole partitions are looked up by name; a longer list reads the
# table's partitions once instead of sending the database a list of that length.
_MAX_NAMED_PARTITIONS = 500


def _whole_partitions(table: DataTable,
                      wanted: Sequence[Mapping[str, Any]] | None) -> list[str] | None:
    """The canonical names of the partitions ``wanted`` selects, when each of its specs
    gives every partition key: then a read looks up only those partitions instead of
    every partition of the table. None when a spec is partial, or nothing is named."""
    if not wanted or len(wanted) > _MAX_NAMED_PARTITIONS:
        return None
    whole = []
    for spec in wanted:
        values = names.partition_filter(table.partition_keys, spec)
        if len(values) != len(table.partition_keys):
            return None
        whole.append(names.canonical(values))
    return whole


def _select_partitions(table: DataTable, batches: list[Batch],
                       wanted: Sequence[Mapping[str, Any]] | None,
                       as_of: datetime | None) -> list[Batch]:
    when = f" as of {as_of.isoformat()}" if as_of is not None else ""
    label = f"{table.namespace}.{table.name}"
    if not wanted:
        if not batches:
            raise PartitionNotFound(f"{label} has no committed data{when}")
        return batches
    chosen: dict[int, Batch] = {}
    for spec in wanted:
        values = names.partition_filter(table.partition_keys, spec)
        matched = [b for b in batches
                   if all(b.partition_values.get(k) == v for k, v in values.items())]
        if not matched:
            raise PartitionNotFound(f"{label} has no committed partition "
                                    f"{names.canonical(values) or '(unpartitioned)'}{when}")
        for b in matched:
            chosen[b.id] = b
    return [b for b in batches if b.id in chosen]


def table_fields(table: DataTable) -> SchemaFields:
    """The table's recorded columns (empty until its first commit)."""
    return list((table.schema or {}).get("fields", []))


def _batch_view(batch: Batch, table: DataTable) -> BatchView:
    return BatchView(
        batch.batch_id, table.namespace, table.name, batch.partition,
        dict(batch.partition_values or {}), batch.location, batch.state.value, batch.rows,
        batch.bytes, list(batch.files or []), batch.created_by, batch.created_at,
        batch.committed_at, batch.run_id,
        [f["name"] for f in (batch.schema or {}).get("fields", [])],
    )


__all__ = [
    "Actor",
    "BatchView",
    "BeganBatch",
    "Catalog",
    "CommitResult",
    "GarbageReport",
    "HistoryView",
    "NamespaceView",
    "PartitionView",
    "Preview",
    "ReadPlan",
    "RunLineage",
    "TableView",
]
