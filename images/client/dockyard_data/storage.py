"""Reaching the directories the catalog names: local paths or s3:// URLs, via fsspec."""

from __future__ import annotations

import posixpath
from typing import Any

from dockyard_data.config import ClientConfig
from dockyard_data.errors import DockyardError


def local_path(location: str, storage: dict[str, str], config: ClientConfig) -> str:
    """The server's path as seen from here: containers may mount the data root elsewhere
    (DOCKYARD_DATA_ROOT)."""
    server_root = (storage.get("root") or "").rstrip("/")
    if config.data_root and server_root and config.data_root != server_root:
        if location == server_root or location.startswith(server_root + "/"):
            return config.data_root + location[len(server_root):]
    return location


def filesystem(location: str, storage: dict[str, str], config: ClientConfig) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a batch location."""
    try:
        import fsspec
    except ImportError:
        raise DockyardError("Reading and writing data needs the parquet extra: "
                            "pip install 'dockyard-data[parquet]'") from None
    if location.startswith("s3://"):
        options: dict[str, Any] = {}
        endpoint = config.s3_endpoint_url or storage.get("endpoint_url") or ""
        if endpoint:
            options["endpoint_url"] = endpoint
        if storage.get("region"):
            options["client_kwargs"] = {"region_name": storage["region"]}
        try:
            fs = fsspec.filesystem("s3", **options)
        except ImportError:
            raise DockyardError("This table lives on S3, which needs s3fs: "
                                "pip install 'dockyard-data[parquet]'") from None
        return fs, location[len("s3://"):]
    return fsspec.filesystem("file"), local_path(location, storage, config)


def join(path: str, name: str) -> str:
    return posixpath.join(path, name)
