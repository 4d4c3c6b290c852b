"""What the data catalog refuses, each a kind of ``dockyard.errors`` refusal.

The ``error`` strings are part of the API: the Python and R clients turn them into
their own exceptions (TableNotFound, SchemaMismatch, …), so keep them stable.
"""

from __future__ import annotations

from dockyard.errors import Conflict, DockyardError, Forbidden, Invalid, NotFound, Unavailable


class CatalogError(DockyardError):
    """Base of the catalog's refusals (for callers that catch them all); never raised
    itself. Each subclass names its kind first, so that its kind's ``error`` and status
    are the ones it answers with."""

    error = "Catalog error"


class InvalidName(Invalid, CatalogError):
    """A namespace, table, partition key or value that cannot be used; ``detail`` is a
    field-level list like the API's validation errors."""

    error = "Invalid input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__([{"field": field, "message": message}])
        self.args = (f"{field}: {message}",)


class TableNotFound(NotFound, CatalogError):
    error = "Table not found"


class PartitionNotFound(NotFound, CatalogError):
    error = "Partition not found"


class BatchNotFound(NotFound, CatalogError):
    error = "Batch not found"


class RunNotFound(NotFound, CatalogError):
    error = "Run not found"


class PermissionDenied(Forbidden, CatalogError):
    error = "Permission denied"


class SchemaMismatch(Conflict, CatalogError):
    """``detail`` is ``{"message": …, "columns": [{"column", "problem"}]}``."""

    error = "Schema mismatch"

    def __init__(self, message: str, columns: list[dict[str, str]]) -> None:
        super().__init__({"message": message, "columns": columns})
        self.args = (message,)
        self.columns = columns


class BatchIncomplete(Conflict, CatalogError):
    """The batch's files are not (all) where the manifest says they are."""

    error = "Batch incomplete"


class PartitionKeysFixed(Conflict, CatalogError):
    """A table's partition keys cannot change once it has a batch."""

    error = "Conflict"


class NothingToRollBack(Conflict, CatalogError):
    error = "Nothing to roll back"


class StorageUnavailable(Unavailable, CatalogError):
    error = "Storage unavailable"
