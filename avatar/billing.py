"""Plans: what an avatar costs an account in credits, and how fast it may call. The operator defines them in the
ingress `user_config` (`accounts:` in serve_config.yaml); an account names its plan (`avatar accounts plan`), or gets
the default one.

Only a billable avatar (one that passed the quality gate) is charged; a refused request or an unbilled avatar costs
nothing. A team plan sells *seats*: the first billable avatar of an `external_id` (an employee) costs `seat_credits`
and covers that id's avatars for `seat_days`, so regenerating an employee inside the period is free.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: float = Field(120.0, gt=0, description="sustained rate of the account's token bucket")
    burst: int = Field(20, ge=1, description="bucket size: requests allowed at once after a quiet spell")
    avatar_credits: int = Field(1, ge=0, description="credits of a billable avatar in a built-in style")
    style_credits: dict[str, int] = Field(default_factory=dict, description="per built-in style, instead of "
                                                                            "avatar_credits")
    custom_style_credits: int = Field(2, ge=0, description="credits of a billable avatar in a custom style token")
    seat_credits: int | None = Field(None, ge=0, description="team plan: credits of a seat (one external_id for "
                                                             "seat_days); unset: every avatar is charged")
    seat_days: float = Field(30.0, gt=0)

    def cost(self, style: str, custom: bool) -> int:
        """Credits of one billable avatar in `style` (without a seat)."""
        if custom:
            return self.custom_style_credits
        return self.style_credits.get(style, self.avatar_credits)

    @property
    def seat_s(self) -> float | None:
        return self.seat_days * 86400.0 if self.seat_credits is not None else None

    @property
    def rate_per_s(self) -> float:
        return self.requests_per_minute / 60.0


def _default_plans() -> dict[str, Plan]:
    return {"standard": Plan(), "team": Plan(requests_per_minute=600, burst=60, seat_credits=10)}


class AccountsConfig(BaseModel):
    """`AvatarIngress.user_config.accounts`: credits, rate limits and plans."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credits: bool = Field(False, description="charge credits for billable avatars; 402 when an account has too few")
    rate_limits: bool = Field(True, description="per-account token buckets in the shared database")
    default_plan: str = "standard"
    plans: dict[str, Plan] = Field(default_factory=_default_plans)
    keep_requests_days: float = Field(90.0, gt=0, description="how long a delivered avatar takes feedback (its "
                                                               "record in the database; the usage log keeps billing)")
    anonymous: Plan | None = Field(None, description="rate of calls without an API key, per client address; unset: "
                                                     "not limited (production sets require_api_key instead)")

    @model_validator(mode="after")
    def _default_exists(self) -> AccountsConfig:
        if self.default_plan not in self.plans:
            raise ValueError(f"default_plan {self.default_plan!r} is not one of plans: {', '.join(self.plans)}")
        return self

    def plan(self, name: str | None) -> Plan:
        """The named plan; an unknown or unset name gets the default plan (a plan removed from the config must not
        lock its accounts out)."""
        return self.plans.get(name or self.default_plan) or self.plans[self.default_plan]
