"""One error type, one mapping to HTTP: every failure answers `{"error": {"code", "message", "field"}}` JSON.

`AvatarError` carries its own status; request validation errors take their field from the error's location; Ray's
failures are recognised by type (a stage's own error arrives wrapped in `RayTaskError`, whose `cause` is the original).
An unexpected error in the pipeline is a failed stage (`stage_failed`); anywhere else it is `internal_error`. Either
way the answer carries a request id (body and `X-Request-Id`), the key to the log line with the details.
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
from avatar.errors import AvatarError, InsufficientCredits, InternalError, InvalidRequest, StageFailed
from avatar.job import AvatarJob
from service.account_headers import note_refused

log = logging.getLogger("avatar.http")

RETRY_AFTER_S = 2
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(exc: AvatarError, request_id: str | None = None) -> JSONResponse:
    body = exc.to_body()
    headers: dict[str, str] = {}
    if request_id:
        body["request_id"] = request_id
        headers["X-Request-Id"] = request_id
    if exc.status in (429, 503, 504):
        headers["Retry-After"] = str(exc.extra.get("retry_after_s", RETRY_AFTER_S))
    return JSONResponse(body, status_code=exc.status, headers=headers or None)


def as_avatar_error(exc: BaseException, timeout_s: float | None = None) -> AvatarError:
    """What to answer for `exc` raised by the pipeline: the stage's own AvatarError when there is one, else a 5xx by
    the failure's type; anything unrecognised is a failed stage."""
    return _recognised(exc, timeout_s) or StageFailed(
        "the avatar could not be generated because a pipeline stage failed", code="stage_failed")


def as_internal_error(exc: BaseException) -> AvatarError:
    """What to answer for `exc` escaping a route: a recognised failure keeps its answer, anything else is an internal
    error (no pipeline stage is involved, so none is blamed)."""
    return _recognised(exc, None) or InternalError(
        "the service failed to answer this request; quote the request id to its operator")


def _recognised(exc: BaseException, timeout_s: float | None) -> AvatarError | None:
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
    return None


def install(app: FastAPI) -> None:
    """The app's exception handlers: every answer, routing errors and crashes included, is the JSON error shape."""

    @app.exception_handler(AvatarError)
    async def _avatar(request: Request, exc: AvatarError) -> JSONResponse:
        if isinstance(exc, InsufficientCredits):   # a 402 shows the balance it found
            note_refused(request, exc)
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
        request_id = AvatarJob.new_request_id()
        log.error("request %s: unhandled error on %s %s", request_id, request.method, request.url.path,
                  exc_info=exc)
        return error_response(as_internal_error(exc), request_id)


__all__ = ["as_avatar_error", "as_internal_error", "error_response", "install"]
