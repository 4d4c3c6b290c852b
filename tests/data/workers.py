"""Code run in child processes by the concurrency and crash tests (importable, so that
the 'spawn' start method can find it)."""

from __future__ import annotations

import os
import time
from typing import Any


def commit_many(url: str, root: str, worker: int, count: int, barrier: Any) -> list[str]:
    """Begin, write and commit ``count`` batches of one partition as fast as possible."""
    from dockyard.data import Actor, Catalog, Storage, StorageConfig
    from dockyard.db import make_engine
    from tests.data.helpers import write_batch_files

    engine = make_engine(url)
    catalog = Catalog(engine, Storage(StorageConfig(root)))
    actor = Actor(f"writer{worker}", admin=True)
    committed = []
    barrier.wait(60)
    for index in range(count):
        began = catalog.begin_batch(actor, "load", "hot", {"day": "1"})
        write_batch_files(began.location, {"worker": [worker], "index": [index]})
        result = catalog.commit_batch(actor, "load", "hot", began.batch_id)
        committed.append(result.batch.batch_id)
    engine.dispose()
    return committed


def store_then_hang(url: str, token: str, stage: str, conn: Any) -> None:
    """Store a frame through the real client, but stop at ``stage`` ("commit": files and
    manifest written; "manifest": data files written, manifest not yet) and wait there
    to be killed."""
    import pandas as pd
    from dockyard_data import Client, ClientConfig, frames

    client = Client(config=ClientConfig(url=url, token=token))

    def hang(*_args: Any, **_kwargs: Any) -> None:
        conn.send(os.getpid())
        time.sleep(120)

    if stage == "commit":
        client._commit = hang  # type: ignore[method-assign]
    else:
        real_write = frames.write_batch

        def write_without_manifest(prepared: Any, fs: Any, path: str, **kwargs: Any) -> Any:
            fs.pipe_file = hang  # the manifest is the last thing written
            return real_write(prepared, fs, path, **kwargs)

        frames.write_batch = write_without_manifest  # type: ignore[assignment]
    client.store_dataframe(pd.DataFrame({"x": range(1000)}), "sales", "orders",
                           partition={"date": "20161031"})
