"""Request bodies under a cap: FastAPI has no body limit, so every route that reads a body reads it through here.

JSON and multipart bodies are read from the stream and refused with 413 as soon as they pass the cap, whatever the
framing (a declared Content-Length is refused before reading). Multipart uploads stay in memory up to the cap:
Starlette's parser spools parts over 1 MiB to a temporary file, which would put client photos on disk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field as dc_field
from typing import Any

from pydantic import BaseModel

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from avatar.contracts import parse_request
from avatar.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json", "")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _refuse_declared(request: Request, max_bytes: int, field: str | None) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes}", field=field)


async def capped_stream(request: Request, max_bytes: int, field: str | None = None) -> AsyncIterator[bytes]:
    """The body's chunks, raising 413 the moment their total passes `max_bytes`."""
    _refuse_declared(request, max_bytes, field)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes", field=field)
        yield chunk


async def read_body(request: Request, max_bytes: int) -> bytes:
    return b"".join([chunk async for chunk in capped_stream(request, max_bytes)])


async def read_json(request: Request, max_bytes: int, *, empty_hint: str = "send a JSON object") -> dict[str, Any]:
    body = await read_body(request, max_bytes)
    if not body.strip():
        raise InvalidRequest(f"request body is empty; {empty_hint}", field=None, code="empty_body", status=400)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("request body is not valid JSON", field=None, code="invalid_json", status=400) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object", field=None, code="invalid_body", status=400)
    return payload


async def read_form(request: Request, max_bytes: int, max_files: int, field: str | None = None) -> FormData:
    """The multipart form, in memory, under the cap; a malformed body is a 400."""
    parser = MultiPartParser(request.headers, capped_stream(request, max_bytes, field), max_files=max_files,
                             max_fields=20, max_part_size=max_bytes)
    parser.spool_max_size = max_bytes   # file parts stay in memory (they are capped above)
    try:
        return await parser.parse()
    except (MultiPartException, KeyError, ValueError) as exc:
        message = getattr(exc, "message", type(exc).__name__)
        raise InvalidRequest(f"multipart body could not be parsed ({message})", field=None,
                             code="invalid_multipart", status=400) from None


@dataclass(frozen=True)
class BodyOf:
    """A route's request body: `model` as JSON or, with `file_field`, as a multipart form whose file parts are all
    named `file_field`. As a FastAPI dependency it answers a `BodyReader` (the body is read when the route asks:
    after admission, under the route's cap); `service.openapi` derives the route's request body from it."""

    model: type[BaseModel]
    file_field: str | None = None
    noun: str = "the file"              # what the file parts are, for the 422 on a part of another name
    cap_field: str | None = None        # the field a 413 names
    empty_hint: str = "send a JSON object"

    def __call__(self, request: Request) -> "BodyReader":
        return BodyReader(self, request)


@dataclass
class Payload:
    """A body as read: its fields (JSON object or form fields) and its file parts (file name, bytes), in order."""

    fields: dict[str, Any]
    files: list[tuple[str | None, bytes]] = dc_field(default_factory=list)
    multipart: bool = False


@dataclass
class BodyReader:
    body: BodyOf
    request: Request

    async def read(self, max_bytes: int, *, max_files: int = 1, json_max_bytes: int | None = None) -> Payload:
        """JSON object or (when the body takes files) multipart form, refused with 413 past the cap."""
        spec, ctype = self.body, content_type(self.request)
        if spec.file_field is not None:
            if ctype == "multipart/form-data":
                fields, files = await read_parts(self.request, max_bytes, max_files, spec.file_field, spec.noun,
                                                 spec.cap_field)
                return Payload(fields, files, multipart=True)
            if ctype not in JSON_TYPES:
                raise UnsupportedMediaType(f"content-type {ctype!r} is not supported; send application/json or "
                                           "multipart/form-data", field="content-type",
                                           code="unsupported_content_type")
        return Payload(await read_json(self.request, json_max_bytes or max_bytes, empty_hint=spec.empty_hint))

    def parse(self, fields: dict[str, Any]) -> Any:
        """The fields as the body's model; the first problem is a 422 naming its field."""
        return parse_request(self.body.model, fields)


async def read_parts(request: Request, max_bytes: int, max_files: int, file_field: str, noun: str,
                     cap_field: str | None = None) -> tuple[dict[str, Any], list[tuple[str | None, bytes]]]:
    """The one multipart-to-fields loop: text fields by name, `file_field` file parts in order; another file part
    is a 422."""
    form = await read_form(request, max_bytes, max_files=max_files, field=cap_field)
    fields: dict[str, Any] = {}
    files: list[tuple[str | None, bytes]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != file_field:
                    raise InvalidRequest(f"unexpected file part {key!r}; upload {noun} as {file_field!r}", field=key)
                files.append((value.filename, await value.read()))
            else:
                fields[key] = value
    finally:
        await form.close()
    return fields, files


async def read_photo_payload(body: BodyReader, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """JSON object or multipart form: the fields, and the `image` file part's bytes when one was uploaded."""
    payload = await body.read(max_bytes)
    if not payload.files:
        return payload.fields, None
    if "image" in payload.fields:
        raise InvalidRequest("send 'image' once, as a file part or a field", field="image")
    return {**payload.fields, "image": ""}, payload.files[0][1]   # placeholder: the bytes travel beside the fields
