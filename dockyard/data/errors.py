"""What can go wrong in the catalog, each with the HTTP status the API answers with.

The ``error`` strings are part of the API: the Python and R clients turn them into
their own exceptions (TableNotFound, SchemaMismatch, …), so keep them stable.
"""

from __future__ import annotations

from typing import Any


class CatalogError(Exception):
    status = 400
    error = "Catalog error"

    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else self.error)
        self.detail = detail


class InvalidName(CatalogError):
    """A namespace, table, partition key or value that cannot be used; ``detail`` is a
    field-level list like the API's validation errors."""

    status = 422
    error = "Invalid input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__([{"field": field, "message": message}])
        self.args = (f"{field}: {message}",)


class TableNotFound(CatalogError):
    status = 404
    error = "Table not found"


class PartitionNotFound(CatalogError):
    status = 404
    error = "Partition not found"


class BatchNotFound(CatalogError):
    status = 404
    error = "Batch not found"


class RunNotFound(CatalogError):
    status = 404
    error = "Run not found"


class PermissionDenied(CatalogError):
    status = 403
    error = "Permission denied"


class SchemaMismatch(CatalogError):
    """``detail`` is ``{"message": …, "columns": [{"column", "problem"}]}``."""

    status = 409
    error = "Schema mismatch"

    def __init__(self, message: str, columns: list[dict[str, str]]) -> None:
        super().__init__({"message": message, "columns": columns})
        self.args = (message,)
        self.columns = columns


class BatchIncomplete(CatalogError):
    """The batch's files are not (all) where the manifest says they are."""

    status = 409
    error = "Batch incomplete"


class PartitionKeysFixed(CatalogError):
    """A table's partition keys cannot change once it has a batch."""

    status = 409
    error = "Conflict"


class NothingToRollBack(CatalogError):
    status = 409
    error = "Nothing to roll back"


class StorageUnavailable(CatalogError):
    status = 503
    error = "Storage unavailable"
