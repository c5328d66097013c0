"""Errors that map to one HTTP answer each: `{"error": {"code", "message", "field"}}` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any


class AvatarError(Exception):
    """A failure the caller can act on. `extra` is merged into the JSON body (e.g. `face_count`)."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 status: int | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = dict(extra or {})

    def __reduce__(self):  # keep field/code/status/extra when the error crosses a process boundary
        return (_rebuild, (type(self), self.message, self.field, self.code, self.status, self.extra))

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": {"code": self.code, "message": self.message, "field": self.field}}
        body.update(self.extra)
        return body


def _rebuild(cls: type[AvatarError], message: str, field: str | None, code: str, status: int,
             extra: dict[str, Any]) -> AvatarError:
    return cls(message, field=field, code=code, status=status, extra=extra)


class InvalidRequest(AvatarError):
    status, code = 422, "invalid_request"


class UnsupportedMediaType(AvatarError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(AvatarError):
    status, code = 413, "payload_too_large"


class NoFaceDetected(AvatarError):
    status, code = 422, "no_face_detected"


class FetchRefused(AvatarError):
    """The image URL points somewhere the service must not reach, or could not be fetched."""

    status, code = 422, "image_url_refused"


class NotFound(AvatarError):
    status, code = 404, "not_found"


class Unauthorized(AvatarError):
    status, code = 401, "unauthorized"


class Forbidden(AvatarError):
    status, code = 403, "forbidden"


class TooManyRequests(AvatarError):
    """The caller is over one of its own limits (concurrent requests, training jobs, cached inputs): retry later."""

    status, code = 429, "too_many_requests"


class Overloaded(AvatarError):
    """The service is at capacity and refuses new work at once rather than queueing it past its deadline."""

    status, code = 503, "overloaded"


class ModelUnavailable(AvatarError):
    """A model component could not be located or loaded (a start-up error, never a request error)."""

    status, code = 503, "model_unavailable"


class StageFailed(AvatarError):
    """A pipeline stage failed on a valid request; the service stays up and answers 500/503."""

    status, code = 500, "stage_failed"


class InternalError(AvatarError):
    """An unexpected failure outside the pipeline (a bug, a broken dependency): the answer names no internals, only a
    request id that the operator finds in the service's log."""

    status, code = 500, "internal_error"


class InsufficientCredits(AvatarError):
    """The account's balance is below the avatar's price: refused before any work (402)."""

    status, code = 402, "insufficient_credits"
