"""Credits, seats, rate limits and feedback in the database, on both backends (an SQLite file and a real PostgreSQL
server). The concurrency tests run several processes at once, each with its own connection pool, as replicas do."""

from __future__ import annotations

import multiprocessing
import time

import db_workers
import pytest

from avatar.clock import ManualClock
from avatar.errors import InsufficientCredits, InvalidRequest, NotFound
from avatar.store.accounts import SqlAccountStore
from avatar.store.credits import DELIVERED, HELD, REFUSED, Ledger
from avatar.store.database import open_database
from avatar.store.feedback import FeedbackStore
from avatar.store.ratelimit import RateLimiter


@pytest.fixture()
def db(database_url):
    return open_database(database_url)


@pytest.fixture()
def account(db) -> str:
    return SqlAccountStore(db, pepper=b"test pepper").create_account("Acme")[0]


@pytest.fixture()
def ledger(db) -> Ledger:
    return Ledger(db)


def test_grants_add_up_and_corrections_stop_at_zero(ledger, account):
    assert ledger.balance(account) == 0
    assert ledger.grant(account, 100, "first pack") == 100
    assert ledger.grant(account, -30, "correction") == 70
    with pytest.raises(InvalidRequest, match="below zero"):
        ledger.grant(account, -71)
    for bad in (0, 10**13, 1.5, "5"):
        with pytest.raises(InvalidRequest):
            ledger.grant(account, bad)
    with pytest.raises(KeyError):
        ledger.grant("acc_missing", 5)
    assert ledger.balance(account) == 70 and [g["amount"] for g in ledger.grants(account)] == [-30, 100]


def test_billable_avatars_pay_and_the_others_get_their_credits_back(ledger, account):
    ledger.grant(account, 10)
    held = ledger.hold(account, "req_a", "corporate_headshot", "generic", price=3)
    assert (held.held, held.balance, held.state) == (3, 7, HELD)
    assert ledger.settle("req_a", billable=True) .charged == 3 and ledger.balance(account) == 7
    ledger.hold(account, "req_b", "corporate_headshot", "generic", price=3)
    unbilled = ledger.settle("req_b", billable=False)
    assert (unbilled.charged, unbilled.balance, unbilled.state) == (0, 7, DELIVERED)
    ledger.hold(account, "req_c", "corporate_headshot", "generic", price=3)
    refused = ledger.release("req_c")
    assert (refused.charged, refused.balance, refused.state) == (0, 7, REFUSED)


def test_a_request_id_is_charged_once(ledger, account):
    ledger.grant(account, 10)
    first = ledger.hold(account, "req_same", "cartoon", "generic", price=4)
    again = ledger.hold(account, "req_same", "cartoon", "generic", price=4)   # a retry of the same request
    assert first.balance == again.balance == 6
    ledger.settle("req_same", billable=True)
    assert ledger.settle("req_same", billable=True).charged == 4
    assert ledger.settle("req_same", billable=False).charged == 4           # settled already: nothing moves
    assert ledger.release("req_same").state == DELIVERED and ledger.balance(account) == 6


def test_too_few_credits_is_refused_before_any_record(ledger, account):
    ledger.grant(account, 2)
    with pytest.raises(InsufficientCredits) as refused:
        ledger.hold(account, "req_x", "cartoon", "generic", price=3)
    assert refused.value.status == 402 and refused.value.code == "insufficient_credits"
    assert refused.value.extra == {"credits_required": 3, "credits_remaining": 2}
    assert ledger.charge("req_x") is None and ledger.balance(account) == 2
    assert ledger.hold(account, "req_free", "cartoon", "generic", price=0).balance == 2   # a free avatar needs none


