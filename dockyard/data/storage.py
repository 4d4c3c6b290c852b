"""Where batch files live: a local directory or an S3 prefix, reached through fsspec.

The server never writes data. It names the directory a batch goes to, and at commit it
checks what the client wrote there: the manifest, every listed file and its size, and
each parquet footer (rows and schema come from the footers, not from the client's word).
Credentials come from the standard AWS chain (environment, profile, instance role);
only the endpoint and region are settings, and neither is secret.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dockyard.data.errors import BatchIncomplete, CatalogError, StorageUnavailable
from dockyard.data.names import MANIFEST_NAME
from dockyard.data.schema import SchemaFields, fields_from_arrow

PREVIEW_MAX_ROWS = 200


@dataclass(frozen=True)
class StorageConfig:
    root: str
    endpoint_url: str = ""
    region: str = ""

    @property
    def kind(self) -> str:
        return "s3" if self.root.startswith("s3://") else "local"

    def normalised(self) -> StorageConfig:
        if self.kind == "local":
            return StorageConfig(str(Path(self.root).expanduser().resolve()),
                                 self.endpoint_url, self.region)
        return StorageConfig(self.root.rstrip("/"), self.endpoint_url, self.region)

    def public(self) -> dict[str, str]:
        """What clients are told: where to write and how to reach it (no credentials)."""
        return {"kind": self.kind, "root": self.root, "endpoint_url": self.endpoint_url,
                "region": self.region}


@dataclass(frozen=True)
class BatchContents:
    """What a batch directory holds, as verified at commit."""

    files: list[str]
    rows: int
    bytes: int
    fields: SchemaFields


class Storage:
    def __init__(self, config: StorageConfig) -> None:
        self.config = config.normalised()

    @property
    def root(self) -> str:
        return self.config.root

    def location(self, namespace: str, table: str, partition: str, batch_id: str) -> str:
        parts = [namespace, table, *([partition] if partition else []), batch_id]
        return posixpath.join(self.root, *parts)

    # -- filesystems -------------------------------------------------------------------
    @cached_property
    def _s3(self) -> Any:
        import fsspec

        options: dict[str, Any] = {}
        if self.config.endpoint_url:
            options["endpoint_url"] = self.config.endpoint_url
        if self.config.region:
            options["client_kwargs"] = {"region_name": self.config.region}
        return fsspec.filesystem("s3", **options)

    @cached_property
    def _local(self) -> Any:
        import fsspec

        return fsspec.filesystem("file")

    def filesystem(self, location: str) -> tuple[Any, str]:
        """The filesystem holding ``location`` and the path to use with it."""
        if location.startswith("s3://"):
            return self._s3, location[len("s3://"):]
        return self._local, location

    # -- what commit checks ------------------------------------------------------------
    def inspect_batch(self, location: str) -> BatchContents:
        import pyarrow.parquet as pq

        fs, path = self.filesystem(location)
        try:
            fs.invalidate_cache(path)
            try:
                raw = fs.cat_file(posixpath.join(path, MANIFEST_NAME))
            except FileNotFoundError:
                raise BatchIncomplete(
                    f"{location} has no {MANIFEST_NAME}: the batch's files were not (completely) "
                    "written, so it cannot be committed"
                ) from None
            manifest = _parse_manifest(raw, location)
            sizes = {
                posixpath.basename(entry["name"].rstrip("/")): int(entry.get("size") or 0)
                for entry in fs.ls(path, detail=True)
            }
            missing, wrong_size = [], []
            for entry in manifest:
                if entry["path"] not in sizes:
                    missing.append(entry["path"])
                elif entry.get("bytes") is not None and sizes[entry["path"]] != entry["bytes"]:
                    wrong_size.append(f"{entry['path']} ({sizes[entry['path']]} bytes, the "
                                      f"manifest says {entry['bytes']})")
            if missing or wrong_size:
                problems = (["missing: " + ", ".join(missing)] if missing else []) + (
                    ["incomplete: " + ", ".join(wrong_size)] if wrong_size else [])
                raise BatchIncomplete(f"Files of {location} are not as its manifest lists them: "
                                      + "; ".join(problems))
            rows = 0
            fields: SchemaFields | None = None
            for entry in manifest:
                with fs.open(posixpath.join(path, entry["path"]), "rb") as handle:
                    metadata = pq.ParquetFile(handle).metadata
                    rows += metadata.num_rows
                    file_fields = fields_from_arrow(metadata.schema.to_arrow_schema())
                if fields is None:
                    fields = file_fields
                elif [f["name"] for f in file_fields] != [f["name"] for f in fields]:
                    raise BatchIncomplete(f"The files of {location} do not share one schema "
                                          f"({entry['path']} differs from the first file)")
            return BatchContents(
                files=[entry["path"] for entry in manifest],
                rows=rows,
                bytes=sum(sizes[entry["path"]] for entry in manifest),
                fields=fields or [],
            )
        except CatalogError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "ArrowInvalid":
                raise BatchIncomplete(f"A file of {location} is not readable parquet: {exc}"
                                      ) from None
            raise StorageUnavailable(f"Cannot read {location}: {exc}") from None

    def preview(self, location: str, files: list[str],
                limit: int) -> tuple[list[str], list[list[Any]]]:
        """The first ``limit`` rows of a batch, as JSON-friendly values."""
        import pyarrow.parquet as pq

        fs, path = self.filesystem(location)
        columns: list[str] = []
        rows: list[list[Any]] = []
        try:
            for name in files:
                with fs.open(posixpath.join(path, name), "rb") as handle:
                    parquet = pq.ParquetFile(handle)
                    columns = columns or parquet.schema_arrow.names
                    for batch in parquet.iter_batches(batch_size=max(1, limit - len(rows))):
                        for record in batch.to_pylist():
                            rows.append([_json_value(record.get(c)) for c in columns])
                        break
                if len(rows) >= limit:
                    break
        except Exception as exc:
            raise StorageUnavailable(f"Cannot read {location}: {exc}") from None
        return columns, rows[:limit]

    def remove(self, location: str) -> None:
        fs, path = self.filesystem(location)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def exists(self, location: str) -> bool:
        fs, path = self.filesystem(location)
        fs.invalidate_cache(path)
        return bool(fs.exists(path))


def _parse_manifest(raw: bytes, location: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(raw)
        files = document["files"]
        entries = [
            {"path": str(f["path"]), "bytes": None if f.get("bytes") is None else int(f["bytes"])}
            for f in files
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchIncomplete(f"The manifest of {location} is not readable: {exc}") from None
    for entry in entries:
        if "/" in entry["path"] or entry["path"].startswith("."):
            raise BatchIncomplete(f"The manifest of {location} names {entry['path']!r}; files "
                                  "must lie directly in the batch directory")
    if not entries:
        raise BatchIncomplete(f"The manifest of {location} lists no files")
    return entries


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        finite = value == value and value not in (float("inf"), float("-inf"))
        return value if finite else str(value)
    if isinstance(value, bytes):
        return value[:64].hex() + ("…" if len(value) > 64 else "")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)
