"""HTTP plumbing of the ingress: bounded body reading, JSON/multipart parsing, JSON error answers, the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from avatar.contracts import API_VERSION, CheckRequest, GenerateRequest, GenerateResponse
from avatar.errors import AvatarError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType


def error_response(exc: AvatarError, request_id: str | None = None) -> JSONResponse:
    body = exc.to_body()
    if request_id:
        body["request_id"] = request_id
    headers = {"Retry-After": "2"} if exc.status in (503, 504) else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refusing more than `max_bytes` before reading it all (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes}", field=None)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes", field=None)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_payload(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """JSON object or multipart form: the fields, and the `image` file part's bytes when one was uploaded."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _parse_multipart(request, max_bytes)
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type {ctype!r} is not supported; send application/json or "
                                   "multipart/form-data", field="content-type", code="unsupported_content_type")
    body = await read_body(request, max_bytes)
    if not body.strip():
        raise InvalidRequest("request body is empty; send a JSON object with 'image' or 'image_url'",
                             field=None, code="empty_body", status=400)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON", field=None, code="invalid_json", status=400) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object", field=None, code="invalid_body", status=400)
    return payload, None


async def read_form(request: Request, max_bytes: int, max_files: int, field: str | None = None) -> Any:
    """The multipart form, refusing a declared body over `max_bytes` first; a malformed body is a 400."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes}", field=field)
    try:
        return await request.form(max_files=max_files, max_fields=20, max_part_size=max_bytes)
    except Exception as exc:  # noqa: BLE001 - any multipart parser failure is the client's malformed body
        raise InvalidRequest(f"multipart body could not be parsed ({type(exc).__name__})", field=None,
                             code="invalid_multipart", status=400) from None


async def _parse_multipart(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    form = await read_form(request, max_bytes, max_files=1)
    fields: dict[str, Any] = {}
    upload: bytes | None = None
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            if key != "image":
                raise InvalidRequest(f"unexpected file part {key!r}; upload the photo as 'image'", field=key)
            upload = await value.read()
            if len(upload) > max_bytes:
                raise PayloadTooLarge(f"image is larger than {max_bytes} bytes", field="image")
        else:
            fields[key] = value
    if upload is not None:
        if "image" in fields:
            raise InvalidRequest("send 'image' once, as a file part or a field", field="image")
        fields["image"] = ""   # placeholder: the bytes travel beside the validated fields
    return fields, upload


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 document of the public routes, generated from the contract's pydantic models."""
    schemas = {m.__name__: m.model_json_schema(ref_template="#/components/schemas/{model}")
               for m in (GenerateRequest, GenerateResponse, CheckRequest)}
    for schema in list(schemas.values()):
        schemas.update(schema.pop("$defs", {}))
    error = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": ["string", "null"]}}}}}
    schemas["Error"] = error

    def ref(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    errors = {str(c): {"description": d, **ref("Error")} for c, d in (
        (400, "Malformed body"), (401, "Missing or invalid API key"), (404, "Unknown custom style"),
        (413, "Too large"), (415, "Not JPEG, PNG or WebP"), (422, "Invalid field, no face or face too small"),
        (503, "Overloaded or a stage is unavailable"), (504, "Timed out"))}
    multipart = {"multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"}, "style": {"type": "string"},
        "platform": {"type": "string"}, "palette": {"type": "string"}, "background": {"type": "string"},
        "resolution": {"type": "string"}, "style_intensity": {"type": "number"}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Avatar generation service", "version": API_VERSION},
        "paths": {
            "/v1/avatar/generate": {"post": {
                "summary": "Turn a photo into a platform-ready avatar",
                "requestBody": {"required": True, "content": {**ref("GenerateRequest")["content"], **multipart}},
                "responses": {"200": {"description": "The avatar", **ref("GenerateResponse")}, **errors}}},
            "/v1/avatar/check": {"post": {
                "summary": "Pre-flight checks of an upload (no generation, no charge)",
                "requestBody": {"required": True, **ref("CheckRequest")},
                "responses": {"200": {"description": "Face and quality report"}, **errors}}},
            "/v1/files/{key}": {"get": {
                "summary": "A stored avatar or thumbnail behind a signed, expiring URL",
                "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                               {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}},
                              "403": {"description": "Bad or expired signature", **ref("Error")}}}},
            "/v1/styles": {
                "post": {"summary": "Train a custom style from 50-200 example images (Bearer API key)",
                         "requestBody": {"required": True, "content": {
                             "multipart/form-data": {"schema": {"type": "object", "properties": {
                                 "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                 "name": {"type": "string"}, "epochs": {"type": "integer"},
                                 "base_style": {"type": "string"}}}},
                             "application/json": {"schema": {"type": "object", "properties": {
                                 "images_uri": {"type": "string"}, "name": {"type": "string"},
                                 "epochs": {"type": "integer"}}}}}},
                         "responses": {"202": {"description": "Job accepted: job id, token id, status URL"},
                                       **errors}},
                "get": {"summary": "The account's styles and unfinished jobs",
                        "responses": {"200": {"description": "Styles and jobs"}, **errors}}},
            "/v1/styles/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "A job id or a style token"}],
                "get": {"summary": "Status and progress (state, epoch, loss, ETA)",
                        "responses": {"200": {"description": "Status"}, **errors}},
                "delete": {"summary": "Remove a style (and cancel its job)",
                           "responses": {"204": {"description": "Removed"}, **errors}}},
            "/v1/stats": {"get": {"summary": "This ingress replica's request counts and gate pass rates",
                                  "responses": {"200": {"description": "Counts"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        },
        "components": {"schemas": schemas, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "Account API key (avk_...)"}}},
        "security": [{}, {"apiKey": []}],
    }
