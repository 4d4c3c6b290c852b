"""Data catalog: storing and loading a big pandas frame, and committing small batches,
against the raw path a user would write without Dockyard, measured in the same run.

Dockyard runs as ``dockyard up`` (JupyterHub, the web service under gunicorn, the
worker) on loopback; every call of the Python client carries a real JupyterHub API token
that the service checks with the hub (as it does for a notebook or a job), and goes to the
web service directly, as ``DOCKYARD_URL`` does inside containers. Parquet lives on the
local disk under the service's data root; the raw side writes to and reads from the same
disk.

1. **Store** a ~1 GB frame (``--rows``; 10 float, 2 integer and 1 string column).
   Dockyard: ``Client.store_dataframe`` — begin a batch over HTTP, convert the frame
   one row group (~128 MB) at a time and write the files with up to 4 threads (one per
   core here), then the manifest, then the commit over HTTP (which opens every file's
   footer). Raw: the faster of two things a user would write with pyarrow alone, each with
   the same row groups, files and threads as the client: ``pa.Table.from_pandas`` then
   ``pyarrow.dataset.write_dataset`` (its own thread pool), and ``pq.ParquetWriter`` per
   file on a thread pool of the client's size. Snappy everywhere. Goal: store
   throughput ≥ 0.9× raw.
2. **Load** that frame back. Dockyard: ``Client.load_dataframe`` — ask the service which
   files to read (HTTP), ``pq.read_table`` them, ``to_pandas(split_blocks=True,
   self_destruct=True)``. Raw: ``pq.read_table`` of the very same files and the same
   ``to_pandas(split_blocks=True, self_destruct=True)``; the goal (≥ 0.9× raw) is judged
   on this like-for-like read. The default ``to_pandas()`` read is reported too.
   Each store and load runs in a fresh process (after a warm-up of its imports and of
   the HTTP connection), so its time and its peak memory are its own; best of
   ``--rounds``, the sides interleaved.
3. **Commit** latency of ``--commits`` one-row batches over 20 partitions, on SQLite (the
   default database) and on PostgreSQL (when DOCKYARD_TEST_POSTGRES_URL is set).
   Dockyard: ``POST …/batches/{id}/commit`` over HTTP (token check, file check, schema
   check, pointer compare-and-swap, history row, batch marked committed; the begin and
   the file writing are not timed). Raw: the bare SQL a commit cannot do without — an
   ``UPDATE`` of the partition's pointer and an ``INSERT`` of a history row in one
   transaction — on the same database, through the same driver with the same connection
   settings, one connection kept open, interleaved with Dockyard's commits. Goals: commit
   p50 ≤ 5 ms on SQLite, ≤ 10 ms on PostgreSQL.

    .venv/bin/python bench/data.py [--quick] [--rows 9000000] [--rounds 2] [--commits 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.catalog_service import (  # noqa: E402
    CatalogService,
    postgres_database,
    running_dockyard,
    stop_on_sigterm,
)
from bench.report import Results  # noqa: E402

STORE_GOAL = 0.9  # Dockyard's store and load throughput ≥ this × raw
COMMIT_GOAL_MS = {"SQLite": 5.0, "PostgreSQL": 10.0}  # commit p50
NAMESPACE = "bench"


def make_frame(rows: int) -> Any:
    """Ten float columns, two integer columns and a short string column: about 110
    bytes a row in memory, so 9 million rows are about 1 GB."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    columns: dict[str, Any] = {f"f{i}": rng.random(rows) for i in range(10)}
    columns["id"] = np.arange(rows, dtype="int64")
    columns["bucket"] = rng.integers(0, 1000, rows)
    labels = np.array([f"sku-{i:04d}" for i in range(1000)], dtype=object)
    columns["sku"] = labels[columns["bucket"]]
    return pd.DataFrame(columns)


