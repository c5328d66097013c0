"""The account's resources: feedback on avatars, the usage export, plan and balance, the webhook secret."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


class WebhookSecret(BaseModel):
    secret: str = Field(description="Standard Webhooks secret (whsec_...): verify `webhook-signature` with it.")
    created_at: str
    previous_valid_until: str | None = Field(None, description="After a rotation, the old secret also signs "
                                                                "until then.")
