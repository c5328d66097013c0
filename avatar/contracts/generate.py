"""`POST /v1/avatar/generate` and `/v1/avatar/check`: their request and response models (API v1)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from avatar.catalog.backgrounds import BACKGROUNDS
from avatar.catalog.palettes import PALETTES
from avatar.catalog.platforms import BUILTIN_STYLES, PLATFORMS
from avatar.catalog.styles import CUSTOM_INTENSITY as DEFAULT_CUSTOM_INTENSITY, DEFAULT_INTENSITY
from avatar.contracts._fields import _known, _omitted_when_none
from avatar.engines.template import MAX_BORDER_WIDTH, SHAPES, OutputTemplate, parse_colour
from avatar.spec import AvatarSpec

API_VERSION = "v1"
TRANSPARENT = "transparent"       # no generated background: an RGBA PNG with the person's matte
BACKGROUND_CHOICES: tuple[str, ...] = (*BACKGROUNDS, TRANSPARENT)
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
    background: str | None = Field(None, description=f"Background override: {', '.join(BACKGROUNDS)}; or "
                                                     "transparent (an RGBA PNG with the person's alpha matte).")
    resolution: Literal["standard", "high"] = Field("standard", description="standard: 800x800, high: 1200x1200.")
    style_intensity: float | None = Field(None, ge=0.0, le=1.0, description="0..1; default per style.")
    external_id: str | None = Field(None, min_length=1, max_length=200, description="The caller's id of the person "
                                    "(e.g. employee id): on a team plan, one seat covers its avatars for a period.")
    shape: str = Field("square", description="square, circle or rounded (a rounded square); outside the shape the "
                                             "PNG is transparent. The thumbnail follows the same template.")
    border_color: str | None = Field(None, description="Border colour, #RGB or #RRGGBB (default white when "
                                                       "border_width is given).")
    border_width: int | None = Field(None, ge=0, le=MAX_BORDER_WIDTH,
                                     description="Border width in pixels of an 800 px avatar (scaled with the size; "
                                                 "default 8 when border_color is given).")

    quality: Literal["fast", "best"] = Field(
        "fast", description="Person matte (the cut-out's edge). fast: the deployment's default for this route (on "
                            "CPU deployments the fast matte for synchronous requests; asynchronous jobs, batches and "
                            "GPU deployments use the learned matte where the operator enabled it). best: the learned "
                            "matte here too, where enabled (crisper hair and shoulders; about 1 s more per avatar on "
                            "CPU). The avatar's PNG metadata names the matte used.")

    _platform = field_validator("platform")(lambda cls, v: _known("platform", v, sorted(PLATFORMS)))
    _palette = field_validator("palette")(lambda cls, v: _known("palette", v, PALETTES))
    _background = field_validator("background")(lambda cls, v: _known("background", v, BACKGROUND_CHOICES))
    _shape = field_validator("shape")(lambda cls, v: _known("shape", v, SHAPES))

    @field_validator("border_color")
    @classmethod
    def _border_color(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_colour(value)
            except ValueError as exc:
                raise PydanticCustomError("invalid_border_color", "border_color '{value}': {reason}",
                                          {"value": value[:40], "reason": str(exc)}) from None
        return value

    @field_validator("border_width", mode="before")
    @classmethod
    def _border_width(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError("invalid_field", "border_width must be a whole number of pixels")
        return value

    @field_validator("style")
    @classmethod
    def _style(cls, style: str | None) -> str | None:
        if style is not None and style not in BUILTIN_STYLES and not is_style_token(style):
            raise PydanticCustomError("unknown_style", "unknown style '{value}'; allowed: {allowed} or a custom "
                                      "style token (sty_...)", {"value": style, "allowed": ", ".join(BUILTIN_STYLES)})
        return style

    @model_validator(mode="after")
    def _check(self) -> "GenerateRequest":
        _one_source(self)
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

    @property
    def template(self) -> OutputTemplate:
        """Shape, border and transparency of the delivered PNG and its thumbnail."""
        width = self.border_width if self.border_width is not None else (8 if self.border_color else 0)
        colour = parse_colour(self.border_color) if self.border_color else None
        return OutputTemplate(self.shape, colour, width, self.background == TRANSPARENT)

    def spec(self, match_lighting: bool = False) -> AvatarSpec:
        """The resolved parameters every entry point builds its job from."""
        return AvatarSpec(style=self.resolved_style, platform=self.platform, size=self.size,
                          intensity=self.resolved_intensity, palette=self.palette, background=self.background,
                          template=self.template, match_lighting=match_lighting, external_id=self.external_id,
                          quality=self.quality)


def _one_source(req: "GenerateRequest | CheckRequest | BatchItem") -> None:
    """Model-level rules; the error's context names the field it is about (a model error has no location)."""
    given = [name for name in ("image", "image_url", "input_id") if getattr(req, name) is not None]
    if len(given) != 1:
        raise PydanticCustomError("invalid_image", "exactly one of 'image', 'image_url' and 'input_id' is required",
                                  {"field": "image"})
    if req.input_id is not None and req.cache_input:
        raise PydanticCustomError("invalid_cache_input", "'cache_input' applies to a new photo, not to 'input_id'",
                                  {"field": "cache_input"})


