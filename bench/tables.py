"""Tables at scale: does a table's size in partitions and batches slow down what a user
does with one partition?

Dockyard runs as ``dockyard up`` on loopback (SQLite, its default database; PostgreSQL
with ``--postgres``); every call goes through the Python data client a notebook uses,
over HTTP, with a real JupyterHub API token the service checks with the hub.

Two tables are written through the catalog (begin, parquet files and manifest, commit:
the same rows a client's ``store_dataframe`` leaves):

- *wide*: ``--partitions`` partitions (10,000) of one batch each, plus one partition
  ``day=hot`` committed ``--batches`` times (10,000 one-row batches), its commits
  interleaved with the others' so that its history is spread through the table's;
- *narrow*: 10 partitions of one batch each.

Every partition but ``hot`` holds the same 10,000 rows (an integer, a float and a string
column, and the partition column), so a load reads the same bytes from either table.

1. **Load one partition.** ``Client.load_dataframe(namespace, table,
   partitions={"day": …})`` of a random partition of *wide*, against the same call on a
   random partition of *narrow* (the baseline), alternated, after a warm-up. Goal: p50
   and p95 ≤ 1.2× the narrow table's.
2. **History of a partition with 10,000 batches.** ``Client.history(namespace, "wide",
   {"day": "hot"})`` as a user calls it (the last 1,000 moves, the default), against
   the raw SQL query of the same rows (the history row joined with its batch and the
   previous batch, newest first, limited) on a kept-open connection to the same
   database, alternated. Goal: p95 ≤ 50 ms. The whole history (``limit=10000``) is
   reported too.

``--quick`` uses 1,000 partitions and 1,000 batches and fewer repeats (about 2 minutes).

    .venv/bin/python bench/tables.py [--quick] [--partitions 10000] [--batches 10000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.catalog_service import (  # noqa: E402
    CatalogService,
    postgres_database,
    running_dockyard,
    stop_on_sigterm,
)
from bench.report import Results, percentile  # noqa: E402

NAMESPACE = "scale"
LOAD_GOAL_RATIO = 1.2
HISTORY_GOAL_MS = 50.0
PARTITION_ROWS = 10_000
NARROW_PARTITIONS = 10
HOT = "hot"

HISTORY_SQL = (
    'SELECT h.id, h."partition", h.action, b.batch_id, p.batch_id, h.actor, h.run_id, h.at, '
    "b.rows, b.bytes, b.run_id, b.created_by FROM pointer_history h "
    "JOIN batches b ON b.id = h.batch_id LEFT JOIN batches p ON p.id = h.previous_batch_id "
    'WHERE h.table_id = ? AND h."partition" = ? ORDER BY h.id DESC LIMIT ?'
)


class Seeder:
    """Writes batches as a client does (parquet files, then the manifest last) and
    commits them through the catalog, in this process, on the service's database."""

    def __init__(self, service: CatalogService) -> None:
        import numpy as np

        from dockyard.data import Actor, Catalog

        self.catalog = Catalog.from_settings(service.settings)
        self.actor = Actor(service.hub.admin, admin=True)
        rng = np.random.default_rng(7)
        self.columns = {
            "id": np.arange(PARTITION_ROWS, dtype="int64"),
            "value": rng.random(PARTITION_ROWS),
            "label": np.array([f"item-{i % 997:04d}" for i in range(PARTITION_ROWS)],
                              dtype=object),
        }

    def commit(self, table: str, day: str, rows: int = PARTITION_ROWS) -> None:
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        began = self.catalog.begin_batch(self.actor, NAMESPACE, table, {"day": day})
        os.makedirs(began.location, exist_ok=True)
        data = pa.table({**{k: v[:rows] for k, v in self.columns.items()},
                         "day": pa.array([day] * rows, pa.string())})
        path = os.path.join(began.location, "part-00000.parquet")
        pq.write_table(data, path, compression="snappy")
        manifest = {"format": "dockyard-batch/1", "batch_id": began.batch_id,
                    "partition": {"day": day}, "rows": rows,
                    "files": [{"path": "part-00000.parquet", "rows": rows,
                               "bytes": os.path.getsize(path)}]}
        with open(os.path.join(began.location, "_dockyard_manifest.json"), "w") as out:
            json.dump(manifest, out)
        self.catalog.commit_batch(self.actor, NAMESPACE, table, began.batch_id)

    def close(self) -> None:
        self.catalog.engine.dispose()


