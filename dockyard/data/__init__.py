"""The data catalog: tables, batches, partition pointers, history and lineage."""

from dockyard.data.errors import (
    BatchIncomplete,
    BatchNotFound,
    CatalogError,
    InvalidName,
    NothingToRollBack,
    PartitionKeysFixed,
    PartitionNotFound,
    PermissionDenied,
    RunNotFound,
    SchemaMismatch,
    StorageUnavailable,
    TableNotFound,
)
from dockyard.data.service import Actor, Catalog
from dockyard.data.storage import Storage, StorageConfig

__all__ = [
    "Actor",
    "BatchIncomplete",
    "BatchNotFound",
    "Catalog",
    "CatalogError",
    "InvalidName",
    "NothingToRollBack",
    "PartitionKeysFixed",
    "PartitionNotFound",
    "PermissionDenied",
    "RunNotFound",
    "SchemaMismatch",
    "Storage",
    "StorageConfig",
    "StorageUnavailable",
    "TableNotFound",
]
