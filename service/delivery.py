"""Webhooks of jobs: an event queued in the job store (`emit`), and the sender that claims due messages and makes
one attempt each, claimed with a lease, sent under one deadline, recorded.

Why a send is bounded as a whole: a receiver that answers its headers a byte at a time would otherwise hold a send
open for as long as it likes (a per-read timeout never fires), and with it one of the runner's delivery slots and
the message's lease; when the lease ran out the same message went out again beside the first. Here the deadline is
the image fetch's (`within_deadline`: DNS, connect, request, answer headers), at most `webhook_timeout_s` and always
ending `RECORD_MARGIN_S` before the claim's lease, so one message of a job is never on two connections and every
attempt, a cut one included, is recorded by the claim that made it. Which message is sent next, and how many of one
account's are in flight, is the job store's `claim_delivery` (per-account limit, accounts with fewer in flight
first), so a slow receiver costs its own account's slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable

from avatar import webhooks
from avatar.store.fetch import FetchPolicy
from avatar.store.jobs import DELIVERED, GAVE_UP, PENDING, DeliveryRecord, JobRecord, JobStore

log = logging.getLogger("avatar.delivery")

LEASE_MARGIN_S = 30.0    # a claim's lease outlasts its send's deadline by this: signing before, recording after
RECORD_MARGIN_S = 5.0    # a send is cut at least this long before its lease ends, so its outcome is still its own


def emit(store: JobStore, job: JobRecord, event: str, data: dict[str, Any]) -> str | None:
    """Queue `event` for the job's webhook when the job subscribed to it; a runner's `WebhookSender` sends it."""
    if not job.webhook_url or event not in job.webhook_events:
        return None
    return store.add_delivery(job, event, webhooks.message(event, data))


def lease_s(policy: FetchPolicy) -> float:
    """The lease of one claim: longer than any send under `policy` can last."""
    return policy.timeout_s + LEASE_MARGIN_S


def send_policy(policy: FetchPolicy, lease_until: float | None, now: float) -> FetchPolicy:
    """`policy` with its deadline shortened, if need be, to end `RECORD_MARGIN_S` before the lease does."""
    if lease_until is None:
        return policy
    left = lease_until - now - RECORD_MARGIN_S
    return policy if left >= policy.timeout_s else dataclasses.replace(policy, timeout_s=max(left, 0.001))


async def deliver_once(store: JobStore, owner: str, delivery: DeliveryRecord, policy: FetchPolicy,
                       retry: webhooks.RetryPolicy,
                       clock: Callable[[], float] = time.time) -> tuple[dict[str, Any], float | None]:
    """One attempt at one claimed message, signed with the account's secrets in force; records it (delivered, a
    retry at the returned time, or given up when the retry window is spent). Answers the attempt's record and the
    retry time (None when delivered or given up)."""
    secrets_in_force = await asyncio.to_thread(store.webhook_secrets, delivery.account)
    now = clock()
    headers = webhooks.sign(secrets_in_force, delivery.delivery_id, now, delivery.payload)
    record = await webhooks.attempt(delivery.url, delivery.payload, headers,
                                    send_policy(policy, delivery.lease_until, now))
    next_at, state = None, DELIVERED
    if not webhooks.succeeded(record):
        next_at = retry.next_at(delivery.created_at, len(delivery.attempts) + 1)
        state = PENDING if next_at is not None else GAVE_UP
    if not await asyncio.to_thread(store.record_attempt, owner, delivery.delivery_id, record, next_at, state,
                                   delivery.lease_until):
        log.warning("webhook %s: the attempt ended after its claim was lost; not recorded", delivery.delivery_id)
    return record, next_at


class WebhookSender:
    """A runner's sends in flight: `send_due` starts due messages up to `concurrency`, at most `per_account` of one
    account in flight (the store's claim counts every runner's), each one attempt by `deliver_once`."""

    def __init__(self, store: JobStore, owner: str, policy: FetchPolicy, retry: webhooks.RetryPolicy) -> None:
        self.store, self.owner, self.policy, self.retry = store, owner, policy, retry
        self.sending: set[asyncio.Task] = set()
        self.attempts = 0
        self.retry_due = 0.0          # the latest retry this sender scheduled (a runner's drain waits for it)

    async def send_due(self, concurrency: int, per_account: int) -> bool:
        """Start what is due; True when something started."""
        self.sending = {t for t in self.sending if not t.done()}
        started = False
        while len(self.sending) < concurrency:
            delivery = await asyncio.to_thread(self.store.claim_delivery, self.owner, lease_s(self.policy),
                                               per_account)
            if delivery is None:
                break
            task = asyncio.create_task(self.deliver(delivery))
            task.add_done_callback(_log_failure)
            self.sending.add(task)
            started = True
        return started

    async def deliver(self, delivery: DeliveryRecord) -> dict[str, Any]:
        """One attempt at one claimed message; a failure schedules the next."""
        record, next_at = await deliver_once(self.store, self.owner, delivery, self.policy, self.retry)
        self.attempts += 1
        self.retry_due = max(self.retry_due, next_at or 0.0)
        return record

    def busy(self) -> bool:
        return any(not t.done() for t in self.sending)

    async def stop(self) -> None:
        """Abandon the sends in flight (their leases expire and the messages go out again): a runner's death."""
        for task in self.sending:
            task.cancel()
        await asyncio.gather(*self.sending, return_exceptions=True)
        self.sending.clear()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("webhook send failed: %r", task.exception(), exc_info=task.exception())


__all__ = ["LEASE_MARGIN_S", "RECORD_MARGIN_S", "WebhookSender", "deliver_once", "emit", "lease_s", "send_policy"]
