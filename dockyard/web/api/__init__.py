"""The REST API under /api/v1: declared routes, validated input, JSON errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ValidationError

from dockyard import __version__
from dockyard.web.api.openapi import OpenAPIRegistry, Operation
from dockyard.web.auth import api_login_required, require_admin
from dockyard.web.errors import ApiError, validation_detail

api = Blueprint("api", __name__, url_prefix="/api/v1")
registry = OpenAPIRegistry()


def _parse_body(model: type[BaseModel], file_part: str | None = None) -> BaseModel:
    if file_part is not None and request.mimetype == "multipart/form-data":
        if file_part in request.form and file_part not in request.files:
            raise ApiError(422, "Invalid input", [{
                "field": file_part, "message": f"send the file as a file part (curl: -F "
                f"{file_part}=@FILE), not as text (-F {file_part}=<FILE)"}])
        return model.model_validate(_form_payload(model))
    if not request.is_json:
        also = f" (or as multipart/form-data with a file part '{file_part}')" if file_part else ""
        raise ApiError(
            415, "Expected JSON",
            f"Send the body as JSON with 'Content-Type: application/json'{also}.",
        )
    payload = request.get_json(silent=True)
    if payload is None:
        raise ApiError(400, "Malformed JSON", "The request body is not valid JSON.")
    return model.model_validate(payload)


def _form_payload(model: type[BaseModel]) -> dict[str, Any]:
    """A multipart form's fields as the model's JSON: a text field stays text, any other
    field's value is read as JSON (``parameters={"alpha": 0.5}``, ``cpu=2``), and is
    left as text for the model to refuse when it is not."""
    payload: dict[str, Any] = {}
    for key in request.form:
        value = request.form[key]
        field = model.model_fields.get(key)
        if field is not None and field.annotation in (str, str | None):
            payload[key] = value
            continue
        try:
            payload[key] = json.loads(value)
        except ValueError:
            payload[key] = value
    return payload


def _parse_query(model: type[BaseModel]) -> BaseModel:
    fields = model.model_fields
    raw: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        annotation = fields[key].annotation if key in fields else None
        wants_list = annotation is not None and "list" in str(annotation)
        raw[key] = values if wants_list else values[-1]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "Invalid query parameters", validation_detail(exc)) from None


def route(
    path: str,
    method: str = "GET",
    *,
    tag: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    admin: bool = False,
    public: bool = False,
    responses: dict[int, str] | None = None,
    file_part: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API route: authentication, input parsing and its OpenAPI entry.

    The view receives ``body=`` and ``query=`` as validated models. A view returning a
    pydantic model (or a list of them) is serialised to JSON with ``status``.
    ``responses`` documents the route's other answers (e.g. ``{409: "name taken"}``).
    ``file_part`` lets the body also come as multipart/form-data: the fields as form
    fields, plus a file in the part of that name (the view reads it from request.files).
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        doc = (view.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        registry.add(
            Operation(
                path=path,
                method=method,
                summary=summary,
                description=description.strip(),
                tag=tag,
                body=body,
                query=query,
                response=response,
                status=status,
                admin=admin,
                public=public,
                responses=dict(responses or {}),
                file_part=file_part,
            )
        )

        @wraps(view)
        def handler(**kwargs: Any) -> Any:
            if admin:
                require_admin()
            if body is not None:
                kwargs["body"] = _parse_body(body, file_part)
            if query is not None:
                kwargs["query"] = _parse_query(query)
            result = view(**kwargs)
            if isinstance(result, BaseModel):
                return jsonify(result.model_dump(mode="json")), status
            return result

        endpoint = f"{tag}_{view.__name__}"
        wrapped = handler if public else api_login_required(handler)
        api.add_url_rule(path, endpoint=endpoint, view_func=wrapped, methods=[method])
        return handler

    return decorate


@api.get("/openapi.json")
def openapi_document() -> Any:
    """The OpenAPI 3.1 description of this API, generated from the route declarations."""
    return jsonify(registry.document(api.url_prefix or "", __version__))


class WhoAmI(BaseModel):
    name: str
    admin: bool
    run_id: int | None = None


@route("/user", tag="users", response=WhoAmI)
def whoami() -> WhoAmI:
    """The caller, as Dockyard sees them."""
    from dockyard.web.auth import current_user

    user = current_user()
    assert user is not None
    return WhoAmI(name=user.name, admin=user.admin, run_id=user.run_id)
