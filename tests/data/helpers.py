"""Writing a batch's files the way a client does, for catalog tests without HTTP."""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_dockyard_manifest.json"


def write_batch_files(location: str, columns: dict[str, list[Any]], *, files: int = 1) -> None:
    """Parquet files plus the manifest (written last, as the client does)."""
    os.makedirs(location, exist_ok=True)
    table = pa.table(columns)
    entries = []
    per_file = max(1, -(-table.num_rows // files))
    for index in range(files):
        name = f"part-{index:05d}.parquet"
        pq.write_table(table.slice(index * per_file, per_file), os.path.join(location, name))
        entries.append({"path": name, "bytes": os.path.getsize(os.path.join(location, name))})
    with open(os.path.join(location, MANIFEST), "w") as handle:
        json.dump({"files": entries}, handle)


def store(catalog: Any, actor: Any, namespace: str, table: str, partition: dict[str, Any],
          columns: dict[str, list[Any]], **kwargs: Any) -> Any:
    """Begin, write and commit one batch; returns the CommitResult."""
    began = catalog.begin_batch(actor, namespace, table, partition)
    write_batch_files(began.location, columns)
    return catalog.commit_batch(actor, namespace, table, began.batch_id, **kwargs)
