"""What Dockyard refuses, by kind, in words a person can act on.

Domain code (jobs, images, data, worker) raises a subclass of one of these kinds and knows
nothing of HTTP; the web layer alone turns a kind into a status, in one place
(``dockyard/web/errors.py``), and the command line into a one-line message.

``error`` is the short name the API sends as ``{"error": …}``; some are part of the API
(the data clients turn them into their own exceptions), so a subclass keeps its own.
``detail`` is a sentence, or a list of ``{"field", "message"}`` for field-level problems.
"""

from __future__ import annotations

from typing import Any


class DockyardError(Exception):
    """Base of every refusal; never raised itself."""

    error = "Invalid request"

    def __init__(self, detail: Any = None) -> None:
        super().__init__(detail if isinstance(detail, str) else self.error)
        self.detail = detail if detail is not None else self.error


class Invalid(DockyardError):
    """The input cannot be used as it is: a field, a name, a file. ``detail`` is usually
    the list of fields at fault (a job's schema, a table name, an image reference)."""

    error = "Invalid input"


class BadRequest(DockyardError):
    """The request as a whole does not make sense here (not one field's fault)."""

    error = "Bad request"


class NotFound(DockyardError):
    """No such thing, or it belongs to someone else: the two are never told apart, so
    that nobody learns what another user has."""

    error = "Not Found"


class Forbidden(DockyardError):
    """The caller may see the thing but not do this to it."""

    error = "Permission denied"


class Conflict(DockyardError):
    """The thing's current state does not allow this: a run already finished, a name
    taken, an image still in use. It may work later, or after another change."""

    error = "Conflict"


class Unavailable(DockyardError):
    """Something Dockyard depends on (an engine, the storage) does not answer now."""

    error = "Unavailable"
