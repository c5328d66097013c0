"""Admission of pipeline work in an ingress replica: a bounded number of requests run, a line waits only as long as
the measured service rate says it will, and everything past that is refused at once (503, or 429 for an account over
its own share) with `Retry-After`, instead of queueing for longer than the request deadline.

The wait is decided from what the pipeline actually does, not from a fixed time: the gate keeps a moving average of
how long a turn lasts (`service_time_s`). With every slot busy, turns end about `max_running / service_time_s` times
a second (Little's law), so the n-th in line expects to wait `n * service_time_s / max_running`. A request whose
expected wait is over `max_wait_s` is refused on arrival, with that wait as its `Retry-After`; one admitted to the
line waits at most `max_wait_s`. Refusals therefore cost no waiting, where a fixed wait made every refused waiter
wait out its whole `max_wait_s` first.

Serve's own backpressure (`max_ongoing_requests` / `max_queued_requests`) counts every route of the ingress alike, so
health checks and file downloads would be refused with the expensive routes; this gate counts only the pipeline.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from avatar.errors import Overloaded, TooManyRequests

Waiter = Callable[[Awaitable[Any], float], Awaitable[Any]]


class AdmissionConfig(BaseModel):
    """`AvatarIngress.user_config.admission`: per ingress replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_running: int = Field(8, ge=1, description="pipeline requests in flight; about what the stages can overlap")
    max_waiting: int = Field(4, ge=0, description="longest line, whatever the estimate says")
    max_wait_s: float = Field(2.0, gt=0, description="longest expected wait for a turn (longer: 503 at once), and the "
                                                     "longest a request in the line waits")
    per_account: int = Field(6, ge=1, description="running + waiting requests of one API key; more answer 429")
    retry_after_s: int = Field(2, ge=1, description="Retry-After until a turn's length has been measured, and of 429")
    max_retry_after_s: int = Field(30, ge=1, description="largest Retry-After the estimate may give")
    service_time_weight: float = Field(0.2, gt=0, le=1, description="weight of each finished turn in the moving "
                                                                    "average of a turn's length")


class Admission:
    """One per ingress replica; `async with admission.turn(account):` around the pipeline call (or `acquire` and
    `release` in the same task). Turns are handed to waiters in arrival order.

    `clock` measures turns; `wait` is how a waiter waits for its turn with a time limit (`asyncio.wait_for`): both
    are seams for tests, which drive time by hand."""

    def __init__(self, config: AdmissionConfig = AdmissionConfig(), clock: Callable[[], float] = time.monotonic,
                 wait: Waiter = asyncio.wait_for) -> None:
        self.config = config
        self.clock = clock
        self._wait = wait
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.by_account: Counter[str] = Counter()
        self.service_time_s: float | None = None    # moving average of a turn's length; None until one has ended
        self._started: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def expected_wait(self, position: int) -> float:
        """Seconds until the `position`-th in line (1: next) gets a turn, while every slot is busy; 0 until a turn's
        length has been measured."""
        if self.service_time_s is None:
            return 0.0
        return position * self.service_time_s / self.config.max_running

    @asynccontextmanager
    async def turn(self, account: str | None) -> AsyncIterator[None]:
        await self.acquire(account)
        try:
            yield
        finally:
            self.release(account)

    async def acquire(self, account: str | None) -> None:
        """A turn for `account`, at once, after a wait the service rate allows, or Overloaded / TooManyRequests."""
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
        task = _task()
        if task is not None:
            self._started[task] = self.clock()

    def release(self, account: str | None) -> None:
        task = _task()
        started = self._started.pop(task, None) if task is not None else None
        if started is not None:
            self._measure(self.clock() - started)
        self._release()
        self._forget(account)

    def _measure(self, seconds: float) -> None:
        previous = self.service_time_s
        weight = self.config.service_time_weight
        self.service_time_s = seconds if previous is None else previous + weight * (seconds - previous)

    def _forget(self, account: str | None) -> None:
        if account is not None:
            self.by_account[account] -= 1
            if self.by_account[account] <= 0:
                del self.by_account[account]

    async def _acquire(self, cfg: AdmissionConfig) -> None:
        if self.running < cfg.max_running and not self._waiters:
            self.running += 1
            return
        position = len(self._waiters) + 1
        if position > cfg.max_waiting or self.expected_wait(position) > cfg.max_wait_s:
            raise self._overloaded(position)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await self._wait(asyncio.shield(turn), cfg.max_wait_s)
        except TimeoutError:
            self._abandon(turn)
            raise self._overloaded(len(self._waiters) + 1) from None
        except asyncio.CancelledError:
            self._abandon(turn)
            raise

    def _overloaded(self, position: int) -> Overloaded:
        """The refusal of a request that would be `position`-th in line: come back after its expected wait."""
        cfg = self.config
        retry = cfg.retry_after_s
        if self.service_time_s is not None:
            retry = min(max(1, math.ceil(self.expected_wait(position))), cfg.max_retry_after_s)
        return Overloaded("the service is at capacity; retry shortly", code="overloaded",
                          extra={"retry_after_s": retry})

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


def _task() -> asyncio.Task[Any] | None:
    """The request's task: a route takes and gives back its turn in the same one, which times the turn without
    changing how routes call the gate."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
