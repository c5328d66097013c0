"""Jobs: an asynchronous generate or a team batch, their progress, outputs and webhook deliveries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from avatar.catalog.palettes import PALETTES
from avatar.catalog.platforms import PLATFORMS
from avatar.contracts._fields import _known
from avatar.contracts.generate import BACKGROUND_CHOICES, GenerateRequest, GenerateResponse, _one_source
from avatar.engines.template import MAX_BORDER_WIDTH, SHAPES
from avatar.spec import AvatarSpec


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