class PeakMemory(threading.Thread):
    """Samples this process's resident memory every few milliseconds while an
    operation runs; ``stop`` returns the highest value above the starting one."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.start_rss = self.rss()
        self.peak = self.start_rss
        self.running = True

    @classmethod
    def rss(cls) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * cls.PAGE

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def stop(self) -> int:
        self.running = False
        self.join()
        self.peak = max(self.peak, self.rss())
        return self.peak - self.start_rss


# -- the raw side of a store: what a user writes with pyarrow alone -------------------------
def client_layout(df: Any) -> tuple[int, int, int]:
    """(rows per row group, row groups per file, writer threads) as the client chooses
    them for ``df``, so that the raw writers produce the same files."""
    from dockyard_data import frames

    group = frames.rows_per_group(df, frames.ROW_GROUP_BYTES)
    groups = max(1, -(-len(df) // group))
    threads = max(1, min(os.cpu_count() or 1, frames.MAX_WRITER_THREADS, groups))
    per_file = min(frames.ROW_GROUPS_PER_FILE, -(-groups // threads))
    return group, per_file, threads


def raw_write_dataset(df: Any, directory: str) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds

    group, per_file, _ = client_layout(df)
    table = pa.Table.from_pandas(df, preserve_index=False)
    ds.write_dataset(table, directory, format="parquet", min_rows_per_group=group,
                     max_rows_per_group=group, max_rows_per_file=group * per_file,
                     existing_data_behavior="delete_matching", use_threads=True)


def raw_write_threads(df: Any, directory: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    group, per_file, threads = client_layout(df)
    schema = pa.Schema.from_pandas(df, preserve_index=False)
    starts = list(range(0, len(df), group))
    files = [starts[i:i + per_file] for i in range(0, len(starts), per_file)]
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)

    def write(number: int) -> None:
        path = os.path.join(directory, f"part-{number:05d}.parquet")
        with pq.ParquetWriter(path, schema, compression="snappy") as writer:
            for start in files[number]:
                writer.write_table(pa.Table.from_pandas(df.iloc[start:start + group],
                                                        schema=schema, preserve_index=False),
                                   row_group_size=group)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, range(len(files))))


def frame_job(kind: str, url: str, token: str, raw_dir: str, rows: int,
              files: list[str], queue: Any) -> None:
    """One timed operation in this (fresh) process; reports seconds and peak memory."""
    import pyarrow as pa
    import pyarrow.dataset  # noqa: F401 - imported before the clock starts
    import pyarrow.parquet as pq
    from dockyard_data import Client, ClientConfig

    client = Client(config=ClientConfig(url=url, token=token))
    frame_bytes = 0
    if kind.endswith("write") or kind == "client_store":
        df = make_frame(rows)
        frame_bytes = int(df.memory_usage(index=False, deep=True).sum())
    # Warm up both paths (imports, the HTTP connection, the token check, the server's
    # first request) so that only the operation itself is timed.
    tiny = make_frame(1000)
    warm_path = os.path.join(raw_dir, f"warm-{os.getpid()}.parquet")
    pq.write_table(pa.Table.from_pandas(tiny, preserve_index=False), warm_path)
    pq.read_table(warm_path).to_pandas(split_blocks=True, self_destruct=True)
    os.remove(warm_path)
    client.store_dataframe(tiny, NAMESPACE, "warm")
    client.load_dataframe(NAMESPACE, "warm")
    # Earlier writes' dirty pages would otherwise be flushed during this operation.
    os.sync()
    stored: dict[str, Any] = {}
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    if kind == "raw_dataset_write":
        raw_write_dataset(df, os.path.join(raw_dir, "dataset"))
    elif kind == "raw_threads_write":
        raw_write_threads(df, os.path.join(raw_dir, "threads"))
    elif kind == "client_store":
        stored = client.store_dataframe(df, NAMESPACE, "big")
    elif kind == "raw_read":
        loaded = pq.read_table(files).to_pandas(split_blocks=True, self_destruct=True)
    elif kind == "raw_read_default":
        loaded = pq.read_table(files).to_pandas()
    elif kind == "client_load":
        loaded = client.load_dataframe(NAMESPACE, "big")
    seconds = time.perf_counter() - start
    extra = memory.stop()
    if kind in ("raw_read", "raw_read_default", "client_load"):
        assert len(loaded) == rows, (kind, len(loaded))
        frame_bytes = int(loaded.memory_usage(index=False, deep=True).sum())
    files_written = [os.path.join(stored["location"], name) for name in stored.get("files", [])]
    queue.put({"kind": kind, "seconds": seconds, "extra": extra, "frame_bytes": frame_bytes,
               "files": files_written,
               "layout": client_layout(df) if kind == "client_store" else None})


def run_job(kind: str, service: CatalogService, raw_dir: str, rows: int,
            files: list[str]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=frame_job, args=(kind, service.url, service.token,
                                                      raw_dir, rows, files, queue))
    process.start()
    try:
        while True:
            try:
                return queue.get(timeout=1)
            except Empty:
                if not process.is_alive():
                    raise RuntimeError(f"{kind} ended with exit code {process.exitcode} "
                                       "before reporting") from None
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
            process.join()


FRAME_OPERATIONS = (
    ("raw_dataset_write", "raw ds.write_dataset"),
    ("raw_threads_write", "raw ParquetWriter threads"),
    ("client_store", "client store_dataframe"),
    ("raw_read", "raw read, split_blocks"),
    ("client_load", "client load_dataframe"),
    ("raw_read_default", "raw read, default"),
)


def bench_frames(service: CatalogService, rows: int, rounds: int, results: Results) -> None:
    raw_dir = Path(service.settings.data_dir, "raw")
    raw_dir.mkdir(parents=True, exist_ok=True)
    best: dict[str, dict[str, Any]] = {}
    files: list[str] = []
    for _ in range(rounds):
        for kind, _label in FRAME_OPERATIONS:
            result = run_job(kind, service, str(raw_dir), rows, files)
            files = result["files"] or files
            if kind not in best or result["seconds"] < best[kind]["seconds"]:
                best[kind] = result
    parquet_bytes = sum(os.path.getsize(f) for f in files)
    frame_bytes = best["client_store"]["frame_bytes"]
    gb = frame_bytes / 1e9
    group, per_file, threads = best["client_store"]["layout"]
    print(f"\n== Frame of {rows:,} rows, {gb:.2f} GB in memory; parquet "
          f"{parquet_bytes / 1e9:.2f} GB in {len(files)} file(s) of up to {per_file} row "
          f"group(s) of {group:,} rows, {threads} writer thread(s); best of {rounds} ==")
    print(f"{'operation':<30}{'seconds':>9}{'GB/s':>8}{'extra memory / frame':>22}")
    for kind, label in FRAME_OPERATIONS:
        r = best[kind]
        print(f"{label:<30}{r['seconds']:>9.2f}{gb / r['seconds']:>8.2f}"
              f"{r['extra'] / max(r['frame_bytes'], 1):>21.2f}x")
    raw_store = min(("raw_dataset_write", "raw_threads_write"),
                    key=lambda kind: best[kind]["seconds"])
    store = results.add(
        f"store a {gb:.2f} GB frame", gb / best["client_store"]["seconds"], unit="GB/s",
        baseline=gb / best[raw_store]["seconds"],
        baseline_name=dict(FRAME_OPERATIONS)[raw_store] + " (the faster raw writer)",
        better="higher", goal_ratio=STORE_GOAL)
    load = results.add(
        f"load a {gb:.2f} GB frame", gb / best["client_load"]["seconds"], unit="GB/s",
        baseline=gb / best["raw_read"]["seconds"],
        baseline_name="raw pq.read_table + to_pandas(split_blocks, self_destruct)",
        better="higher", goal_ratio=STORE_GOAL)
    results.add(f"load a {gb:.2f} GB frame vs the default to_pandas()",
                gb / best["client_load"]["seconds"], unit="GB/s",
                baseline=gb / best["raw_read_default"]["seconds"],
                baseline_name="raw pq.read_table + to_pandas()", better="higher",
                note="reported only: the raw side consolidates blocks, the client does not")
    for kind, raw_kind, what in (("client_store", raw_store, "store"),
                                 ("client_load", "raw_read", "load")):
        results.add(f"{what}: peak extra memory / frame size",
                    best[kind]["extra"] / max(best[kind]["frame_bytes"], 1), unit="×",
                    baseline=best[raw_kind]["extra"] / max(best[raw_kind]["frame_bytes"], 1),
                    baseline_name=dict(FRAME_OPERATIONS)[raw_kind], note="reported only")
    print(f"store throughput vs raw: {store.ratio:.2f}x   (goal >= {STORE_GOAL}x)")
    print(f"load throughput vs raw (same to_pandas options): {load.ratio:.2f}x   "
          f"(goal >= {STORE_GOAL}x)")


# -- commits --------------------------------------------------------------------------------
def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds; p95 by nearest rank."""
    ordered = sorted(samples)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


