"""Copy the data catalog's files between the data root (S3 or a directory) and a local
directory, and runs' files (notebook snapshots and executed notebooks, kept apart from
the data) into its ``_artifacts`` folder: the data-store half of "Backup and restore".
No namespace can be called ``_artifacts``, so the two never mix.

Batch directories are never changed after commit, so a copy taken while Dockyard runs is
consistent for every batch the database dump (taken first) points at; a batch committed
in between is simply not yet referenced by the restored database.
"""

from __future__ import annotations

import posixpath
from typing import Any

from dockyard.settings import Settings


def data_root_filesystem(settings: Settings) -> tuple[Any, str]:
    """The fsspec filesystem of the data root and the root's path on it."""
    from dockyard.data.storage import Storage, StorageConfig

    storage = Storage(StorageConfig(settings.data_dir, settings.data_s3_endpoint_url,
                                    settings.data_s3_region))
    return storage.filesystem(storage.root)


#: Where a data-store backup keeps runs' files, beside the data root's namespaces.
ARTIFACTS_FOLDER = "_artifacts"


def artifacts_filesystem(settings: Settings) -> tuple[Any, str]:
    """The fsspec filesystem of runs' files (DOCKYARD_ARTIFACTS_ROOT) and its root there."""
    from dockyard.data.storage import Storage, StorageConfig

    storage = Storage(StorageConfig(settings.artifacts_dir, settings.data_s3_endpoint_url,
                                    settings.data_s3_region))
    return storage.filesystem(storage.root)


def _local() -> Any:
    import fsspec

    return fsspec.filesystem("file")


def copy_tree(src_fs: Any | None, src_root: str, dst_fs: Any | None,
              dst_root: str, skip: str | None = None) -> tuple[int, int]:
    """Copy every file under ``src_root`` to the same relative path under ``dst_root``
    (``None`` means the local filesystem), but those under the folder ``skip``. Returns
    (files, bytes)."""
    src_fs = src_fs or _local()
    dst_fs = dst_fs or _local()
    src_root = src_root.rstrip("/")
    dst_root = dst_root.rstrip("/")
    files = 0
    size = 0
    if not src_fs.exists(src_root):
        return files, size
    for path in sorted(src_fs.find(src_root)):
        relative = posixpath.relpath(path, src_root)
        if skip and (relative == skip or relative.startswith(skip + "/")):
            continue
        target = posixpath.join(dst_root, relative)
        parent = posixpath.dirname(target)
        if parent:
            dst_fs.makedirs(parent, exist_ok=True)
        with src_fs.open(path, "rb") as reader, dst_fs.open(target, "wb") as writer:
            while chunk := reader.read(8 * 1024 * 1024):
                writer.write(chunk)
                size += len(chunk)
        files += 1
    return files, size