class CheckRequest(BaseModel):
    """Body of `POST /v1/avatar/check`: the pre-flight on an upload, no generation and no charge."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image: str | None = None
    image_url: str | None = None
    input_id: str | None = None
    cache_input: bool = False
    platform: str = "generic"

    _platform = field_validator("platform")(lambda cls, v: _known("platform", v, sorted(PLATFORMS)))

    @model_validator(mode="after")
    def _check(self) -> "CheckRequest":
        _one_source(self)
        return self


class ValidationWarning(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. multiple_faces, low_likeness.")
    message: str


class AttemptSummary(BaseModel):
    attempt: int
    style_intensity: float
    background: str | None = None
    passed: bool
    checks: dict[str, bool]
    likeness: float
    nsfw: float


class GenerateResponse(BaseModel):
    """Answer of `POST /v1/avatar/generate`: where the avatar is, and what a platform needs to decide on it."""

    avatar_url: str = Field(description="Signed, expiring URL of the PNG.")
    thumbnail_url: str = Field(description="Signed URL of the 100x100 thumbnail.")
    expires_at: str = Field(description="When the signed URLs expire (UTC, ISO 8601).")
    face_detected: bool
    face_count: int
    face_coverage: float = Field(0.0, description="Face box width over the photo's shorter side.")
    input_quality_score: float = Field(ge=0, le=1)
    likeness_score: float = Field(ge=0, le=1, description="Calibrated identity similarity of output and input.")
    validation_warnings: list[ValidationWarning]
    style: str
    style_version: str | None = Field(None, description="Custom style token version, null for built-in styles.")
    platform: str
    width: int
    height: int
    request_id: str
    attempts: int = 1
    attempt_history: list[AttemptSummary] = []
    billable: bool = True
    auto_accept: bool = False
    needs_review: bool = False
    checks: dict[str, bool] = {}
    latency_ms: float
    stage_ms: dict[str, float] = {}
    created_at: str
    input_id: str | None = _omitted_when_none("Set when cache_input was asked: re-use it as input_id for 24 h.")
    input_expires_at: str | None = _omitted_when_none("When input_id expires.")


class HeadAngle(BaseModel):
    yaw: float
    pitch: float
    roll: float


class FaceFound(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in pixels of the uploaded photo.")
    score: float = Field(description="Detector confidence.")
    coverage: float = Field(description="Box width over the photo's shorter side.")
    dominant: bool = Field(description="The face generate would use (largest, most central).")


class CheckResponse(BaseModel):
    """Answer of `POST /v1/avatar/check`: what generate would see in this photo; nothing generated or charged."""

    accepted: bool = Field(description="Generate would accept this photo.")
    face_detected: bool
    face_count: int
    face_coverage: float
    min_face_coverage: float
    head_angle: HeadAngle | None
    input_quality_score: float
    validation_warnings: list[ValidationWarning]
    width: int
    height: int
    platform: str
    request_id: str
    faces: list[FaceFound] = Field(default_factory=list, description="Every face found, dominant first.")
    input_id: str | None = _omitted_when_none("Set when cache_input was asked.")
    input_expires_at: str | None = _omitted_when_none("When input_id expires.")
