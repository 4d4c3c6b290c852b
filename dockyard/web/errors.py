"""One handler per kind of error: JSON under the API, a friendly page elsewhere.

Domain code raises the kinds of ``dockyard.errors`` and knows no HTTP; ``STATUS_OF_KIND``
below is the one place a kind becomes a status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, StatementError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from dockyard.errors import (
    BadRequest,
    Conflict,
    DockyardError,
    Forbidden,
    Invalid,
    NotFound,
    Unavailable,
)

log = logging.getLogger(__name__)


STATUS_OF_KIND: dict[type[DockyardError], int] = {
    Invalid: 422,
    BadRequest: 400,
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Unavailable: 503,
}


def status_of(exc: DockyardError) -> int:
    """The HTTP status of a refusal: its kind's (the nearest kind it derives from)."""
    for kind in type(exc).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]  # type: ignore[index]
    return 400


class ApiError(Exception):
    """An error with a status, a short name and a detail a person can act on."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def wants_json() -> bool:
    return "/api/" in request.path or request.accept_mimetypes.best == "application/json"


def _respond(status: int, error: str, detail: Any) -> Any:
    if wants_json():
        return jsonify({"error": error, "detail": detail}), status
    return render_template("error.html", status=status, error=error, detail=detail), status


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """Field-level messages: which field, what is wrong."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def request_too_large(exc: RequestEntityTooLarge) -> Any:
    """413, naming the limit and the setting that sets it (a blueprint may answer some of
    its own routes better and leave the rest to this)."""
    from dockyard.web.security import UPLOAD_ENDPOINTS, notebook_setting

    limit = request.max_content_length or 0
    setting = ("DOCKYARD_IMAGE_UPLOAD_MAX_MB" if request.endpoint in UPLOAD_ENDPOINTS
               else notebook_setting(request.endpoint, request.mimetype)
               or "DOCKYARD_REQUEST_MAX_KB")
    return _respond(413, "Request too large",
                    f"The request body is larger than the {limit // 1024} KB accepted here "
                    f"(the administrators set this with {setting}).")


def init_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return _respond(exc.status, exc.error, exc.detail)

    @app.errorhandler(DockyardError)
    def _refused(exc: DockyardError) -> Any:
        return _respond(status_of(exc), exc.error, exc.detail)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        return _respond(422, "Invalid input", validation_detail(exc))

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Any:
        return _respond(400, "Missing or stale form token", "Reload the page and submit again.")

    app.register_error_handler(RequestEntityTooLarge, request_too_large)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        detail = exc.description
        if exc.code == 404 and detail and detail.startswith("The requested URL"):
            detail = "Nothing here, or it belongs to someone else."
        return _respond(exc.code or 500, exc.name, detail)

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Any:
        log.error("Database unavailable: %s", exc.orig)
        return _respond(
            503,
            "Database unavailable",
            "Dockyard cannot reach its database; "
            "try again shortly. Nothing you submitted was saved.",
        )

    @app.errorhandler(OverflowError)
    def _out_of_range(exc: OverflowError) -> Any:
        # A number or time no check caught before it reached Python's or the driver's
        # limits: the request's fault, not ours.
        log.info("Out-of-range input on %s %s: %s", request.method, request.path, exc)
        return _respond(422, "Invalid input",
                        "A number or a time in the request is out of range.")

    @app.errorhandler(StatementError)
    def _statement(exc: StatementError) -> Any:
        if isinstance(exc.orig, OverflowError):
            return _out_of_range(exc.orig)
        return _unexpected(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("Unhandled error on %s %s", request.method, request.path)
        return _respond(
            500,
            "Internal error",
            "Something went wrong on our side; "
            "the administrators can find the details in the web service log.",
        )
