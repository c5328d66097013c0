"""Webhooks in the Standard Webhooks format (https://www.standardwebhooks.com): signing, verification, the event
names and filter, the retry schedule, and one delivery attempt through the SSRF-safe client, bounded as a whole by
one deadline.

A delivery is a POST of a JSON body `{"type", "timestamp", "data"}` with three headers: `webhook-id` (the same on
every retry of one message, so a receiver can drop duplicates), `webhook-timestamp` (epoch seconds of this attempt)
and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret in force,
space-separated). Signing and verification are the `standardwebhooks` reference library's, so a receiver using any
Standard Webhooks library verifies what this service sends.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from avatar.clock import Clock, system_clock
from avatar.errors import FetchRefused, InvalidRequest
from avatar.store.fetch import FetchPolicy, check_url, post

# event filter name -> the event type a receiver sees
EVENTS: dict[str, str] = {"started": "job.started", "item_completed": "job.item_completed",
                          "completed": "job.completed", "failed": "job.failed", "canceled": "job.canceled"}
DEFAULT_EVENTS: tuple[str, ...] = ("completed", "failed", "canceled")

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_events(events: list[str] | None) -> list[str]:
    """The event filter as sent, or the default (completed, failed, canceled); unknown names are a 422."""
    if events is None:
        return list(DEFAULT_EVENTS)
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise InvalidRequest(f"unknown webhook event(s) {', '.join(map(str, unknown))}; allowed: "
                             f"{', '.join(EVENTS)}", field="webhook_events", code="invalid_webhook_events")
    return list(dict.fromkeys(events))


def check_webhook_url(url: str, policy: FetchPolicy) -> None:
    """Refuse at submission what delivery would refuse: not http(s), credentials in the URL, a non-public address
    (unless the operator allowed private targets for tests and development)."""
    if len(url) > 2048:
        raise InvalidRequest("webhook_url is longer than 2048 characters", field="webhook_url")
    try:
        check_url(url, policy, "webhook_url")
    except FetchRefused as exc:
        raise InvalidRequest(exc.message, field="webhook_url", code=exc.code if exc.code.startswith("invalid_")
                             else "webhook_url_refused") from None


def message(event: str, data: dict[str, Any], now: float | None = None) -> str:
    """The body of one event (serialised once: the signature covers these exact bytes on every retry)."""
    stamp = datetime.fromtimestamp(now or time.time(), timezone.utc).isoformat(timespec="milliseconds")
    return json.dumps({"type": EVENTS[event], "timestamp": stamp.replace("+00:00", "Z"), "data": data},
                      separators=(",", ":"))


def sign(secrets_in_force: list[str], msg_id: str, timestamp: float, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers; one signature per secret (the new and, during a rotation, the old)."""
    when = datetime.fromtimestamp(int(timestamp), timezone.utc)
    signatures = " ".join(Webhook(s).sign(msg_id, when, body) for s in secrets_in_force)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp)), "webhook-signature": signatures,
            "content-type": "application/json"}


def verify(secret: str, body: bytes | str, headers: Mapping[str, str]) -> dict[str, Any]:
    """What a receiver does: check the signature and that the timestamp is within 5 minutes; returns the event.
    Raises `WebhookVerificationError` on a tampered, stale or unsigned message."""
    return Webhook(secret).verify(body, dict(headers))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `base_s`, then doubling up to `max_delay_s`, with +-20% jitter so receivers that failed
    together are not retried together; no attempt starts later than `window_s` after the first. The next attempt is
    scheduled from `clock` (the runner's, so tests move time instead of waiting for it)."""

    base_s: float = 5.0
    max_delay_s: float = 3600.0
    window_s: float = 24 * 3600.0
    jitter: float = 0.2
    clock: Clock = field(default=system_clock, compare=False, repr=False)

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        raw = min(self.base_s * 2 ** max(attempts - 1, 0), self.max_delay_s)
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return raw * (1.0 + spread)

    def next_at(self, first_at: float, attempts: int, now: float | None = None) -> float | None:
        """When to try again, or None when the window is spent."""
        at = (self.clock() if now is None else now) + self.delay(attempts)
        return at if at <= first_at + self.window_s else None


async def attempt(url: str, body: str, headers: dict[str, str], policy: FetchPolicy) -> dict[str, Any]:
    """One POST, bounded as a whole by `policy.timeout_s`; the record every attempt leaves in the job's status:
    when it started, the status code or the error (`webhook_url did not answer within 10 s` when the deadline
    cut it), and how long it took."""
    started, clock = time.time(), time.perf_counter()
    record: dict[str, Any] = {"at": started, "status_code": None, "error": None}
    try:
        record["status_code"] = await post(url, body.encode(), headers, policy)
        if not 200 <= record["status_code"] < 300:
            record["error"] = f"HTTP {record['status_code']}"
    except FetchRefused as exc:   # the address policy, or the deadline
        record["error"] = exc.message
    except Exception as exc:  # noqa: BLE001 - refused connections, resets, TLS: a failed attempt, retried later
        record["error"] = type(exc).__name__
    record["duration_ms"] = round((time.perf_counter() - clock) * 1000, 1)
    return record


def succeeded(record: dict[str, Any]) -> bool:
    return record.get("status_code") is not None and 200 <= record["status_code"] < 300


__all__ = ["DEFAULT_EVENTS", "EVENTS", "RetryPolicy", "WebhookVerificationError", "attempt", "check_events",
           "check_webhook_url", "message", "new_secret", "sign", "succeeded", "verify"]