def test_a_seat_covers_an_employee_for_its_period(ledger, account, db):
    ledger.grant(account, 100)
    seat = dict(seat_price=10, seat_s=3600.0)
    first = ledger.hold(account, "req_1", "corporate_headshot", "slack", 1, external_id="emp-1", **seat)
    assert first.seat and first.held == 10
    ledger.settle("req_1", billable=True)
    again = ledger.hold(account, "req_2", "cartoon", "slack", 1, external_id="emp-1", **seat)
    assert again.covered and again.held == 0                                # regenerating the employee is free
    ledger.settle("req_2", billable=True)
    other = ledger.hold(account, "req_3", "corporate_headshot", "slack", 1, external_id="emp-2", **seat)
    ledger.release("req_3")                                                 # refused: no seat, no charge
    no_id = ledger.hold(account, "req_4", "corporate_headshot", "slack", 1, **seat)
    ledger.settle("req_4", billable=True)                                   # no external_id: charged per avatar
    assert (other.held, no_id.held) == (10, 1)
    assert ledger.balance(account) == 100 - 10 - 1
    assert [s.external_id for s in ledger.seats(account)] == ["emp-1"]
    with db.transaction() as tx:                                            # the period ends
        tx.execute("UPDATE seats SET expires_at=? WHERE external_id=?", (time.time() - 1, "emp-1"))
    assert ledger.seats(account) == []
    renewed = ledger.hold(account, "req_5", "corporate_headshot", "slack", 1, external_id="emp-1", **seat)
    assert renewed.seat and renewed.held == 10
    assert ledger.settle("req_5", billable=True).charged == 10 and len(ledger.seats(account)) == 1


def test_two_first_requests_of_an_employee_pay_one_seat(ledger, account):
    ledger.grant(account, 100)
    seat = dict(seat_price=10, seat_s=3600.0)
    a = ledger.hold(account, "req_a", "cartoon", "slack", 1, external_id="emp-9", **seat)
    b = ledger.hold(account, "req_b", "cartoon", "slack", 1, external_id="emp-9", **seat)
    assert a.held == b.held == 10 and ledger.balance(account) == 80          # both in flight: both held
    assert ledger.settle("req_a", billable=True).charged == 10
    assert ledger.settle("req_b", billable=True).charged == 0               # the seat was opened meanwhile
    assert ledger.balance(account) == 90


def test_stale_holds_are_given_back(ledger, account, db):
    ledger.grant(account, 5)
    ledger.hold(account, "req_lost", "cartoon", "generic", price=5)        # its replica dies here
    assert ledger.release_stale(max_age_s=3600) == 0 and ledger.balance(account) == 0
    with db.transaction() as tx:
        tx.execute("UPDATE avatars SET created_at=? WHERE request_id=?", (time.time() - 7200, "req_lost"))
    assert ledger.release_stale(max_age_s=3600) == 1 and ledger.balance(account) == 5


def test_old_settled_requests_are_pruned_with_their_feedback(ledger, account, db):
    feedback = FeedbackStore(db)
    for request_id in ("req_old", "req_new", "req_held_old"):
        ledger.hold(account, request_id, "cartoon", "generic", 0)
    for request_id in ("req_old", "req_new"):
        ledger.settle(request_id, billable=True)
        feedback.record(account, request_id, "declined")
    with db.transaction() as tx:
        tx.execute("UPDATE avatars SET created_at=? WHERE request_id IN (?, ?)",
                   (time.time() - 100 * 86400, "req_old", "req_held_old"))
    assert ledger.prune(older_than_s=90 * 86400) == 1
    assert ledger.charge("req_old") is None and ledger.charge("req_new") is not None
    assert ledger.charge("req_held_old").state == HELD                    # a hold is released, never pruned
    assert feedback.rates()["by_style"]["cartoon"]["declined"] == 1


# ------------------------------------------------------------------------------------------ many writers at once
def test_parallel_replicas_never_lose_or_double_a_charge(database_url, ledger, account):
    """6 processes charge 40 requests each (every request id sent by two of them, as retries through two replicas)
    against a balance that covers only 50: exactly 50 distinct requests are charged, the balance ends at 0 and the
    ledger holds each charge once."""
    ledger.grant(account, 150)
    price, ids = 3, [f"req_{i:04d}" for i in range(120)]
    shares = [(database_url, account, ids[(k % 3) * 40:(k % 3) * 40 + 40], price) for k in range(6)]
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        results = pool.map(db_workers.charge, shares)
    charged_ids = [r for result in results for r in result]
    with ledger.db.transaction(write=False) as tx:
        rows = tx.execute("SELECT request_id, charged FROM avatars WHERE account_id=? AND charged > 0",
                          (account,)).fetchall()
    assert len(rows) == 50 and sum(int(c) for _, c in rows) == 150
    assert ledger.balance(account) == 0
    assert set(charged_ids) <= {r for r, _ in rows}


