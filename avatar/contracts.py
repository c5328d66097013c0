"""The versioned API contract (v1): request and response models of `POST /v1/avatar/generate` and `/v1/avatar/check`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from avatar.engines.template import MAX_BORDER_WIDTH, SHAPES, OutputTemplate, parse_colour
from avatar.errors import InvalidRequest
from avatar.catalog.backgrounds import BACKGROUNDS
from avatar.catalog.palettes import PALETTES
from avatar.catalog.platforms import BUILTIN_STYLES, PLATFORMS, RESOLUTIONS
from avatar.catalog.styles import CUSTOM_INTENSITY as DEFAULT_CUSTOM_INTENSITY, DEFAULT_INTENSITY
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
                          template=self.template, match_lighting=match_lighting, external_id=self.external_id)


def _known(name: str, value: str | None, allowed) -> str | None:
    if value is not None and value not in allowed:
        raise PydanticCustomError(f"unknown_{name}", "unknown {name} '{value}'; allowed: {allowed}",
                                  {"name": name, "value": value, "allowed": ", ".join(allowed)})
    return value


def _one_source(req: "GenerateRequest | CheckRequest | BatchItem") -> None:
    """Model-level rules; the error's context names the field it is about (a model error has no location)."""
    given = [name for name in ("image", "image_url", "input_id") if getattr(req, name) is not None]
    if len(given) != 1:
        raise PydanticCustomError("invalid_image", "exactly one of 'image', 'image_url' and 'input_id' is required",
                                  {"field": "image"})
    if req.input_id is not None and req.cache_input:
        raise PydanticCustomError("invalid_cache_input", "'cache_input' applies to a new photo, not to 'input_id'",
                                  {"field": "cache_input"})


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


def _omitted_when_none(description: str) -> Any:
    return Field(None, description=description, exclude_if=lambda value: value is None)


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


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. no_face_detected, payload_too_large.")
    message: str
    field: str | None = Field(description="The request field at fault, or null.")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer. Some errors add measurements (face_count, face_coverage, input_quality_score)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail
    request_id: str | None = _omitted_when_none("Set once the request was admitted.")


class StyleJobRequest(BaseModel):
    """Body of `POST /v1/styles` as JSON (examples already in object storage); uploads send `images` file parts."""

    model_config = ConfigDict(extra="forbid")

    images_uri: str | None = Field(None, description="Folder of 50-200 examples, in a location the operator opened.")
    name: str | None = Field(None, max_length=200, description="A label for the style.")
    epochs: int | None = Field(None, ge=1, le=50)
    base_style: str | None = Field(None, description=f"Built-in style it starts from: {', '.join(BUILTIN_STYLES)}.")


class StyleView(BaseModel):
    """A custom style as the API shows it: its training job's progress and, once ready, its token."""

    model_config = ConfigDict(extra="allow")

    job_id: str | None
    token_id: str | None = Field(description="Usable as `style` once ready.")
    name: str | None
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    ready: bool
    version: str | None
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    eta_s: float | None = None
    examples: int | None = None
    error: str | None = None
    base_style: str | None = None
    trained_at: str | None = None
    status_url: str | None = _omitted_when_none("Where to poll the job.")


class StylesList(BaseModel):
    styles: list[StyleView]
    jobs: list[StyleView] = Field(description="Jobs that have not produced a style yet.")


__all__ = ["API_VERSION", "BACKGROUNDS", "PALETTES", "RESOLUTIONS", "GenerateRequest", "GenerateResponse",
           "CheckRequest", "CheckResponse", "ErrorResponse", "parse_request", "is_style_token", "validation_error"]


# ---------------------------------------------------------------- accounts: feedback, usage, balance
REQUEST_ID_RE = re.compile(r"^req_[A-Za-z0-9_-]{1,64}$")


class FeedbackRequest(BaseModel):
    """Body of `POST /v1/avatar/{request_id}/feedback`: did the user keep the avatar?"""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    verdict: Literal["accepted", "declined"] = Field(description="accepted: the user kept it; declined: they did not.")
    reason: str | None = Field(None, min_length=1, max_length=500, description="Why, in a few words (optional).")