def day(index: int) -> str:
    return f"p{index:05d}"


def seed(service: CatalogService, partitions: int, batches: int) -> None:
    seeder = Seeder(service)
    started = time.monotonic()
    try:
        for index in range(NARROW_PARTITIONS):
            seeder.commit("narrow", day(index))
        for index in range(max(partitions, batches)):
            if index < partitions:
                seeder.commit("wide", day(index))
            if index < batches:
                seeder.commit("wide", HOT, rows=1)
            if index and index % 2000 == 0:
                print(f"  … {index:,} written ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        seeder.close()
    print(f"seeded {partitions + NARROW_PARTITIONS:,} partitions and {batches:,} batches of "
          f"{HOT} in {time.monotonic() - started:.0f} s")


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def bench_loads(service: CatalogService, partitions: int, loads: int,
                results: Results) -> None:
    client = service.client()
    rng = random.Random(7)

    def load(table: str, count: int) -> float:
        wanted = day(rng.randrange(count))
        seconds, frame = timed(lambda: client.load_dataframe(NAMESPACE, table,
                                                             partitions={"day": wanted}))
        assert len(frame) == PARTITION_ROWS and set(frame["day"]) == {wanted}
        return seconds

    for _ in range(3):
        load("wide", partitions)
        load("narrow", NARROW_PARTITIONS)
    wide: list[float] = []
    narrow: list[float] = []
    for index in range(loads):
        # Alternate which goes first, so that neither always follows the other.
        order = [("wide", partitions, wide), ("narrow", NARROW_PARTITIONS, narrow)]
        for table, count, samples in order[::1 if index % 2 == 0 else -1]:
            samples.append(load(table, count))
    print(f"\n== Load one partition of {PARTITION_ROWS:,} rows, {loads} loads each ==")
    print(f"{'table':<34}{'p50 ms':>9}{'p95 ms':>9}")
    for label, samples in ((f"wide ({partitions:,} partitions + {HOT})", wide),
                           (f"narrow ({NARROW_PARTITIONS} partitions)", narrow)):
        print(f"{label:<34}{statistics.median(samples) * 1000:>9.1f}"
              f"{percentile(samples, 0.95) * 1000:>9.1f}")
    for stat, pick in (("p50", statistics.median),
                       ("p95", lambda s: percentile(s, 0.95))):
        figure = results.add(
            f"load one partition of a {partitions:,}-partition table, {stat}",
            pick(wide) * 1000, unit="ms", baseline=pick(narrow) * 1000,
            baseline_name=f"the same load from a {NARROW_PARTITIONS}-partition table",
            goal_ratio=LOAD_GOAL_RATIO)
        print(f"{stat} ratio wide / narrow: {figure.ratio:.2f}x   (goal <= {LOAD_GOAL_RATIO}x)")


class RawHistory:
    """The history query on one kept-open connection of the service's database driver."""

    def __init__(self, db_url: str) -> None:
        from dockyard.db import make_engine

        self.db_engine = make_engine(db_url)
        self.connection = self.db_engine.raw_connection()
        self.sqlite = self.db_engine.dialect.name == "sqlite"
        cursor = self.connection.cursor()
        cursor.execute("SELECT id FROM tables WHERE namespace = ? AND name = ?"
                       if self.sqlite else
                       "SELECT id FROM tables WHERE namespace = %s AND name = %s",
                       (NAMESPACE, "wide"))
        self.table_id = int(cursor.fetchone()[0])
        cursor.close()
        self.connection.commit()

    def rows(self, partition: str, limit: int) -> list[Any]:
        cursor = self.connection.cursor()
        statement = HISTORY_SQL if self.sqlite else HISTORY_SQL.replace("?", "%s")
        cursor.execute(statement, (self.table_id, partition, limit))
        rows = cursor.fetchall()
        cursor.close()
        self.connection.commit()
        return rows

    def close(self) -> None:
        self.connection.close()
        self.db_engine.dispose()


def bench_history(service: CatalogService, batches: int, calls: int,
                  results: Results) -> None:
    client = service.client()
    raw = RawHistory(service.settings.db_url)
    partition = f"day={HOT}"
    print(f"\n== History of a partition with {batches:,} batches, {calls} calls each ==")
    print(f"{'call':<42}{'entries':>8}{'p50 ms':>9}{'p95 ms':>9}")
    try:
        for limit in (1000, 10_000):
            expected = min(limit, batches)
            ours: list[float] = []
            baseline: list[float] = []
            for index in range(calls + 3):
                seconds, entries = timed(lambda limit=limit: client.history(
                    NAMESPACE, "wide", {"day": HOT}, limit=limit))
                raw_seconds, rows = timed(lambda limit=limit: raw.rows(partition, limit))
                assert len(entries) == len(rows) == expected, (len(entries), len(rows))
                if index >= 3:  # the first calls warm up
                    ours.append(seconds)
                    baseline.append(raw_seconds)
            for label, samples in ((f"client.history(limit={limit})", ours),
                                   ("raw SQL, same rows", baseline)):
                print(f"{label:<42}{expected:>8,}{statistics.median(samples) * 1000:>9.1f}"
                      f"{percentile(samples, 0.95) * 1000:>9.1f}")
            default_call = limit == 1000
            results.add(
                f"history of a partition with {batches:,} batches, p95"
                + ("" if default_call else f", all {expected:,} entries"),
                percentile(ours, 0.95) * 1000, unit="ms",
                baseline=percentile(baseline, 0.95) * 1000,
                baseline_name="raw SQL query of the same rows",
                goal_value=HISTORY_GOAL_MS if default_call else None,
                note="the last 1,000 moves, as client.history returns by default"
                if default_call else "reported only")
    finally:
        raw.close()
    print(f"goal: history p95 <= {HISTORY_GOAL_MS:g} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 partitions, 1,000 batches, fewer repeats: about 2 minutes")
    parser.add_argument("--partitions", type=int, default=None, help="default 10,000")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches of the hot partition (default 10,000)")
    parser.add_argument("--loads", type=int, default=None,
                        help="loads of each table (default 100)")
    parser.add_argument("--calls", type=int, default=None,
                        help="history calls of each kind (default 100)")
    parser.add_argument("--postgres", action="store_true",
                        help="on PostgreSQL (a fresh database on DOCKYARD_TEST_POSTGRES_URL)")
    args = parser.parse_args()
    partitions = args.partitions or (1000 if args.quick else 10_000)
    batches = args.batches or (1000 if args.quick else 10_000)
    loads = args.loads or (30 if args.quick else 100)
    calls = args.calls or (30 if args.quick else 100)
    stop_on_sigterm()
    os.environ.pop("DOCKYARD_DATA_ROOT", None)
    results = Results("tables")
    try:
        if args.postgres:
            with postgres_database() as url, running_dockyard(url) as service:
                run(service, partitions, batches, loads, calls, results)
        else:
            with running_dockyard() as service:
                run(service, partitions, batches, loads, calls, results)
    finally:
        results.write()


def run(service: CatalogService, partitions: int, batches: int, loads: int, calls: int,
        results: Results) -> None:
    seed(service, partitions, batches)
    bench_loads(service, partitions, loads, results)
    bench_history(service, batches, calls, results)


if __name__ == "__main__":
    main()