CURRENT_POINTER = 'SELECT batch_id FROM partition_pointers WHERE table_id = ? AND "partition" = ?'
MOVE_POINTER = ('UPDATE partition_pointers SET batch_id = ?, version = version + 1, '
                'updated_at = CURRENT_TIMESTAMP WHERE table_id = ? AND "partition" = ?')
APPEND_HISTORY = ('INSERT INTO pointer_history (table_id, "partition", batch_id, '
                  'previous_batch_id, action, actor, run_id, at) '
                  'VALUES (?, ?, ?, ?, ?, ?, NULL, CURRENT_TIMESTAMP)')


class BareCommit:
    """The SQL a commit cannot do without, on one kept-open connection of the same driver
    with the same connection settings as Dockyard's (``make_engine``): move the
    partition's pointer and append a history row, in one transaction."""

    def __init__(self, db_url: str, table_id: int) -> None:
        from dockyard.db import make_engine

        self.db_engine = make_engine(db_url)
        self.connection = self.db_engine.raw_connection()
        self.sqlite = self.db_engine.dialect.name == "sqlite"
        self.table_id = table_id
        cursor = self.connection.cursor()
        cursor.execute("SELECT action FROM pointer_history LIMIT 1")
        self.action = cursor.fetchone()[0]
        cursor.close()
        self.connection.commit()

    def sql(self, statement: str) -> str:
        """``statement`` in the driver's parameter style (sqlite3: ?, psycopg: %s)."""
        return statement if self.sqlite else statement.replace("?", "%s")

    def current_batch(self, partition: str) -> int:
        cursor = self.connection.cursor()
        cursor.execute(self.sql(CURRENT_POINTER), (self.table_id, partition))
        batch = int(cursor.fetchone()[0])
        cursor.close()
        self.connection.commit()
        return batch

    def commit(self, partition: str, batch: int) -> float:
        start = time.perf_counter()
        cursor = self.connection.cursor()
        if self.sqlite:
            # As Dockyard's write sessions do: take SQLite's write lock at BEGIN.
            cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(self.sql(MOVE_POINTER), (batch, self.table_id, partition))
        cursor.execute(self.sql(APPEND_HISTORY),
                       (self.table_id, partition, batch, batch, self.action, "bench"))
        if self.sqlite:
            cursor.execute("COMMIT")
        else:
            self.connection.commit()
        cursor.close()
        return time.perf_counter() - start

    def close(self) -> None:
        self.connection.close()
        self.db_engine.dispose()