class FeedbackView(BaseModel):
    request_id: str
    verdict: Literal["accepted", "declined"]
    reason: str | None = None
    style: str
    platform: str
    recorded_at: float = Field(description="epoch seconds")


class UsageRow(BaseModel):
    request_id: str
    created_at: str = Field(description="ISO 8601, UTC")
    style: str
    platform: str
    external_id: str | None = None
    outcome: str = Field(description="delivered, or the error code of a refused request")
    billable: bool
    credits: int = Field(description="credits charged (0: unbilled, refused, covered by a seat or no credits)")
    attempts: int
    latency_ms: float


class UsageSummary(BaseModel):
    requests: int
    delivered: int
    billable: int
    credits: int


class UsageExport(BaseModel):
    """`GET /v1/usage`: the account's rows of the usage log in [from, to), oldest first."""

    account_id: str
    from_: str = Field(alias="from")
    to: str
    rows: list[UsageRow]
    summary: UsageSummary
    truncated: bool = Field(description="more rows matched than `limit`; ask for a shorter range")

    model_config = ConfigDict(populate_by_name=True)


class AccountView(BaseModel):
    """`GET /v1/account`: the caller's plan, balance and limits."""

    account_id: str
    name: str
    plan: str
    credits_enabled: bool
    balance: int
    requests_per_minute: float
    burst: int
    prices: dict[str, int] = Field(description="credits per billable avatar: each built-in style, and 'custom'")
    seat_credits: int | None = None
    seat_days: float | None = None
    active_seats: int
# ---------------------------------------------------------------- jobs, batches, webhooks
WEBHOOK_EVENT_NAMES: tuple[str, ...] = ("started", "item_completed", "completed", "failed", "canceled")
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled")


class WebhookFields(BaseModel):
    """Where and for which events a job's progress is POSTed (Standard Webhooks, signed with the account's secret)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    webhook_url: str | None = Field(None, max_length=2048, description="https URL that receives the job's events.")
    webhook_events: list[str] | None = Field(None, max_length=len(WEBHOOK_EVENT_NAMES), description=(
        f"Events to send: {', '.join(WEBHOOK_EVENT_NAMES)}; default completed, failed, canceled."))


class BatchItem(BaseModel):
    """One team member: the caller's id for them and exactly one photo source."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: str = Field(min_length=1, max_length=200, description="The caller's id (e.g. employee id); names "
                                                                       "the member's file in the ZIP.")
    image: str | None = Field(None, description="Base64 or data URI of the photo.")
    image_url: str | None = Field(None, description="http(s) URL of the photo.")
    input_id: str | None = Field(None, description="A photo cached by an earlier request (cache_input).")
    cache_input: bool = False

    @model_validator(mode="after")
    def _check(self) -> "BatchItem":
        _one_source(self)
        return self


class BatchRequest(WebhookFields):
    """Body of `POST /v1/batches`: the whole team in one look (one style, platform, palette and background)."""

    items: list[BatchItem] = Field(min_length=1, description="The members; at most the service's batch limit "
                                                             "(500 by default). External ids must be unique.")
    style: str | None = Field(None, description="Built-in style or the account's custom style token.")
    platform: str = "generic"
    palette: str | None = Field(None, description="Default: the style's palette, the same for everyone.")
    background: str | None = Field(None, description="Default: the style's background, the same for everyone.")
    resolution: Literal["standard", "high"] = "standard"
    style_intensity: float | None = Field(None, ge=0.0, le=1.0)
    shape: str = Field("square", description="square, circle or rounded, for everyone.")
    border_color: str | None = Field(None, description="Border colour, #RGB or #RRGGBB, for everyone.")
    border_width: int | None = Field(None, ge=0, le=MAX_BORDER_WIDTH)
    match_lighting: bool = Field(True, description="Bring every member's photo to one exposure and white balance.")

    _platform = field_validator("platform")(lambda cls, v: _known("platform", v, sorted(PLATFORMS)))
    _palette = field_validator("palette")(lambda cls, v: _known("palette", v, PALETTES))
    _background = field_validator("background")(lambda cls, v: _known("background", v, BACKGROUND_CHOICES))
    _shape = field_validator("shape")(lambda cls, v: _known("shape", v, SHAPES))
    _style = field_validator("style")(lambda cls, v: GenerateRequest._style(v))
    _border_color = field_validator("border_color")(lambda cls, v: GenerateRequest._border_color(v))
    _border_width = field_validator("border_width", mode="before")(lambda cls, v: GenerateRequest._border_width(v))

    @model_validator(mode="after")
    def _unique(self) -> "BatchRequest":
        seen: set[str] = set()
        for i, item in enumerate(self.items):
            if item.external_id in seen:
                raise PydanticCustomError("duplicate_external_id", "items[{i}].external_id '{value}' is used twice",
                                          {"i": i, "value": item.external_id, "field": "items"})
            seen.add(item.external_id)
        return self

    def look(self) -> GenerateRequest:
        """The generate parameters every member shares, as a generate request (its photo source is a placeholder:
        each member brings its own)."""
        return GenerateRequest(input_id="in_" + "x" * 22, style=self.style, platform=self.platform,
                               palette=self.palette, background=self.background, resolution=self.resolution,
                               style_intensity=self.style_intensity, shape=self.shape,
                               border_color=self.border_color, border_width=self.border_width)

    def spec(self) -> AvatarSpec:
        """The look every member's job is built from (each member's external id is its item's)."""
        return self.look().spec(match_lighting=self.match_lighting)


