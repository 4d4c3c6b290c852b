"""The data catalog: tables, batches, partition pointers, history and lineage."""

from hub.catalog.errors import (
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
from hub.catalog.service import Actor, Catalog
from hub.catalog.storage import Storage, StorageConfig

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