def table_id(db_url: str, table: str) -> int:
    from sqlalchemy import text

    from dockyard.db import make_engine

    db_engine = make_engine(db_url)
    try:
        with db_engine.connect() as conn:
            return int(conn.execute(
                text("SELECT id FROM tables WHERE namespace = :namespace AND name = :name"),
                {"namespace": NAMESPACE, "name": table}).scalar_one())
    finally:
        db_engine.dispose()


def commit_latencies(service: CatalogService, commits: int) -> tuple[list[float], list[float]]:
    """(Dockyard's HTTP commit, bare SQL commit) latencies, interleaved, on the
    service's database."""
    from tests.data.helpers import write_batch_files

    client = service.client()
    table = "small"

    def begin(index: int) -> dict[str, Any]:
        began = client.api.call("POST", client.api.table_path(NAMESPACE, table, "batches"),
                                json={"partition": {"day": str(index % 20)}})
        write_batch_files(began["location"], {"x": [index]})
        return began

    # One untimed commit per partition first: the pointers exist, the token is checked.
    for index in range(20):
        client._commit(NAMESPACE, table, begin(index)["batch_id"], False)
    bare = BareCommit(service.settings.db_url, table_id(service.settings.db_url, table))
    try:
        batch_of = {f"day={day}": bare.current_batch(f"day={day}") for day in range(20)}
        over_http: list[float] = []
        raw: list[float] = []
        for index in range(commits):
            began = begin(index)
            start = time.perf_counter()
            client._commit(NAMESPACE, table, began["batch_id"], False)
            over_http.append(time.perf_counter() - start)
            partition = f"day={index % 20}"
            raw.append(bare.commit(partition, batch_of[partition]))
        return over_http, raw
    finally:
        bare.close()


