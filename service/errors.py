"""One error type, one mapping to HTTP: every failure answers `{"error": {"code", "message", "field"}}` JSON.

`AvatarError` carries its own status; request validation errors take their field from the error's location; Ray's
failures are recognised by type (a stage's own error arrives wrapped in `RayTaskError`, whose `cause` is the original).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from avatar.contracts import validation_error
from avatar.errors import AvatarError, InvalidRequest, StageFailed

log = logging.getLogger("avatar.http")

RETRY_AFTER_S = 2
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(exc: AvatarError, request_id: str | None = None) -> JSONResponse:
    body = exc.to_body()
    if request_id:
        body["request_id"] = request_id
    retry = exc.extra.get("retry_after_s", RETRY_AFTER_S)
    headers = {"Retry-After": str(retry)} if exc.status in (429, 503, 504) else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


def as_avatar_error(exc: BaseException, timeout_s: float | None = None) -> AvatarError:
    """What to answer for `exc`: the stage's own AvatarError when there is one, else a 5xx by the failure's type."""
    found, cause = None, exc
    while cause is not None:   # RayTaskError(...).cause, nested when a chained stage's input failed: the
        if isinstance(cause, AvatarError):   # innermost is the original, with its own code and extra fields
            found = cause
        cause = getattr(cause, "cause", None)
    if found is not None:
        return found
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        limit = f" than {timeout_s:.0f} s" if timeout_s else ""
        return StageFailed(f"the request took longer{limit}", code="timeout", status=504)
    if isinstance(exc, BackPressureError):
        return StageFailed("the service is at capacity; retry shortly", code="overloaded", status=503)
    if isinstance(exc, (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError, RayActorError,
                        RequestCancelledError)):
        return StageFailed("a pipeline stage is restarting; retry shortly", code="stage_unavailable", status=503)
    return StageFailed("the avatar could not be generated because a pipeline stage failed", code="stage_failed")


def install(app: FastAPI) -> None:
    """The app's exception handlers: every answer, routing errors and crashes included, is the JSON error shape."""

    @app.exception_handler(AvatarError)
    async def _avatar(_: Request, exc: AvatarError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return error_response(validation_error(errors[0]) if errors else InvalidRequest("invalid request"))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = "no such route"
        error = AvatarError(message, code=_HTTP_CODES.get(exc.status_code, "http_error"), status=exc.status_code)
        response = error_response(error)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(as_avatar_error(exc))


__all__ = ["as_avatar_error", "error_response", "install"]
