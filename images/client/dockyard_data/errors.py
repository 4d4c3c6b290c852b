"""Errors the data client raises: plain Python exceptions, each saying what to do."""

from __future__ import annotations

from typing import Any


class DockyardError(Exception):
    """Anything the Dockyard data API refused or could not do."""

    def __init__(self, message: str, *, status: int | None = None, error: str = "",
                 detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail


class NotConfigured(DockyardError):
    """The client does not know where Dockyard is (DOCKYARD_URL / DOCKYARD_TOKEN)."""


class AuthenticationFailed(DockyardError, PermissionError):
    """Dockyard did not accept the token."""


class PermissionDenied(DockyardError, PermissionError):
    """The caller may read but not write this namespace."""


class TableNotFound(DockyardError, LookupError):
    pass


class PartitionNotFound(DockyardError, LookupError):
    pass


class BatchNotFound(DockyardError, LookupError):
    pass


class RunNotFound(DockyardError, LookupError):
    pass


class SchemaMismatch(DockyardError, ValueError):
    """The data's columns do not match the table's; ``columns`` lists each problem as
    ``{"column": name, "problem": text}``."""

    @property
    def columns(self) -> list[dict[str, str]]:
        if isinstance(self.detail, dict):
            return list(self.detail.get("columns") or [])
        return []


class BatchIncomplete(DockyardError):
    """The batch's files are not all where its manifest says."""


class NothingToRollBack(DockyardError):
    pass


class InvalidRequest(DockyardError, ValueError):
    """The request was refused as malformed (bad name, unknown partition key, …)."""


class ServiceUnavailable(DockyardError, ConnectionError):
    """Dockyard, its database or its storage did not answer."""


# The API's stable "error" strings.
_BY_ERROR = {
    "Table not found": TableNotFound,
    "Partition not found": PartitionNotFound,
    "Batch not found": BatchNotFound,
    "Run not found": RunNotFound,
    "Permission denied": PermissionDenied,
    "Schema mismatch": SchemaMismatch,
    "Batch incomplete": BatchIncomplete,
    "Nothing to roll back": NothingToRollBack,
}


def error_for(status: int, error: str, detail: Any) -> DockyardError:
    """The exception for an API error response."""
    cls = _BY_ERROR.get(error)
    if cls is None:
        if status == 401:
            cls = AuthenticationFailed
        elif status == 403:
            cls = PermissionDenied
        elif status == 404:
            cls = DockyardError
        elif status >= 500:
            cls = ServiceUnavailable
        elif 400 <= status < 500:
            cls = InvalidRequest
        else:
            cls = DockyardError
    return cls(_message(error, detail), status=status, error=error, detail=detail)


def _message(error: str, detail: Any) -> str:
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, dict) and detail.get("message"):
        return str(detail["message"])
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            if isinstance(item, dict):
                parts.append(f"{item.get('field', '?')}: {item.get('message', '')}")
            else:
                parts.append(str(item))
        return f"{error}: " + "; ".join(parts)
    return error or "Dockyard refused the request"
