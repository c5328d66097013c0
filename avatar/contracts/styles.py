"""`/v1/styles`: training a custom style, and a style as the API shows it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from avatar.catalog.platforms import BUILTIN_STYLES
from avatar.contracts._fields import _omitted_when_none


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
