"""What FastAPI cannot infer for the OpenAPI document: bodies read by hand (JSON *or* multipart) and their schemas.

Routes that accept a photo as JSON or as an upload parse the body themselves (one capped reader for both), so their
request body is declared here from the same pydantic models that validate it, and those models are added to the
document's components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from avatar.contracts import ErrorResponse

_BODY_MODELS: list[type[BaseModel]] = []

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (400, "Malformed body"), (401, "Missing or invalid API key"),
        (402, "Not enough credits for this avatar (nothing was done)"), (404, "Unknown id or style"),
        (413, "Too large"), (415, "Unsupported content type or image format"),
        (422, "Invalid field, no face, or face too small"),
        (429, "Over one of the account's limits (rate, concurrent requests, jobs, cached inputs); see Retry-After"),
        (503, "Overloaded or a stage is restarting; see Retry-After"),
        (504, "Timed out"))}


IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "maxLength": 255},
                   "description": "Makes a retry safe: the same key and body answer the original response (no new "
                                  "work, no new charge); the same key with another body is refused (422)."}
PREFER_ASYNC = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "`respond-async`: answer 202 with a job instead of waiting (API key required)."}


def with_headers(extra: dict[str, Any], *headers: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` with request headers the route reads by hand (Idempotency-Key, Prefer)."""
    return {**extra, "parameters": [*extra.get("parameters", []), *headers]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route whose JSON body is validated by hand against `model`."""
    _BODY_MODELS.append(model)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model.__name__)}}}}


def json_or_form_body(model: type[BaseModel], file_field: str, form_name: str) -> dict[str, Any]:
    """`openapi_extra` of a route taking `model` as JSON or as a multipart form whose `file_field` is a file part."""
    extra = json_body(model)
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    props = dict(schema.get("properties", {}))
    props[file_field] = {"type": "string", "format": "binary", "description": f"the {file_field} file"}
    form = {"title": form_name, "type": "object", "properties": props}
    extra["requestBody"]["content"]["multipart/form-data"] = {"schema": form}
    return extra


def install(app: FastAPI) -> None:
    """Generate the document once, adding the hand-read body models to its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                              tags=app.openapi_tags)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODY_MODELS:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            doc["components"]["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "Account API key (avk_...)"}}
            doc["security"] = [{}, {"apiKey": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
