"""pandas frames to and from a batch directory of parquet files.

Writes are streamed: the frame is converted and written one row group at a time, so a
frame never needs a second full copy of itself in memory (a whole-table
``pa.Table.from_pandas`` would). Partition columns are stored inside the files as well
as in the path, so a file read on its own carries its partition values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dockyard_data.errors import DockyardError
from dockyard_data.storage import join

MANIFEST_NAME = "_dockyard_manifest.json"
# Target in-memory size of one row group, and row groups per file: files of ~1 GiB of
# frame data let Spark and Ray read a big batch in parallel.
ROW_GROUP_BYTES = 128 * 1024 * 1024
ROW_GROUPS_PER_FILE = 8
MAX_WRITER_THREADS = 4


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DockyardError("Storing and loading frames needs pyarrow and pandas: "
                            "pip install 'dockyard-data[parquet]'") from None
    return pyarrow


@dataclass
class PreparedFrame:
    """A frame with the schema it is written with and the partition columns to add."""

    frame: Any
    frame_schema: Any
    schema: Any
    added: dict[str, str] = field(default_factory=dict)

    def fields(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "type": str(f.type), "nullable": bool(f.nullable)}
                for f in self.schema]


def prepare(df: Any, partition: dict[str, str]) -> PreparedFrame:
    pa = _pyarrow()
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"store_dataframe takes a pandas DataFrame, not {type(df).__name__}")
    names = list(df.columns)
    odd = [repr(c) for c in names if not isinstance(c, str)]
    if odd:
        raise ValueError("Column names must be strings; rename " + ", ".join(odd[:5]))
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise ValueError("Column names must be unique; repeated: " + ", ".join(duplicated))
    frame_schema = pa.Schema.from_pandas(df, preserve_index=False)
    schema = frame_schema
    added: dict[str, str] = {}
    for key, value in partition.items():
        if key in df.columns:
            if len(df) and not (df[key].astype(str) == value).all():
                raise ValueError(f"Column {key!r} holds values other than the partition value "
                                 f"{value!r}; drop the column or write each value as its own "
                                 "partition")
        else:
            added[key] = value
            schema = schema.append(pa.field(key, pa.string()))
    return PreparedFrame(df, frame_schema, schema, added)


def rows_per_group(df: Any, target_bytes: int) -> int:
    """Rows making about ``target_bytes`` of frame memory, measured on a sample (deep, so
    that string columns count their characters)."""
    if len(df) == 0:
        return 1
    sample = df.iloc[: min(len(df), 10_000)]
    per_row = max(1.0, float(sample.memory_usage(index=False, deep=True).sum()) / len(sample))
    return int(min(max(target_bytes / per_row, 1_000), 50_000_000))


def write_batch(prepared: PreparedFrame, fs: Any, path: str, *, batch_id: str,
                partition: dict[str, str], row_group_bytes: int | None = None,
                groups_per_file: int | None = None) -> dict[str, Any]:
    """Write the frame's parquet files, then the manifest (last: its presence says the
    files are complete). Returns the manifest.

    Row groups are converted from pandas one at a time. When the frame spans several
    row groups, files are written by parallel threads (parquet encoding releases the
    GIL), so a big frame is written about as fast as the machine's cores allow while
    each thread holds only the row group it is writing."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    df = prepared.frame
    total = len(df)
    group = rows_per_group(df, row_group_bytes or ROW_GROUP_BYTES)
    starts = list(range(0, max(total, 1), group))
    writers = max(1, min(os.cpu_count() or 1, MAX_WRITER_THREADS, len(starts)))
    per_file = min(groups_per_file or ROW_GROUPS_PER_FILE, -(-len(starts) // writers))
    plan = [starts[i:i + per_file] for i in range(0, len(starts), per_file)]
    fs.makedirs(path, exist_ok=True)

    def to_arrow(start: int) -> Any:
        table = pa.Table.from_pandas(df.iloc[start:start + group],
                                     schema=prepared.frame_schema, preserve_index=False)
        for key, value in prepared.added.items():
            table = table.append_column(pa.field(key, pa.string()),
                                        pa.repeat(pa.scalar(value, pa.string()),
                                                  table.num_rows))
        return table

    def write_file(number: int) -> dict[str, Any]:
        name = f"part-{number:05d}.parquet"
        rows = 0
        with pq.ParquetWriter(join(path, name), prepared.schema, filesystem=fs,
                              compression="snappy") as writer:
            for start in plan[number]:
                table = to_arrow(start)
                writer.write_table(table, row_group_size=max(group, 1))
                rows += table.num_rows
                del table
        return {"path": name, "rows": rows}

    if writers == 1:
        files = [write_file(n) for n in range(len(plan))]
    else:
        with ThreadPoolExecutor(max_workers=writers) as pool:
            files = list(pool.map(write_file, range(len(plan))))
    fs.invalidate_cache(path)
    for entry in files:
        entry["bytes"] = int(fs.size(join(path, entry["path"])))
    manifest = {
        "format": "dockyard-batch/1",
        "batch_id": batch_id,
        "partition": partition,
        "files": files,
        "rows": total,
        "schema": prepared.fields(),
        "written_at": datetime.now(timezone.utc).isoformat(),
    }
    fs.pipe_file(join(path, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    return manifest


def read_batches(batches: Sequence[dict[str, Any]], locate: Any,
                 columns: Sequence[str] | None = None, filters: Any = None) -> Any:
    """One Arrow table from the files of several batches. Batches written before a
    schema evolution lack its new columns; they read as nulls."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    wanted = list(columns) if columns is not None else None
    tables = []
    for batch in batches:
        fs, path = locate(batch["location"])
        paths = [join(path, name) for name in batch["files"]]
        present = batch.get("columns") or None
        use = wanted if wanted is None or present is None else [c for c in wanted if c in present]
        tables.append(pq.read_table(paths if len(paths) > 1 else paths[0], filesystem=fs,
                                    columns=use, filters=filters))
    if not tables:
        raise DockyardError("Nothing to read")
    table = tables[0] if len(tables) == 1 else pa.concat_tables(
        tables, promote_options="permissive")
    if wanted is not None:
        unknown = [c for c in wanted if c not in table.column_names]
        if unknown:
            raise ValueError("No such column: " + ", ".join(unknown))
        table = table.select(wanted)
    return table
