"""Webhook delivery under hostile receivers: a send is bounded as a whole by its deadline (a receiver dripping its
headers a byte at a time is cut, the attempt recorded with its duration and retried), one account's slow receivers
do not hold back another account's events, and a send never outlives its claim.

The `JobWorker` is driven step by step on a job store of its own (no stages, no cluster). The hostile receiver drips
until the test releases it, so whatever ends a send early is the code under test; the short deadline (0.5 s) is
waited out by that code, and the tests only bound a failing run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import pytest

from avatar import webhooks
from avatar.store.fetch import FetchPolicy
from avatar.store.jobs import GENERATE, PENDING, SqliteJobStore, open_job_store
from avatar.store.storage import Storage, UrlSigner
from service.config import RunnerConfig
from service.delivery import RECORD_MARGIN_S, lease_s, send_policy
from tests.webhook_receiver import DripReceiver, Receiver

pytestmark = pytest.mark.timeout(120)

DEADLINE_S = 0.5


def _queue(store, account: str, url: str, event: str = "failed") -> tuple[str, str]:
    """A job of `account` that has ended (so the runner has only its message to send) and that message."""
    job = store.create_job(account, GENERATE, {}, [(None, {"url": "https://photos.example/1.jpg"})], "http://h",
                           webhook_url=url, webhook_events=[event])
    store.cancel(account, job.job_id)
    return job.job_id, store.add_delivery(job, event, webhooks.message(event, {"job_id": job.job_id}))


def _worker(store, tmp_path, deadline_s: float, **config):
    from service.runner import JobWorker
    cfg = RunnerConfig(**{"poll_s": 0.05, "sweep_every_s": 3600, **config})
    return JobWorker(store, Storage(str(tmp_path / "storage")), UrlSigner(b"test-key"), lambda job: None, cfg,
                     webhook_policy=FetchPolicy(timeout_s=deadline_s, max_bytes=2**20, allow_private=True),
                     retry=webhooks.RetryPolicy(base_s=0.05, max_delay_s=0.05, window_s=600, jitter=0.0))


async def _step_until(worker, done: Callable[[], bool], what: str, limit_s: float = 15.0) -> None:
    """Step the worker until `done()`; `limit_s` only ends a run where it never happens."""
    give_up = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < give_up, f"{what} did not happen within {limit_s:g} s"
        await worker.step()
        await asyncio.sleep(0.01)


def _attempts(store, job_id: str) -> list[dict]:
    return store.deliveries(job_id)[0].attempts


@pytest.fixture()
def store(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.sqlite3")


def test_a_receiver_dripping_its_headers_is_cut_at_the_deadline_recorded_and_retried(store, tmp_path):
    with DripReceiver(every_s=0.05) as drip:
        job_id, msg = _queue(store, "acc_a", drip.url)
        worker = _worker(store, tmp_path, DEADLINE_S)
        seen: dict = {}

        async def scenario() -> None:
            try:
                await _step_until(worker, lambda: len(_attempts(store, job_id)) >= 1, "the first attempt's record")
                seen["after_first"] = store.deliveries(job_id)[0]
                seen["released"] = drip.release.is_set()
                await _step_until(worker, lambda: len(_attempts(store, job_id)) >= 2, "the retry's record")
            finally:
                await worker.stop()
        asyncio.run(scenario())
    assert not seen["released"]                    # the receiver was still dripping: the sender cut it
    first_state = seen["after_first"]
    [first] = first_state.attempts
    assert first["status_code"] is None and first["error"] == f"webhook_url did not answer within {DEADLINE_S:g} s"
    assert first["duration_ms"] >= DEADLINE_S * 1000 - 1     # cut at the deadline, not earlier ...
    assert first["duration_ms"] < DEADLINE_S * 1000 + 5000   # ... and not after the receiver gave up (20 s)
    assert first_state.state == PENDING and first_state.next_at > first["at"]   # retried later
    first, second = _attempts(store, job_id)[:2]
    assert second["error"] == first["error"] and second["duration_ms"] >= DEADLINE_S * 1000 - 1
    assert second["at"] >= first["at"] + first["duration_ms"] / 1000 - 0.01   # one connection at a time
    assert drip.connections and set(drip.connections) == {msg}                # the same message, retried


def test_slow_receivers_of_one_account_do_not_hold_back_another_accounts_event(store, tmp_path):
    """Account A has more dripping receivers than the runner has delivery slots; account B's `failed` event,
    queued after all of them, is delivered while every one of A's sends is still open: B waits for no deadline."""
    secret_b = store.webhook_secret("acc_b")[0]
    with DripReceiver(every_s=0.05) as drip, Receiver(secret_b) as fast:
        a_jobs = [_queue(store, "acc_a", drip.url)[0] for _ in range(6)]
        b_job, b_msg = _queue(store, "acc_b", fast.url)
        worker = _worker(store, tmp_path, deadline_s=60.0, delivery_concurrency=4)   # a deadline never reached
        seen: dict = {}

        async def scenario() -> None:
            try:
                await _step_until(worker, lambda: _attempts(store, b_job), "account B's delivery")
                seen["a_attempts"] = [len(_attempts(store, j)) for j in a_jobs]
                now = time.time()
                seen["a_in_flight"] = sum((store.deliveries(j)[0].lease_until or 0) > now for j in a_jobs)
            finally:
                await worker.stop()
        asyncio.run(scenario())
    assert fast.events() == ["job.failed"] and fast.received[0]["headers"]["webhook-id"] == b_msg
    [b_attempt] = _attempts(store, b_job)
    assert b_attempt["status_code"] == 204 and b_attempt["duration_ms"] < 60_000
    assert seen["a_attempts"] == [0] * 6           # none of A's sends had ended (none was cut or answered)
    assert seen["a_in_flight"] == RunnerConfig().delivery_per_account   # A holds only its own account's slots


