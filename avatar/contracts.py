"""The versioned API contract (v1): request and response models of `POST /v1/avatar/generate` and `/v1/avatar/check`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from avatar.errors import InvalidRequest
from avatar.catalog.backgrounds import BACKGROUNDS
from avatar.catalog.palettes import PALETTES
from avatar.catalog.platforms import BUILTIN_STYLES, PLATFORMS, RESOLUTIONS
from avatar.catalog.styles import CUSTOM_INTENSITY as DEFAULT_CUSTOM_INTENSITY, DEFAULT_INTENSITY

API_VERSION = "v1"

# Custom style tokens as issued by the training service: `sty_` followed by 8-64 url-safe characters.
STYLE_TOKEN_RE = re.compile(r"^sty_[A-Za-z0-9_-]{8,64}$")


def is_style_token(style: str) -> bool:
    return bool(STYLE_TOKEN_RE.match(style))


class GenerateRequest(BaseModel):
    """Body of `POST /v1/avatar/generate`. Exactly one of `image` (base64 / data URI) and `image_url`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image: str | None = Field(None, description="Base64 or data URI of a JPEG, PNG or WebP photo, >= 200x200.")
    image_url: str | None = Field(None, description="http(s) URL of the photo; fetched with a size cap and timeout.")
    input_id: str | None = Field(None, description="A photo cached by an earlier request with cache_input (24 h).")
    cache_input: bool = Field(False, description="Keep the normalised photo for 24 h and answer its input_id.")
    style: str | None = Field(None, description="Built-in style or an account's custom style token; "
                                                "defaults to the platform's style.")
    platform: str = Field("generic", description="Target platform: sets resolution, framing and default style.")
    palette: str | None = Field(None, description=f"Colour palette override: {', '.join(PALETTES)}.")
    background: str | None = Field(None, description=f"Background override: {', '.join(BACKGROUNDS)}.")
    resolution: Literal["standard", "high"] = Field("standard", description="standard: 800x800, high: 1200x1200.")
    style_intensity: float | None = Field(None, ge=0.0, le=1.0, description="0..1; default per style.")

    @model_validator(mode="after")
    def _check(self) -> "GenerateRequest":
        _one_source(self)
        if self.platform not in PLATFORMS:
            raise ValueError(f"unknown platform {self.platform!r}; allowed: {', '.join(sorted(PLATFORMS))}")
        if self.style is not None and self.style not in BUILTIN_STYLES and not is_style_token(self.style):
            raise ValueError(f"unknown style {self.style!r}; allowed: {', '.join(BUILTIN_STYLES)} "
                             "or a custom style token (sty_...)")
        if self.palette is not None and self.palette not in PALETTES:
            raise ValueError(f"unknown palette {self.palette!r}; allowed: {', '.join(PALETTES)}")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; allowed: {', '.join(BACKGROUNDS)}")
        return self

    @property
    def resolved_style(self) -> str:
        return self.style or PLATFORMS[self.platform].default_style

    @property
    def resolved_intensity(self) -> float:
        if self.style_intensity is not None:
            return self.style_intensity
        return DEFAULT_INTENSITY.get(self.resolved_style, DEFAULT_CUSTOM_INTENSITY)

    @property
    def size(self) -> int:
        return PLATFORMS[self.platform].size_for(self.resolution)


def _one_source(req: "GenerateRequest | CheckRequest") -> None:
    given = [name for name in ("image", "image_url", "input_id") if getattr(req, name) is not None]
    if len(given) != 1:
        raise ValueError("exactly one of 'image', 'image_url' and 'input_id' is required")
    if req.input_id is not None and req.cache_input:
        raise ValueError("'cache_input' applies to a new photo, not to 'input_id'")


_FIELD_FOR_MESSAGE = (("platform", "platform"), ("style", "style"), ("palette", "palette"),
                      ("background", "background"), ("'image'", "image"))


def parse_request(model: type[BaseModel], payload: Any) -> Any:
    """Validate `payload` into `model`, turning the first validation problem into a 422 that names its field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object", field=None, code="invalid_body")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        field = loc[0] if loc else None
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if field is None:
            field = next((f for key, f in _FIELD_FOR_MESSAGE if key in message.split(";")[0]), None)
        code = "unknown_field" if err.get("type") == "extra_forbidden" else "invalid_" + (field or "request")
        if message.startswith("unknown "):
            code = "unknown_" + (field or "value")
        raise InvalidRequest(message if field is None or field in message else f"{field}: {message}",
                             field=field, code=code) from None


class CheckRequest(BaseModel):
    """Body of `POST /v1/avatar/check`: the pre-flight on an upload, no generation and no charge."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image: str | None = None
    image_url: str | None = None
    input_id: str | None = None
    cache_input: bool = False
    platform: str = "generic"

    @model_validator(mode="after")
    def _check(self) -> "CheckRequest":
        _one_source(self)
        if self.platform not in PLATFORMS:
            raise ValueError(f"unknown platform {self.platform!r}; allowed: {', '.join(sorted(PLATFORMS))}")
        return self


class Warning_(BaseModel):
    code: str
    message: str


class GenerateResponse(BaseModel):
    avatar_url: str
    thumbnail_url: str
    expires_at: str
    face_detected: bool
    face_count: int
    input_quality_score: float
    likeness_score: float
    validation_warnings: list[Warning_]
    style: str
    style_version: str | None = None
    platform: str
    width: int
    height: int
    request_id: str
    latency_ms: float
    created_at: str
    input_id: str | None = None
    input_expires_at: str | None = None
    attempts: int = 1
    attempt_history: list[dict] = []
    checks: dict[str, bool] = {}
    face_coverage: float = 0.0
    billable: bool = True
    auto_accept: bool = False
    needs_review: bool = False
    stage_ms: dict[str, float] = {}


__all__ = ["API_VERSION", "BACKGROUNDS", "PALETTES", "RESOLUTIONS", "GenerateRequest", "GenerateResponse",
           "CheckRequest", "parse_request", "is_style_token"]
