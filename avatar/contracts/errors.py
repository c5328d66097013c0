"""The one error shape of every 4xx/5xx answer, and how a pydantic validation problem becomes it (a 422 naming
its field)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avatar.contracts._fields import _omitted_when_none
from avatar.errors import InvalidRequest


def validation_error(err: dict[str, Any]) -> InvalidRequest:
    """One pydantic error as the API's 422: the field (a path such as `items[3].external_id`) from the error's
    location (or its context, for rules that span fields), a stable code from its type: a rule's own code, else
    `unknown_field` or `invalid_field`. A code never carries a field path: clients match codes and read `field`."""
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):   # where FastAPI found it, not the field
        loc = loc[1:]
    field = loc[0] if loc else (err.get("ctx") or {}).get("field")
    if len(loc) > 1 or (loc and loc[-1].isdigit()):   # inside a list of objects: items[3].external_id
        inner = [*loc[1:], *([(err.get("ctx") or {})["field"]] if "field" in (err.get("ctx") or {}) else [])]
        field = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in inner)
    kind = str(err.get("type", ""))
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        code = "unknown_field"
    elif kind.startswith(("unknown_", "invalid_")):
        code = kind
    else:
        code = "invalid_field" if field else "invalid_request"
    where = ".".join(loc) if loc else None
    text = message if where is None or message.startswith(f"unknown {where}") else f"{where}: {message}"
    return InvalidRequest(text, field=field, code=code)


def parse_request(model: type[BaseModel], payload: Any) -> Any:
    """Validate `payload` into `model`, turning the first validation problem into a 422 that names its field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object", field=None, code="invalid_body")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc.errors()[0]) from None


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. no_face_detected, payload_too_large.")
    message: str
    field: str | None = Field(description="The request field at fault, or null.")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer. Some errors add measurements (face_count, face_coverage, input_quality_score)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail
    request_id: str | None = _omitted_when_none("Set once the request was admitted.")
