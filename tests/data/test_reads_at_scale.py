"""Reading some partitions of a table with many looks at those partitions only: the
catalog must not load every partition's batch to pick one (bench/tables.py measures it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event

from dockyard.data import Actor, Catalog, PartitionNotFound
from dockyard.models import Batch, utcnow
from dockyard.settings import Settings
from tests.data.helpers import store

ALICE = Actor("alice")


@pytest.fixture
def catalog(migrated: Settings) -> Catalog:
    catalog = Catalog.from_settings(migrated)
    for day in range(12):
        for region in ("eu", "us"):
            store(catalog, ALICE, "web", "visits", {"day": str(day), "region": region},
                  {"n": [day]})
    return catalog


@pytest.fixture
def loaded_batches() -> Iterator[list[str]]:
    """The partitions of the batch rows the catalog loads from the database."""
    partitions: list[str] = []

    def on_load(batch: Batch, _context: object) -> None:
        partitions.append(batch.partition)

    event.listen(Batch, "load", on_load)
    try:
        yield partitions
    finally:
        event.remove(Batch, "load", on_load)


def test_reading_whole_partitions_loads_only_their_batches(
        catalog: Catalog, loaded_batches: list[str]) -> None:
    plan = catalog.resolve_reads(ALICE, "web", "visits",
                                 partitions=[{"region": "us", "day": 7}, {"day": "3",
                                                                          "region": "eu"}])
    assert [b.partition for b in plan.batches] == ["day=3/region=eu", "day=7/region=us"]
    assert sorted(loaded_batches) == ["day=3/region=eu", "day=7/region=us"]

    loaded_batches.clear()
    then = catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"day": 5, "region": "eu"}],
                                 as_of=utcnow())
    assert [b.partition for b in then.batches] == ["day=5/region=eu"]
    assert loaded_batches == ["day=5/region=eu"]


def test_partial_and_missing_partitions_read_as_before(catalog: Catalog) -> None:
    partial = catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"region": "us"}])
    assert len(partial.batches) == 12
    assert {b.partition_values["region"] for b in partial.batches} == {"us"}
    mixed = catalog.resolve_reads(ALICE, "web", "visits",
                                  partitions=[{"day": "1", "region": "us"}, {"day": "2"}])
    assert [b.partition for b in mixed.batches] == [
        "day=1/region=us", "day=2/region=eu", "day=2/region=us"]
    with pytest.raises(PartitionNotFound, match="day=99/region=eu"):
        catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"day": 99, "region": "eu"}])
    with pytest.raises(PartitionNotFound, match="day=99/region=eu"):
        catalog.resolve_reads(ALICE, "web", "visits", partitions=[{"day": 99, "region": "eu"}],
                              as_of=utcnow())