def test_a_rate_limit_holds_across_parallel_replicas(database_url, db):
    """5 processes send 15 requests each into one bucket of 25 (refill ~0): exactly 25 pass."""
    RateLimiter(db)   # the schema exists before the workers start
    with multiprocessing.get_context("spawn").Pool(5) as pool:
        allowed = pool.map(db_workers.take, [(database_url, 15)] * 5)
    assert sum(allowed) == 25


def test_the_bucket_refills_at_its_rate(db):
    clock = ManualClock()
    limiter = RateLimiter(db, clock=clock)
    decisions = [limiter.take("acct:a", rate_per_s=1.0, capacity=3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[-1]
    assert 0 < refused.retry_after_s <= 1.0 and refused.headers()["X-RateLimit-Limit"] == "3"
    assert 2.0 < refused.reset_s <= 3.0 and refused.headers()["X-RateLimit-Remaining"] == "0"
    clock.advance(refused.retry_after_s - 0.01)
    assert not limiter.take("acct:a", rate_per_s=1.0, capacity=3).allowed   # not quite one token back yet
    clock.advance(0.02)
    assert limiter.take("acct:a", rate_per_s=1.0, capacity=3).allowed
    assert limiter.take("acct:b", rate_per_s=1.0, capacity=3).remaining == 2   # buckets are separate


# ------------------------------------------------------------------------------------------ feedback
def test_feedback_only_on_own_delivered_avatars_and_rates(db, ledger, account):
    other = SqlAccountStore(db, pepper=b"test pepper").create_account("Other")[0]
    feedback = FeedbackStore(db)
    for i, (style, platform) in enumerate([("cartoon", "slack"), ("cartoon", "slack"), ("cartoon", "discord"),
                                           ("sty_" + "a" * 20, "slack")]):
        ledger.hold(account, f"req_{i}", style, platform, 0)
        ledger.settle(f"req_{i}", billable=True)
    ledger.hold(account, "req_refused", "cartoon", "slack", 0)
    ledger.release("req_refused")
    for request_id, who in (("req_0", other), ("req_missing", account), ("req_refused", account)):
        with pytest.raises(NotFound) as missing:
            feedback.record(who, request_id, "declined")
        assert missing.value.code == "request_not_found"
    feedback.record(account, "req_0", "accepted")
    feedback.record(account, "req_0", "declined", "looks older")            # the user changed their mind
    feedback.record(account, "req_1", "accepted")
    feedback.record(account, "req_2", "declined")
    feedback.record(account, "req_3", "accepted")
    rates = feedback.rates()
    assert rates["by_style"]["cartoon"] == {"accepted": 1, "declined": 2, "decline_rate": 0.6667}
    assert rates["by_style"]["custom"] == {"accepted": 1, "declined": 0, "decline_rate": 0.0}
    assert rates["by_platform"]["discord"]["decline_rate"] == 1.0
    assert rates["by_style_platform"]["cartoon/slack"] == {"accepted": 1, "declined": 1, "decline_rate": 0.5}


def test_billing_answers_its_rate_decisions_without_an_http_request(tmp_path):
    """Billing is a domain service: it takes an account or a client address and answers a RateCheck (the
    decision for the headers, and the 429 over the limit) instead of writing a request's state."""
    import asyncio

    from avatar.billing import AccountsConfig, Plan
    from avatar.errors import TooManyRequests
    from service.billing import Billing, RateCheck

    billing = Billing(f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      AccountsConfig(anonymous=Plan(requests_per_minute=1, burst=2)))
    checks = [asyncio.run(billing.limit(None, "203.0.113.9")) for _ in range(3)]
    assert all(isinstance(c, RateCheck) for c in checks)
    assert [c.decision.allowed for c in checks] == [True, True, False]
    assert checks[0].refusal is None and isinstance(checks[2].refusal, TooManyRequests)
    assert checks[2].refusal.code == "rate_limited"
    assert asyncio.run(billing.limit(None, "203.0.113.10")).decision.allowed   # another address, another bucket