class JobProgress(BaseModel):
    total: int
    done: int = Field(description="Items finished, successfully or not.")
    succeeded: int
    failed: int = Field(description="Items that failed (not billed); their error codes are a single generate's.")
    canceled: int = 0
    running: int = 0
    queued: int = 0
    eta_s: float | None = Field(None, description="Estimated seconds to completion, from the items done so far.")


class WebhookAttempt(BaseModel):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float | None


class WebhookDelivery(BaseModel):
    id: str = Field(description="The message's `webhook-id`, the same on every retry.")
    event: str
    state: Literal["pending", "delivered", "failed"]
    next_attempt_at: str | None = None
    attempts: list[WebhookAttempt]


class JobWebhook(BaseModel):
    url: str
    events: list[str]
    deliveries: list[WebhookDelivery]


class BatchOutput(BaseModel):
    """A finished batch's results, all through signed, expiring URLs."""

    results_url: str = Field(description="JSON: every item with its result or error.")
    zip_url: str = Field(description="ZIP of the avatars as <external_id>.png.")
    contact_sheet_url: str = Field(description="PNG grid of the team with names.")
    expires_at: str
    succeeded: int
    failed: int
    billable: int = Field(description="Avatars charged for: failed items never are.")


class JobView(BaseModel):
    """A job as `GET /v1/jobs/{job_id}` shows it."""

    job_id: str
    kind: Literal["generate", "batch"]
    state: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="When the job and its outputs are deleted.")
    status_url: str
    progress: JobProgress
    output: GenerateResponse | BatchOutput | None = Field(None, description=(
        "generate: exactly the body of a synchronous generate; batch: the result URLs."))
    error: dict[str, Any] | None = Field(None, description="The error body of a failed job (as a synchronous "
                                                           "call would answer it).")
    webhook: JobWebhook | None = None


class JobsList(BaseModel):
    jobs: list[JobView]


class BatchItemView(BaseModel):
    index: int
    external_id: str | None
    state: Literal["queued", "running", "succeeded", "failed", "canceled"]
    billable: bool
    result: GenerateResponse | None = Field(None, description="The member's generate answer.")
    error: dict[str, Any] | None = Field(None, description="The member's error body, with a single generate's code.")


class BatchItemsList(BaseModel):
    items: list[BatchItemView]
    offset: int
    total: int


class WebhookSecret(BaseModel):
    secret: str = Field(description="Standard Webhooks secret (whsec_...): verify `webhook-signature` with it.")
    created_at: str
    previous_valid_until: str | None = Field(None, description="After a rotation, the old secret also signs "
                                                                "until then.")


__all__ = ["API_VERSION", "BACKGROUNDS", "PALETTES", "RESOLUTIONS", "BatchRequest", "GenerateRequest",
           "GenerateResponse", "JobView", "WebhookFields", "CheckRequest", "CheckResponse", "ErrorResponse",
           "parse_request", "is_style_token", "validation_error"]
