"""The API's routes declare their input and output models; the OpenAPI document is
generated from those declarations, so the spec cannot drift from the code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dockyard.models import MAX_ID

_CONVERTER = re.compile(r"<(?:[a-z]+:)?([a-zA-Z_]+)>")
_TYPED_PARAM = re.compile(r"<(?:([a-z]+):)?([a-zA-Z_]+)>")
_PARAM_SCHEMA = {"int": {"type": "integer", "minimum": 0, "maximum": MAX_ID}}


@dataclass
class Operation:
    path: str
    method: str
    summary: str
    description: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    admin: bool = False
    public: bool = False
    path_params: list[str] = field(default_factory=list)
    # Further answers a route may give, status -> when (e.g. {409: "the name is taken"}).
    responses: dict[int, str] = field(default_factory=dict)
    # The body may also be multipart/form-data, with a file in the part of this name.
    file_part: str | None = None


class OpenAPIRegistry:
    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def add(self, op: Operation) -> None:
        self.operations.append(op)

    def document(self, prefix: str, version: str) -> dict[str, Any]:
        models = {
            m for op in self.operations for m in (op.body, op.query, op.response) if m is not None
        }
        ordered = sorted(models, key=lambda m: m.__name__)
        refs, defs = models_json_schema(
            [(m, "validation") for m in ordered],
            ref_template="#/components/schemas/{model}",
        )
        ref_of = {m: refs[(m, "validation")] for m in ordered}
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            spec_path = _CONVERTER.sub(r"{\1}", op.path)
            slug = re.sub(r"[^a-z0-9]+", "_", spec_path.lower()).strip("_")
            item: dict[str, Any] = {
                "summary": op.summary,
                "description": op.description,
                "tags": [op.tag],
                "operationId": f"{op.method.lower()}_{slug}",
                "parameters": [
                    {"name": name, "in": "path", "required": True,
                     "schema": _PARAM_SCHEMA.get(converter, {"type": "string"})}
                    for converter, name in _TYPED_PARAM.findall(op.path)
                ],
                "responses": _responses(op, ref_of),
            }
            if not op.public:
                item["security"] = [{"token": []}, {"session": []}]
            if op.query is not None:
                for name, prop in op.query.model_json_schema()["properties"].items():
                    item["parameters"].append(
                        {
                            "name": name,
                            "in": "query",
                            "required": name in op.query.model_json_schema().get("required", []),
                            "schema": {k: v for k, v in prop.items() if k != "title"},
                        }
                    )
            if op.body is not None:
                content: dict[str, Any] = {"application/json": {"schema": ref_of[op.body]}}
                if op.file_part:
                    content["multipart/form-data"] = {"schema": {
                        "allOf": [ref_of[op.body], {"type": "object", "properties": {
                            op.file_part: {"type": "string", "format": "binary"}}}],
                        "description": f"The fields as form fields (objects, lists and "
                                       f"numbers as JSON text) and the file as '{op.file_part}'.",
                    }}
                item["requestBody"] = {"required": True, "content": content}
            paths.setdefault(prefix + spec_path, {})[op.method.lower()] = item
        return {
            "openapi": "3.1.0",
            "info": {"title": "Dockyard API", "version": version},
            "paths": paths,
            "components": {
                "schemas": defs.get("$defs", {}) | {"Error": ERROR_SCHEMA},
                "securitySchemes": {
                    "token": {
                        "type": "apiKey",
                        "in": "header",
                        "name": "Authorization",
                        "description": "'token <JupyterHub token>' or 'Bearer <token>'",
                    },
                    "session": {"type": "apiKey", "in": "cookie", "name": "dockyard-session"},
                },
            },
        }


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {}},
}


def _responses(op: Operation, ref_of: dict[type[BaseModel], Any]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    ok: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        ok["content"] = {"application/json": {"schema": ref_of[op.response]}}
    responses: dict[str, Any] = {str(op.status): ok}
    if not op.public:
        responses["401"] = {"description": "No valid token or session", **error}
    if op.admin:
        responses["403"] = {"description": "Admins only", **error}
    if op.path_params or "<" in op.path:
        responses["404"] = {"description": "Not found, or not yours", **error}
    if op.body is not None or op.query is not None:
        responses["400"] = {"description": "Malformed request", **error}
        responses["422"] = {"description": "Invalid input, per field", **error}
    if op.body is not None:
        responses["413"] = {"description": "Request body too large", **error}
        responses["415"] = {"description": "The body is not JSON", **error}
    for code, when in op.responses.items():
        answer = ok if code < 400 else error
        responses[str(code)] = {**answer, "description": when}
    responses.setdefault(
        "503", {"description": "The database, storage or hub is unavailable; try again", **error})
    return responses
