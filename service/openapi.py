"""What FastAPI cannot infer for the OpenAPI document: bodies read through `service.http.BodyOf` (JSON *or*
multipart, under a cap).

A route declares its body once, as a `BodyOf` dependency carrying the pydantic model that validates it; the
document's request body (JSON, and the multipart form when the body takes files) is derived from that dependency
for every route here, and the models are added to the document's components.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from avatar.contracts import ErrorResponse
from service.http import BodyOf

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (400, "Malformed body"), (401, "Missing or invalid API key"),
        (402, "Not enough credits for this avatar (nothing was done)"), (404, "Unknown id or style"),
        (413, "Too large"), (415, "Unsupported content type or image format"),
        (422, "Invalid field, no face, or face too small"),
        (429, "Over one of the account's limits (rate, concurrent requests, jobs, cached inputs); see Retry-After"),
        (503, "Overloaded or a stage is restarting; see Retry-After"),
        (504, "Timed out"))}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def request_body(body: BodyOf) -> dict[str, Any]:
    """The OpenAPI request body of a `BodyOf`: its model as JSON, and as a form whose file field is binary."""
    content: dict[str, Any] = {"application/json": {"schema": _ref(body.model.__name__)}}
    if body.file_field is not None:
        props = dict(body.model.model_json_schema(ref_template="#/components/schemas/{model}").get("properties", {}))
        props[body.file_field] = {"type": "string", "format": "binary", "description": f"{body.noun} (file parts)"}
        title = body.model.__name__.removesuffix("Request") + "Form"
        content["multipart/form-data"] = {"schema": {"title": title, "type": "object", "properties": props}}
    return {"required": True, "content": content}


def _bodies(dependant: Dependant) -> list[BodyOf]:
    found = [d.call for d in dependant.dependencies if isinstance(d.call, BodyOf)]
    return found + [b for d in dependant.dependencies for b in _bodies(d)]


def _add_bodies(doc: dict[str, Any], routers: Sequence[APIRouter]) -> None:
    """Each route's `BodyOf` as its request body, and its model in the components (the routers' own routes:
    their paths carry the prefix, and the app adds none)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for body in _bodies(route.dependant)[:1]:
            for method in route.methods:
                doc["paths"][route.path_format][method.lower()]["requestBody"] = request_body(body)
            schema = body.model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[body.model.__name__] = schema


def install(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Generate the document once, adding the hand-read body models to its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                              tags=app.openapi_tags)
            _add_bodies(doc, routers)
            doc["components"]["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "Account API key (avk_...)"}}
            doc["security"] = [{}, {"apiKey": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
