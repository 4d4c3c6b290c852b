"""The catalog service on SQLite and a local data root: the batch-ID pattern itself."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dockyard.data import (
    Actor,
    BatchIncomplete,
    BatchNotFound,
    Catalog,
    InvalidName,
    NothingToRollBack,
    PartitionKeysFixed,
    PartitionNotFound,
    PermissionDenied,
    SchemaMismatch,
    TableNotFound,
)
from dockyard.models import Batch, utcnow
from dockyard.settings import Settings
from tests.data.helpers import store, write_batch_files

ALICE = Actor("alice")
BOB = Actor("bob")
ADMIN = Actor("admin", admin=True)
DAY = {"date": "20161031"}


@pytest.fixture
def catalog(migrated: Settings) -> Catalog:
    return Catalog.from_settings(migrated)


def current_rows(catalog: Catalog, namespace: str, table: str) -> dict[str, int | None]:
    return {p.partition: p.batch.rows for p in catalog.partitions(ALICE, namespace, table)}


def test_batch_lands_in_its_own_directory_and_is_invisible_until_commit(
        catalog: Catalog, migrated: Settings) -> None:
    began = catalog.begin_batch(ALICE, "sales", "orders", DAY)
    assert began.location == os.path.join(migrated.data_dir, "sales", "orders", "date=20161031",
                                          began.batch_id)
    write_batch_files(began.location, {"x": [1, 2, 3], "date": ["20161031"] * 3})
    assert catalog.partitions(ALICE, "sales", "orders") == []
    with pytest.raises(PartitionNotFound):
        catalog.resolve_reads(ALICE, "sales", "orders")

    result = catalog.commit_batch(ALICE, "sales", "orders", began.batch_id)
    assert (result.batch.rows, result.batch.state, result.version) == (3, "committed", 1)
    assert result.batch.files == ["part-00000.parquet"]
    assert result.batch.bytes == os.path.getsize(os.path.join(began.location,
                                                              "part-00000.parquet"))
    plan = catalog.resolve_reads(ALICE, "sales", "orders")
    assert [b.batch_id for b in plan.batches] == [began.batch_id]


def test_batch_ids_sort_by_time(catalog: Catalog) -> None:
    ids = []
    for _ in range(3):
        ids.append(catalog.begin_batch(ALICE, "sales", "orders", DAY).batch_id)
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_replace_twice_then_rollback_returns_the_first(catalog: Catalog) -> None:
    first = store(catalog, ALICE, "sales", "orders", DAY, {"x": [1]})
    second = store(catalog, ALICE, "sales", "orders", DAY, {"x": [1, 2]})
    assert second.previous_batch_id == first.batch.batch_id

    history = catalog.history(ALICE, "sales", "orders", "date=20161031")
    assert [(h.action, h.batch_id, h.previous_batch_id) for h in history] == [
        ("commit", first.batch.batch_id, None),
        ("commit", second.batch.batch_id, first.batch.batch_id),
    ]
    entry = catalog.rollback(ALICE, "sales", "orders", DAY)
    assert (entry.action, entry.batch_id, entry.previous_batch_id) == (
        "rollback", first.batch.batch_id, second.batch.batch_id)
    assert current_rows(catalog, "sales", "orders") == {"date=20161031": 1}
    # Nothing was deleted: the replaced batch can be read by id and rolled forward to.
    pinned = catalog.resolve_reads(ALICE, "sales", "orders", batch_id=second.batch.batch_id)
    assert pinned.batches[0].rows == 2
    catalog.rollback(ALICE, "sales", "orders", DAY, to_batch=second.batch.batch_id)
    assert current_rows(catalog, "sales", "orders") == {"date=20161031": 2}
    assert len(catalog.history(ALICE, "sales", "orders")) == 4


def test_rollback_refuses_what_it_cannot_do(catalog: Catalog) -> None:
    only = store(catalog, ALICE, "sales", "orders", DAY, {"x": [1]})
    with pytest.raises(NothingToRollBack):
        catalog.rollback(ALICE, "sales", "orders", DAY)
    with pytest.raises(NothingToRollBack):
        catalog.rollback(ALICE, "sales", "orders", DAY, to_batch=only.batch.batch_id)
    with pytest.raises(PartitionNotFound):
        catalog.rollback(ALICE, "sales", "orders", {"date": "19990101"})
    other = store(catalog, ALICE, "sales", "orders", {"date": "20161101"}, {"x": [9]})
    with pytest.raises(BatchNotFound):  # a batch of another partition
        catalog.rollback(ALICE, "sales", "orders", DAY, to_batch=other.batch.batch_id)
    pending = catalog.begin_batch(ALICE, "sales", "orders", DAY)
    with pytest.raises(BatchNotFound):  # never committed
        catalog.rollback(ALICE, "sales", "orders", DAY, to_batch=pending.batch_id)


def test_as_of_reads_the_state_at_a_time(catalog: Catalog) -> None:
    first = store(catalog, ALICE, "sales", "orders", DAY, {"x": [1]})
    between = first.batch.committed_at + timedelta(microseconds=1)
    time.sleep(0.01)
    store(catalog, ALICE, "sales", "orders", DAY, {"x": [1, 2]})
    other = store(catalog, ALICE, "sales", "orders", {"date": "20161101"}, {"x": [7]})

    at_first = catalog.resolve_reads(ALICE, "sales", "orders", as_of=between)
    assert [(b.partition, b.batch_id) for b in at_first.batches] == [
        ("date=20161031", first.batch.batch_id)]
    now = catalog.resolve_reads(ALICE, "sales", "orders", as_of=other.batch.committed_at)
    assert sorted(b.rows for b in now.batches) == [1, 2]
    with pytest.raises(PartitionNotFound):
        catalog.resolve_reads(ALICE, "sales", "orders",
                              as_of=first.batch.committed_at - timedelta(seconds=1))
    # A rollback moves as_of too: after it, "now" is the first batch again.
    rolled = catalog.rollback(ALICE, "sales", "orders", DAY)
    after = catalog.resolve_reads(ALICE, "sales", "orders", partitions=[DAY], as_of=rolled.at)
    assert [b.batch_id for b in after.batches] == [first.batch.batch_id]


def test_partitions_select_by_full_or_partial_values(catalog: Catalog) -> None:
    for day in ("1", "2"):
        for region in ("eu", "us"):
            store(catalog, ALICE, "web", "visits", {"day": day, "region": region},
                  {"n": [int(day)]})
    plan = catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"region": "eu"}])
    assert [b.partition for b in plan.batches] == ["day=1/region=eu", "day=2/region=eu"]
    plan = catalog.resolve_reads(ALICE, "web", "visits",
                                 partitions=[{"day": 2, "region": "us"}, {"day": "1"}])
    assert len(plan.batches) == 3
    with pytest.raises(PartitionNotFound, match="day=3"):
        catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"day": "3"}])
    with pytest.raises(InvalidName, match="unknown partition key 'hour'"):
        catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"hour": "3"}])
    # Partition keys are the table's, given in any order, all of them, on every write.
    with pytest.raises(InvalidName, match="missing 'region'"):
        catalog.begin_batch(ALICE, "web", "visits", {"day": "3"})
    began = catalog.begin_batch(ALICE, "web", "visits", {"region": "eu", "day": "3"})
    assert began.partition == "day=3/region=eu"


@pytest.mark.parametrize("partition, field", [
    ({"date": "../x"}, "partition.date"),
    ({"date": ".hidden"}, "partition.date"),
    ({"date": "a/b"}, "partition.date"),
    ({"Date": "1"}, "partition_keys"),
    ({"date": 1.5}, "partition.date"),
    ({"date": True}, "partition.date"),
])
def test_partition_values_that_could_escape_or_confuse_paths_are_refused(
        catalog: Catalog, partition: dict, field: str) -> None:
    with pytest.raises(InvalidName) as caught:
        catalog.begin_batch(ALICE, "sales", "orders", partition)
    assert caught.value.detail[0]["field"] == field


@pytest.mark.parametrize("namespace, table", [("Sales", "orders"), ("sales", "or.ders"),
                                              ("..", "x"), ("sales", ""), ("-x", "y")])
def test_bad_names_are_refused(catalog: Catalog, namespace: str, table: str) -> None:
    with pytest.raises(InvalidName):
        catalog.begin_batch(ALICE, namespace, table, {})


def test_schema_recorded_on_first_write_and_enforced(catalog: Catalog) -> None:
    store(catalog, ALICE, "sales", "orders", DAY, {"id": [1], "price": [1.5]})
    table = catalog.table(ALICE, "sales", "orders")
    assert [(f["name"], f["type"]) for f in table.schema] == [("id", "int64"),
                                                              ("price", "double")]
    # Checked at begin when the client says what it will write …
    with pytest.raises(SchemaMismatch) as early:
        catalog.begin_batch(ALICE, "sales", "orders", DAY,
                            fields=[{"name": "id", "type": "int64", "nullable": True},
                                    {"name": "price", "type": "string", "nullable": True}])
    assert early.value.columns == [{"column": "price",
                                    "problem": "type string, the table has double"}]
    # … and at commit from the files themselves, naming every column.
    with pytest.raises(SchemaMismatch) as late:
        store(catalog, ALICE, "sales", "orders", DAY, {"id": ["a"], "note": ["n"]})
    message = str(late.value)
    assert "'id'" in message and "'price': missing" in message and "'note': new column" in message
    assert current_rows(catalog, "sales", "orders") == {"date=20161031": 1}


def test_evolve_adds_nullable_columns_only_when_asked(catalog: Catalog) -> None:
    store(catalog, ALICE, "sales", "orders", DAY, {"id": [1]})
    with pytest.raises(SchemaMismatch, match="evolve=True"):
        store(catalog, ALICE, "sales", "orders", DAY, {"id": [2], "note": ["x"]})
    store(catalog, ALICE, "sales", "orders", DAY, {"id": [2], "note": ["x"]}, evolve=True)
    assert [f["name"] for f in catalog.table(ALICE, "sales", "orders").schema] == ["id", "note"]
    # Evolution never allows dropping or retyping a column.
    with pytest.raises(SchemaMismatch, match="'note': missing"):
        store(catalog, ALICE, "sales", "orders", DAY, {"id": [3]}, evolve=True)


def test_equivalent_types_across_pandas_versions_are_not_a_change(catalog: Catalog) -> None:
    import pyarrow as pa

    store(catalog, ALICE, "t", "events",  {}, {
        "s": pa.array(["a"], pa.string()), "ts": pa.array([1], pa.timestamp("ns")),
        "empty": pa.array([None], pa.null())})
    store(catalog, ALICE, "t", "events", {}, {
        "s": pa.array(["b"], pa.large_string()), "ts": pa.array([1], pa.timestamp("us")),
        "empty": pa.array(["now set"], pa.string())})
    fields = {f["name"]: f["type"] for f in catalog.table(ALICE, "t", "events").schema}
    assert fields == {"s": "string", "ts": "timestamp[ns]", "empty": "string"}


def test_commit_verifies_the_files(catalog: Catalog) -> None:
    began = catalog.begin_batch(ALICE, "sales", "orders", DAY)
    with pytest.raises(BatchIncomplete, match="_dockyard_manifest.json"):
        catalog.commit_batch(ALICE, "sales", "orders", began.batch_id)
    write_batch_files(began.location, {"x": [1, 2]}, files=2)
    os.remove(os.path.join(began.location, "part-00001.parquet"))
    with pytest.raises(BatchIncomplete, match="missing: part-00001.parquet"):
        catalog.commit_batch(ALICE, "sales", "orders", began.batch_id)
    write_batch_files(began.location, {"x": [1, 2]})
    with open(os.path.join(began.location, "part-00000.parquet"), "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(BatchIncomplete, match="incomplete: part-00000.parquet"):
        catalog.commit_batch(ALICE, "sales", "orders", began.batch_id)
    assert catalog.partitions(ALICE, "sales", "orders") == []


def test_commit_twice_is_harmless_and_others_cannot_commit_my_batch(catalog: Catalog) -> None:
    began = catalog.begin_batch(ALICE, "shared", "t", {})
    write_batch_files(began.location, {"x": [1]})
    with pytest.raises(BatchNotFound):
        catalog.commit_batch(BOB, "shared", "t", began.batch_id)
    first = catalog.commit_batch(ALICE, "shared", "t", began.batch_id)
    again = catalog.commit_batch(ALICE, "shared", "t", began.batch_id)
    assert (again.already_committed, again.version) == (True, first.version)
    assert len(catalog.history(ALICE, "shared", "t")) == 1
    with pytest.raises(BatchNotFound):
        catalog.commit_batch(ALICE, "shared", "t", "01NOTABATCH0000000000000000")


def test_namespace_owner_writes_others_read(catalog: Catalog, migrated: Settings) -> None:
    store(catalog, ALICE, "alice-ns", "t", {}, {"x": [1]})
    with pytest.raises(PermissionDenied, match="belongs to alice"):
        catalog.begin_batch(BOB, "alice-ns", "t", {})
    with pytest.raises(PermissionDenied):
        catalog.begin_batch(BOB, "alice-ns", "other", {})
    with pytest.raises(PermissionDenied):
        catalog.rollback(BOB, "alice-ns", "t")
    assert catalog.resolve_reads(BOB, "alice-ns", "t").batches[0].rows == 1
    assert catalog.table(BOB, "alice-ns", "t").can_write is False
    store(catalog, ADMIN, "alice-ns", "t", {}, {"x": [1, 2]})
    # An admin hands the namespace to bob; now bob writes and alice reads.
    catalog.set_namespace_owner(ADMIN, "alice-ns", "bob")
    store(catalog, BOB, "alice-ns", "t", {}, {"x": [1, 2, 3]})
    with pytest.raises(PermissionDenied):
        catalog.begin_batch(ALICE, "alice-ns", "t", {})
    with pytest.raises(PermissionDenied):
        catalog.set_namespace_owner(BOB, "alice-ns", "bob")
    # The setting opens writing to everyone.
    open_catalog = Catalog.from_settings(migrated.model_copy(update={
        "data_write_access": "everyone"}))
    store(open_catalog, ALICE, "alice-ns", "t", {}, {"x": [0]})


def test_unknown_table(catalog: Catalog) -> None:
    for call in (lambda: catalog.table(ALICE, "no", "such"),
                 lambda: catalog.partitions(ALICE, "no", "such"),
                 lambda: catalog.history(ALICE, "no", "such"),
                 lambda: catalog.resolve_reads(ALICE, "no", "such"),
                 lambda: catalog.rollback(ALICE, "no", "such")):
        with pytest.raises(TableNotFound):
            call()


def test_put_table_creates_and_describes(catalog: Catalog) -> None:
    table, created = catalog.put_table(ALICE, "sales", "orders", partition_keys=["date"],
                                       description="Orders by day")
    assert created and table.partition_keys == ["date"] and table.owner == "alice"
    table, created = catalog.put_table(ALICE, "sales", "orders", description="Orders")
    assert not created and table.description == "Orders"
    store(catalog, ALICE, "sales", "orders", DAY, {"x": [1]})
    with pytest.raises(PartitionKeysFixed, match="cannot change"):
        catalog.put_table(ALICE, "sales", "orders", partition_keys=["region"])
    with pytest.raises(PermissionDenied):
        catalog.put_table(BOB, "sales", "orders", description="mine now")


def test_preview_shows_the_first_rows(catalog: Catalog) -> None:
    store(catalog, ALICE, "sales", "orders", DAY,
          {"x": list(range(100)), "when": ["2020-01-01"] * 100})
    preview = catalog.preview(ALICE, "sales", "orders", partition="date=20161031", limit=5)
    assert preview.columns == ["x", "when"]
    assert preview.rows == [[i, "2020-01-01"] for i in range(5)]
    assert preview.total_rows == 100


def test_gc_removes_only_abandoned_batches(catalog: Catalog, migrated: Settings) -> None:
    kept = store(catalog, ALICE, "sales", "orders", DAY, {"x": [1]})
    replaced_by = store(catalog, ALICE, "sales", "orders", DAY, {"x": [2]})
    abandoned = catalog.begin_batch(ALICE, "sales", "orders", DAY)
    write_batch_files(abandoned.location, {"x": [3]})
    fresh = catalog.begin_batch(ALICE, "sales", "orders", DAY)

    # Make everything old, so only "never referenced" protects the committed batches.
    from dockyard.db import make_engine, make_session_factory, transaction

    engine = make_engine(migrated.db_url)
    with transaction(make_session_factory(engine)) as session:
        session.execute(update(Batch).where(Batch.batch_id != fresh.batch_id)
                        .values(created_at=utcnow() - timedelta(days=30)))
    assert [b.batch_id for b in catalog.abandoned_batches()] == [abandoned.batch_id]
    assert catalog.collect_garbage(dry_run=True).removed == []
    assert Path(abandoned.location).exists()

    report = catalog.collect_garbage()
    assert report.removed == [abandoned.batch_id]
    assert not Path(abandoned.location).exists()
    for committed in (kept, replaced_by):
        assert Path(committed.batch.location, "part-00000.parquet").exists()
    with make_session_factory(engine)() as session:
        left = set(session.scalars(select(Batch.batch_id)))
    assert left == {kept.batch.batch_id, replaced_by.batch.batch_id, fresh.batch_id}
    # A commit after gc removed the batch says so instead of failing obscurely.
    with pytest.raises(BatchNotFound):
        catalog.commit_batch(ALICE, "sales", "orders", abandoned.batch_id)
    engine.dispose()
