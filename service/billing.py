"""Credits and rate limits on the HTTP surface, over the shared database (`avatar.store.credits`,
`avatar.store.ratelimit`), so every replica on every node sees one balance and one bucket per account.

- Rate limits: `limit` spends a token of the caller's bucket (its account, or its client address for calls without a
  key when the operator limits those) before the route runs; over the limit it raises 429 with Retry-After.
- Credits: `hold` takes an avatar's price before any work (402 `insufficient_credits` when short); `settle` keeps it
  for a billable avatar and gives it back otherwise; `release` gives it back for a refused request.
Billing knows accounts, not HTTP: it answers its decisions (a `RateCheck`, a `Charge`) and the routes put them on
the answer's `X-RateLimit-*` and `X-Credits-*` headers (`service.account_headers`). Every database call runs in a
worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from avatar.billing import AccountsConfig, Plan
from avatar.contracts import is_style_token
from avatar.errors import InsufficientCredits, TooManyRequests
from avatar.job import AvatarJob
from avatar.store.credits import Charge, Ledger
from avatar.store.database import Database, open_database
from avatar.store.feedback import FeedbackStore
from avatar.store.ratelimit import RateDecision, RateLimiter

log = logging.getLogger("avatar.billing")

PLAN_CACHE_S = 30.0          # an account's plan is looked up at most this often per replica
STALE_SWEEP_S = 300.0        # how often a replica gives back holds of requests whose replica died


@dataclass(frozen=True)
class RateCheck:
    """A rate-limit decision as the answer's headers show it, and the 429 to answer when over the limit."""

    decision: RateDecision
    refusal: TooManyRequests | None = None


class Billing:
    """A replica's view of plans, credits and limits; the database opens on first use."""

    def __init__(self, database_url: str, config: AccountsConfig | None = None, plan_of: Any = None) -> None:
        self.database_url = database_url
        self.config = config or AccountsConfig()
        self.stale_after_s = 600.0
        self._plan_of = plan_of          # account id -> plan name (the account store's get_account)
        self._db: Database | None = None
        self._lock = threading.Lock()
        self._plans: dict[str, tuple[float, str | None]] = {}
        self._last_sweep = time.monotonic()

    @property
    def db(self) -> Database:
        if self._db is None:
            with self._lock:
                if self._db is None:
                    self._db = open_database(self.database_url)
        return self._db

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.db)

    @property
    def feedback(self) -> FeedbackStore:
        return FeedbackStore(self.db)

    # ------------------------------------------------------------ plans
    def plan(self, account: str) -> Plan:
        cached = self._plans.get(account)
        if cached is None or time.monotonic() - cached[0] > PLAN_CACHE_S:
            record = self._plan_of(account) if self._plan_of else None
            cached = (time.monotonic(), getattr(record, "plan", None))
            self._plans[account] = cached
        return self.config.plan(cached[1])

    # ------------------------------------------------------------ rate limits
    async def limit(self, account: str | None, client: str | None) -> RateCheck | None:
        """Spend one request of the caller's bucket (its account, else its client address); None when no limit
        applies. Over the limit, the check carries its 429."""
        if not self.config.rate_limits:
            return None
        if account is None:
            plan = self.config.anonymous
            if plan is None:
                return None
            bucket = f"anon:{client or 'unknown'}"
        else:
            plan = await asyncio.to_thread(self.plan, account)
            bucket = f"acct:{account}"
        decision = await asyncio.to_thread(RateLimiter(self.db).take, bucket, plan.rate_per_s, plan.burst)
        if decision.allowed:
            return RateCheck(decision)
        retry = max(1, int(decision.retry_after_s + 0.999))
        return RateCheck(decision, TooManyRequests(
            f"rate limit of {plan.requests_per_minute:g} requests per minute (bursts of {plan.burst}) reached; "
            f"retry in {retry} s", field="authorization", code="rate_limited", extra={"retry_after_s": retry}))

    # ------------------------------------------------------------ credits
    async def hold(self, account: str | None, job: AvatarJob, external_id: str | None = None) -> Charge | None:
        """Record the account's request and hold its price (0 when credits are off); 402 when the balance is short
        (its `credits_remaining` is the balance). Calls without an account are neither recorded nor charged."""
        if account is None:
            return None
        plan = await asyncio.to_thread(self.plan, account)
        price = plan.cost(job.style, is_style_token(job.style)) if self.config.credits else 0
        seat_price = plan.seat_credits if self.config.credits else None
        self._maybe_sweep()
        return await asyncio.to_thread(self.ledger.hold, account, job.request_id, job.style, job.platform, price,
                                       external_id, seat_price, plan.seat_s)

    async def job_terms(self, account: str, style: str, platform: str,
                        external_ids: list[str | None]) -> dict[str, Any]:
        """The credit terms a job's items are charged on when they run (fixed when the job is accepted); price 0 when
        credits are off, so each item is still recorded as the account's avatar, as a synchronous request is (its
        feedback needs that record). 402 before the job is accepted when the balance cannot cover every item that
        no active seat covers (each item still holds its own price when it runs, so concurrent jobs never
        overdraw)."""
        plan = await asyncio.to_thread(self.plan, account)
        if not self.config.credits:
            return {"price": 0, "seat_price": None, "seat_s": plan.seat_s}
        price = plan.cost(style, is_style_token(style))
        seated = {s.external_id for s in await asyncio.to_thread(self.ledger.seats, account)}
        needed = 0
        for external_id in external_ids:
            if plan.seat_credits is not None and external_id:
                needed += 0 if external_id in seated else plan.seat_credits
            else:
                needed += price
        balance = await asyncio.to_thread(self.ledger.balance, account)
        if balance < needed:
            raise InsufficientCredits(f"this job costs up to {needed} credits and the account has {balance}",
                                      field="credits", extra={"credits_required": needed,
                                                              "credits_remaining": balance})
        return {"price": price, "seat_price": plan.seat_credits, "seat_s": plan.seat_s}

    async def settle(self, charge: Charge | None, billable: bool) -> Charge | None:
        if charge is None:
            return None
        return await asyncio.to_thread(self.ledger.settle, charge.request_id, billable)

    async def release(self, charge: Charge | None) -> Charge | None:
        if charge is None:
            return None
        try:
            return await asyncio.to_thread(self.ledger.release, charge.request_id)
        except Exception:  # noqa: BLE001 - the stale-hold sweep gives it back later
            log.exception("could not release the hold of %s", charge.request_id)
            return charge

    def _maybe_sweep(self) -> None:
        if time.monotonic() - self._last_sweep < STALE_SWEEP_S:
            return
        self._last_sweep = time.monotonic()

        def sweep() -> None:
            try:
                released = self.ledger.release_stale(self.stale_after_s)
                if released:
                    log.warning("gave back the credits of %d requests whose replica stopped", released)
                self.ledger.prune(self.config.keep_requests_days * 86400.0)
            except Exception:  # noqa: BLE001 - retried at the next sweep
                log.exception("stale hold sweep failed")
        threading.Thread(target=sweep, name="stale-holds", daemon=True).start()
