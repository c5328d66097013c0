"""Standard Webhooks signing as a receiver checks it (a tampered or stale message is rejected), secret rotation,
the backoff schedule, and delivery through the SSRF policy (loopback only behind the explicit setting)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from avatar import webhooks
from avatar.clock import ManualClock
from avatar.errors import InvalidRequest
from avatar.store.fetch import FetchPolicy
from tests.webhook_receiver import Receiver

BODY = webhooks.message("completed", {"job_id": "job_1", "state": "succeeded"})


def test_a_signed_message_verifies_and_carries_the_event():
    secret = webhooks.new_secret()
    headers = webhooks.sign([secret], "msg_1", time.time(), BODY)
    assert set(headers) >= {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    event = webhooks.verify(secret, BODY, headers)
    assert event["type"] == "job.completed" and event["data"]["job_id"] == "job_1"


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "stale", "future", "other secret", "unsigned"])
def test_tampered_stale_or_unsigned_messages_are_rejected(tamper):
    secret = webhooks.new_secret()
    now = time.time()
    body, headers = BODY, webhooks.sign([secret], "msg_1", now, BODY)
    if tamper == "body":
        body = BODY.replace("succeeded", "failed")
    elif tamper == "id":
        headers["webhook-id"] = "msg_2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(now) + 1)
    elif tamper == "stale":
        headers = webhooks.sign([secret], "msg_1", now - 600, BODY)   # replayed 10 minutes later
    elif tamper == "future":
        headers = webhooks.sign([secret], "msg_1", now + 600, BODY)
    elif tamper == "other secret":
        headers = webhooks.sign([webhooks.new_secret()], "msg_1", now, BODY)
    else:
        del headers["webhook-signature"]
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(secret, body, headers)


def test_during_a_rotation_both_secrets_verify():
    old, new = webhooks.new_secret(), webhooks.new_secret()
    headers = webhooks.sign([new, old], "msg_1", time.time(), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert webhooks.verify(old, BODY, headers) and webhooks.verify(new, BODY, headers)


def test_backoff_doubles_up_to_the_cap_and_stops_at_the_window():
    policy = webhooks.RetryPolicy(base_s=5, max_delay_s=60, window_s=300, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert policy.next_at(first_at=0, attempts=1, now=100) == 105
    assert policy.next_at(first_at=0, attempts=5, now=290) is None          # past the 300 s window
    jittered = webhooks.RetryPolicy(base_s=10, jitter=0.2)
    assert all(8 <= jittered.delay(1) <= 12 for _ in range(50))


def test_the_next_attempt_is_scheduled_from_the_policys_clock():
    clock = ManualClock(start=1000.0)
    policy = webhooks.RetryPolicy(base_s=5, max_delay_s=60, window_s=300, jitter=0, clock=clock)
    assert policy.next_at(first_at=1000.0, attempts=1) == 1005.0
    clock.advance(295)
    assert policy.next_at(first_at=1000.0, attempts=2) is None             # 1295 + 10 is past the window
    assert policy == webhooks.RetryPolicy(base_s=5, max_delay_s=60, window_s=300, jitter=0)   # the clock aside


def test_event_filter_names():
    assert webhooks.check_events(None) == ["completed", "failed", "canceled"]
    assert webhooks.check_events(["started", "item_completed", "started"]) == ["started", "item_completed"]
    with pytest.raises(InvalidRequest) as err:
        webhooks.check_events(["done"])
    assert err.value.field == "webhook_events"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.0.0.8/x",
                                 "http://169.254.169.254/latest", "http://[::1]/x", "ftp://example.com/x",
                                 "http://user:pw@example.com/x"])
def test_webhook_urls_to_private_addresses_are_refused_by_default(url):
    with pytest.raises(InvalidRequest) as err:
        webhooks.check_webhook_url(url, FetchPolicy())
    assert err.value.field == "webhook_url"


def test_loopback_is_allowed_only_with_the_explicit_setting(monkeypatch):
    from avatar.settings import settings
    assert settings().webhook_allow_private is False      # never by default
    monkeypatch.setenv("AVATAR_WEBHOOK_ALLOW_PRIVATE", "true")
    assert settings().webhook_allow_private is True
    webhooks.check_webhook_url("http://127.0.0.1:9/x", FetchPolicy(allow_private=True))


def test_an_attempt_posts_the_signed_body_and_reports_the_answer():
    secret = webhooks.new_secret()
    with Receiver(secret, statuses=[500]) as receiver:
        policy = FetchPolicy(timeout_s=5, allow_private=True)

        def attempt(policy: FetchPolicy) -> dict:
            headers = webhooks.sign([secret], "msg_9", time.time(), BODY)
            return asyncio.run(webhooks.attempt(receiver.url, BODY, headers, policy))
        first, second, refused = attempt(policy), attempt(policy), attempt(FetchPolicy(timeout_s=5))
    assert (first["status_code"], first["error"]) == (500, "HTTP 500") and not webhooks.succeeded(first)
    assert second["status_code"] == 204 and webhooks.succeeded(second)
    assert refused["status_code"] is None and "non-public" in refused["error"]   # the SSRF policy, per attempt
    assert len(receiver.received) == 2 and all(r["verified"] for r in receiver.received)
    assert {r["headers"]["webhook-id"] for r in receiver.received} == {"msg_9"}   # the same id on a retry
    assert json.loads(receiver.received[0]["body"])["type"] == "job.completed"
