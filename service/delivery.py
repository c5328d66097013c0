"""One webhook delivery attempt as the runner makes it: claimed with a lease, sent under one deadline, recorded.

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
from avatar.store.jobs import DELIVERED, GAVE_UP, PENDING, DeliveryRecord, JobStore

log = logging.getLogger("avatar.delivery")

LEASE_MARGIN_S = 30.0    # a claim's lease outlasts its send's deadline by this: signing before, recording after
RECORD_MARGIN_S = 5.0    # a send is cut at least this long before its lease ends, so its outcome is still its own


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


__all__ = ["LEASE_MARGIN_S", "RECORD_MARGIN_S", "deliver_once", "lease_s", "send_policy"]
