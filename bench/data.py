"""Benchmark of the data catalog, as ratios against a raw baseline in the same run.

1. Store and load a ~1 GB pandas frame through the Python client (HTTP to a real web
   app on loopback, parquet on local disk) against raw ``pyarrow.parquet`` writing and
   reading the same frame to the same disk. Each operation runs in a fresh process, so
   its time and its peak memory (max RSS) are its own.
2. Commit latency (p50/p95) of 1,000 small batches on SQLite and on PostgreSQL
   (DOCKYARD_TEST_POSTGRES_URL), at the catalog and through the HTTP API.

    .venv/bin/python bench/data.py [--rows 9000000] [--commits 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "bench-token"


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
    operation runs; ``extra`` is the highest value above the starting one."""

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


def frame_job(kind: str, url: str, raw_path: str, rows: int, queue: Any) -> None:
    """One timed operation in this (fresh) process; reports seconds and peak memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dockyard_data import Client, ClientConfig

    client = Client(config=ClientConfig(url=url, token=TOKEN))
    frame_bytes = 0
    if kind in ("raw_write", "client_store"):
        df = make_frame(rows)
        frame_bytes = int(df.memory_usage(index=False, deep=True).sum())
    # Warm up both paths (imports, the HTTP connection, the server's first request) so
    # that only the operation itself is timed.
    tiny = make_frame(1000)
    warm_path = raw_path + f".warm-{os.getpid()}"
    pq.write_table(pa.Table.from_pandas(tiny, preserve_index=False), warm_path)
    pq.read_table(warm_path).to_pandas()
    os.remove(warm_path)
    client.store_dataframe(tiny, "bench", "warm")
    client.load_dataframe("bench", "warm")
    # Earlier writes' dirty pages would otherwise be flushed during this operation.
    os.sync()
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    if kind == "raw_write":
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), raw_path)
    elif kind == "client_store":
        client.store_dataframe(df, "bench", "big")
    elif kind == "raw_read":
        loaded = pq.read_table(raw_path).to_pandas()
        frame_bytes = int(loaded.memory_usage(index=False, deep=True).sum())
    elif kind == "raw_read_split":
        # The same to_pandas options as the client (no block consolidation, Arrow
        # buffers freed as they are converted), to show what the client itself costs.
        loaded = pq.read_table(raw_path).to_pandas(split_blocks=True, self_destruct=True)
        frame_bytes = int(loaded.memory_usage(index=False, deep=True).sum())
    elif kind == "client_load":
        loaded = client.load_dataframe("bench", "big")
        frame_bytes = int(loaded.memory_usage(index=False, deep=True).sum())
    seconds = time.perf_counter() - start
    extra = memory.stop()
    if kind in ("raw_read", "raw_read_split", "client_load"):
        assert len(loaded) == rows, (kind, len(loaded))
    queue.put({"kind": kind, "seconds": seconds, "extra": extra, "frame_bytes": frame_bytes})


def run_job(kind: str, url: str, raw_path: str, rows: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=frame_job, args=(kind, url, raw_path, rows, queue))
    process.start()
    result = queue.get(timeout=1800)
    process.join()
    return result


@contextmanager
def web_app(home: Path, db_url: str | None = None) -> Iterator[tuple[str, Any]]:
    """The Flask app on a free loopback port with one token (an admin)."""
    from werkzeug.serving import make_server

    from dockyard.migrate import upgrade
    from dockyard.settings import Settings
    from dockyard.web import create_app
    from dockyard.web.auth import User

    class OneToken:
        def user_for_token(self, token: str) -> User | None:
            return User("bench", admin=True) if token == TOKEN else None

        def login_redirect(self, next_url: str) -> Any:
            raise NotImplementedError

        def finish_login(self, code: str, state: str | None) -> tuple[str, str]:
            raise PermissionError

    settings = Settings(home=home, **({"database_url": db_url} if db_url else {}))
    upgrade(settings.db_url)
    app = create_app(settings, identity=OneToken())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", settings
    finally:
        server.shutdown()
        app.extensions["dockyard.engine"].dispose()


def bench_frames(rows: int, rounds: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    (home / "home").mkdir()
    try:
        with web_app(home / "home") as (url, settings):
            raw_dir = Path(settings.data_dir, "raw")
            raw_dir.mkdir(parents=True)
            raw_path = str(raw_dir / "frame.parquet")
            best: dict[str, dict[str, Any]] = {}
            for _ in range(rounds):
                for kind in ("raw_write", "client_store", "raw_read", "raw_read_split",
                             "client_load"):
                    result = run_job(kind, url, raw_path, rows)
                    if kind not in best or result["seconds"] < best[kind]["seconds"]:
                        best[kind] = result
            raw_size = os.path.getsize(raw_path)
        gb = best["raw_write"]["frame_bytes"] / 1e9
        print(f"\n== Frame of {rows:,} rows, {gb:.2f} GB in memory; parquet "
              f"{raw_size / 1e9:.2f} GB; best of {rounds} ==")
        print(f"{'operation':<28}{'seconds':>9}{'GB/s':>8}{'extra memory / frame':>22}")
        for kind, label in (("raw_write", "raw pq.write_table"),
                            ("client_store", "client store_dataframe"),
                            ("raw_read", "raw pq.read_table+to_pandas"),
                            ("raw_read_split", "  same, split_blocks"),
                            ("client_load", "client load_dataframe")):
            r = best[kind]
            print(f"{label:<28}{r['seconds']:>9.2f}{gb / r['seconds']:>8.2f}"
                  f"{r['extra'] / max(r['frame_bytes'], 1):>21.2f}x")
        write_ratio = best["raw_write"]["seconds"] / best["client_store"]["seconds"]
        read_ratio = best["raw_read"]["seconds"] / best["client_load"]["seconds"]
        print(f"store throughput vs raw: {write_ratio:.2f}x   (goal >= 0.9x)")
        print(f"load throughput vs raw:  {read_ratio:.2f}x   (goal >= 0.9x)")
        same_options = best["raw_read_split"]["seconds"] / best["client_load"]["seconds"]
        print(f"load vs raw with the client's to_pandas options: {same_options:.2f}x")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * len(ordered))) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


def commit_latencies(db_url: str | None, commits: int) -> tuple[list[float], list[float]]:
    """(catalog commit_batch, HTTP commit) latencies for small batches on one database."""
    from dockyard_data import Client, ClientConfig

    from dockyard.data import Actor, Catalog
    from tests.data.helpers import write_batch_files

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    (home / "home").mkdir()
    try:
        with web_app(home / "home", db_url) as (url, settings):
            catalog = Catalog.from_settings(settings)
            actor = Actor("bench", admin=True)
            direct: list[float] = []
            for index in range(commits):
                partition = {"day": str(index % 20)}
                began = catalog.begin_batch(actor, "bench", "small", partition)
                write_batch_files(began.location, {"x": [index]})
                start = time.perf_counter()
                catalog.commit_batch(actor, "bench", "small", began.batch_id)
                direct.append(time.perf_counter() - start)
            client = Client(config=ClientConfig(url=url, token=TOKEN))
            over_http: list[float] = []
            for index in range(commits):
                began = catalog.begin_batch(actor, "bench", "small", {"day": str(index % 20)})
                write_batch_files(began.location, {"x": [index]})
                start = time.perf_counter()
                client._commit("bench", "small", began.batch_id, False)
                over_http.append(time.perf_counter() - start)
            catalog.engine.dispose()
            return direct, over_http
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    schema = f"dy_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_url(base_url).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def bench_commits(commits: int) -> None:
    print(f"\n== Commit latency, {commits:,} small batches (20 partitions) ==")
    print(f"{'database':<12}{'path':<22}{'p50 ms':>9}{'p95 ms':>9}")
    runs: list[tuple[str, Callable[[], Any]]] = [("SQLite", lambda: commit_latencies(None,
                                                                                      commits))]
    pg = os.environ.get("DOCKYARD_TEST_POSTGRES_URL")
    if pg:
        def on_postgres() -> tuple[list[float], list[float]]:
            with postgres_schema(pg) as url:
                return commit_latencies(url, commits)
        runs.append(("PostgreSQL", on_postgres))
    else:
        print("(PostgreSQL skipped: set DOCKYARD_TEST_POSTGRES_URL)")
    for name, run in runs:
        direct, over_http = run()
        for label, samples in (("catalog.commit_batch", direct), ("HTTP POST …/commit", over_http)):
            p50, p95 = percentiles(samples)
            print(f"{name:<12}{label:<22}{p50:>9.2f}{p95:>9.2f}")
    print("goals: commit p50 <= 5 ms (SQLite), <= 10 ms (PostgreSQL)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=9_000_000, help="rows of the big frame")
    parser.add_argument("--rounds", type=int, default=2, help="repeats of each frame op")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--skip-frames", action="store_true")
    args = parser.parse_args()
    os.environ.pop("DOCKYARD_DATA_ROOT", None)
    if not args.skip_frames:
        bench_frames(args.rows, args.rounds)
    bench_commits(args.commits)


if __name__ == "__main__":
    main()