def bench_commits(service: CatalogService, database: str, commits: int,
                  results: Results) -> None:
    over_http, raw = commit_latencies(service, commits)
    http50, http95 = percentiles(over_http)
    raw50, raw95 = percentiles(raw)
    print(f"{database:<12}{'HTTP POST …/commit':<22}{http50:>9.2f}{http95:>9.2f}")
    print(f"{'':<12}{'bare SQL transaction':<22}{raw50:>9.2f}{raw95:>9.2f}")
    results.add(f"commit p50 ({database})", http50, unit="ms", baseline=raw50,
                baseline_name="bare SQL UPDATE + INSERT in one transaction",
                goal_value=COMMIT_GOAL_MS[database])
    results.add(f"commit p95 ({database})", http95, unit="ms", baseline=raw95,
                baseline_name="bare SQL UPDATE + INSERT in one transaction",
                note="reported only")


def databases() -> Iterator[tuple[str, Callable[[], Any]]]:
    """(name, a running Dockyard on it) for SQLite and, when DOCKYARD_TEST_POSTGRES_URL is
    set, PostgreSQL."""
    yield "SQLite", running_dockyard
    if os.environ.get("DOCKYARD_TEST_POSTGRES_URL"):
        yield "PostgreSQL", on_postgres
    else:
        print("(PostgreSQL skipped: set DOCKYARD_TEST_POSTGRES_URL)")


@contextmanager
def on_postgres() -> Iterator[CatalogService]:
    with postgres_database() as url, running_dockyard(url) as service:
        yield service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a ~330 MB frame, 2 rounds and 100 commits: about 2 minutes")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows of the big frame (default 9,000,000: ~1 GB)")
    parser.add_argument("--rounds", type=int, default=2, help="repeats of each frame operation")
    parser.add_argument("--commits", type=int, default=None, help="default 1,000")
    parser.add_argument("--skip-frames", action="store_true")
    args = parser.parse_args()
    rows = args.rows or (3_000_000 if args.quick else 9_000_000)
    commits = args.commits or (100 if args.quick else 1000)
    stop_on_sigterm()
    os.environ.pop("DOCKYARD_DATA_ROOT", None)
    results = Results("data")
    try:
        for database, running in databases():
            with running() as service:
                if database == "SQLite" and not args.skip_frames:
                    bench_frames(service, rows, args.rounds, results)
                if database == "SQLite":
                    print(f"\n== Commit latency, {commits:,} one-row batches "
                          "(20 partitions) ==")
                    print(f"{'database':<12}{'path':<22}{'p50 ms':>9}{'p95 ms':>9}")
                bench_commits(service, database, commits, results)
        print("goals: commit p50 <= 5 ms (SQLite), <= 10 ms (PostgreSQL)")
    finally:
        results.write()


if __name__ == "__main__":
    main()