# ---------------------------------------------------------------- the store's claims (both backends)
@pytest.fixture()
def any_store(database_url):
    return open_job_store(database_url)


def test_claims_cap_each_account_and_serve_the_least_busy_account_first(any_store):
    store = any_store
    a1, a2, a3 = (_queue(store, "acc_a", "https://a.example/hook")[1] for _ in range(3))
    _, b1 = _queue(store, "acc_b", "https://b.example/hook")
    claim = lambda owner: store.claim_delivery(owner, 60, per_account=2)   # noqa: E731
    first, second, third = claim("r1"), claim("r1"), claim("r2")
    assert [first.delivery_id, second.delivery_id, third.delivery_id] == [a1, b1, a2]   # B before A's older one
    assert claim("r2") is None                      # A has 2 in flight over both runners; B's only one is out
    assert store.record_attempt("r1", a1, {"status_code": 204}, None, "delivered", first.lease_until)
    assert claim("r2").delivery_id == a3
    assert store.claim_delivery("r3", 60) is None   # uncapped, still one message of a job at a time


def test_an_attempt_is_recorded_only_under_the_claim_that_made_it(any_store):
    store = any_store
    job_id, msg = _queue(store, "acc_a", "https://a.example/hook")
    stale = store.claim_delivery("r1", -1)          # a lease already run out: the message is free to claim again
    fresh = store.claim_delivery("r1", 60)
    assert fresh.delivery_id == stale.delivery_id == msg and fresh.lease_until != stale.lease_until
    assert not store.record_attempt("r1", msg, {"status_code": 204}, None, "delivered", stale.lease_until)
    assert store.record_attempt("r1", msg, {"status_code": 500, "error": "HTTP 500"}, time.time(), PENDING,
                                fresh.lease_until)
    assert [a["status_code"] for a in _attempts(store, job_id)] == [500]


def test_a_send_ends_before_its_lease_does():
    policy = FetchPolicy(timeout_s=10)
    assert lease_s(policy) > policy.timeout_s + RECORD_MARGIN_S
    now = 1000.0
    assert send_policy(policy, now + lease_s(policy), now) == policy      # a fresh claim: the full deadline
    late = send_policy(policy, now + RECORD_MARGIN_S + 3, now)            # claimed long ago: what is left of it
    assert late.timeout_s == pytest.approx(3) and late.allow_private == policy.allow_private
    assert 0 < send_policy(policy, now, now).timeout_s < 0.01             # nothing left: cut at once
