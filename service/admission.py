"""Admission of pipeline work in an ingress replica: a bounded number of requests run, a bounded line waits a bounded
time, and everything past that is refused at once (503, or 429 for an account over its own share) with
`Retry-After`, instead of queueing for longer than the request deadline.

Serve's own backpressure (`max_ongoing_requests` / `max_queued_requests`) counts every route of the ingress alike, so
health checks and file downloads would be refused with the expensive routes; this gate counts only the pipeline.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import BaseModel, ConfigDict, Field

from avatar.errors import Overloaded, TooManyRequests


class AdmissionConfig(BaseModel):
    """`AvatarIngress.user_config.admission`: per ingress replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_running: int = Field(8, ge=1, description="pipeline requests in flight; about what the stages can overlap")
    max_waiting: int = Field(4, ge=0, description="requests waiting for a turn; more are refused at once")
    max_wait_s: float = Field(2.0, gt=0, description="longest wait for a turn before a 503")
    per_account: int = Field(6, ge=1, description="running + waiting requests of one API key; more answer 429")
    retry_after_s: int = Field(2, ge=1)


class Admission:
    """One per ingress replica; `async with admission.turn(account):` around the pipeline call. Turns are handed to
    waiters in arrival order."""

    def __init__(self, config: AdmissionConfig = AdmissionConfig()) -> None:
        self.config = config
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.by_account: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def turn(self, account: str | None) -> AsyncIterator[None]:
        await self.acquire(account)
        try:
            yield
        finally:
            self.release(account)

    async def acquire(self, account: str | None) -> None:
        """A turn for `account`, at once, after a bounded wait, or Overloaded / TooManyRequests."""
        cfg = self.config
        if account is not None and self.by_account[account] >= cfg.per_account:
            raise TooManyRequests(f"this API key already has {cfg.per_account} requests in progress; retry after "
                                  "one finishes", code="too_many_requests",
                                  extra={"retry_after_s": cfg.retry_after_s})
        if account is not None:
            self.by_account[account] += 1
        try:
            await self._acquire(cfg)
        except BaseException:
            self._forget(account)
            raise

    def release(self, account: str | None) -> None:
        self._release()
        self._forget(account)

    def _forget(self, account: str | None) -> None:
        if account is not None:
            self.by_account[account] -= 1
            if self.by_account[account] <= 0:
                del self.by_account[account]

    async def _acquire(self, cfg: AdmissionConfig) -> None:
        if self.running < cfg.max_running and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= cfg.max_waiting:
            raise _overloaded(cfg)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), cfg.max_wait_s)
        except TimeoutError:
            self._abandon(turn)
            raise _overloaded(cfg) from None
        except asyncio.CancelledError:
            self._abandon(turn)
            raise

    def _abandon(self, turn: asyncio.Future[None]) -> None:
        """A waiter gave up: a turn handed to it just then goes to the next waiter."""
        if turn.done() and not turn.cancelled():
            self._release()
            return
        turn.cancel()
        if turn in self._waiters:
            self._waiters.remove(turn)

    def _release(self) -> None:
        """Hand the turn to the first waiter still waiting, or give it back."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1


def _overloaded(cfg: AdmissionConfig) -> Overloaded:
    return Overloaded("the service is at capacity; retry shortly", code="overloaded",
                      extra={"retry_after_s": cfg.retry_after_s})
