"""Worker functions of the many-process database tests: a module of its own, so each spawned process imports only
the database layer (not the test module and everything it imports)."""

from __future__ import annotations

from avatar.errors import InsufficientCredits
from avatar.store.credits import Ledger
from avatar.store.database import open_database
from avatar.store.ratelimit import RateLimiter


def migrate(url: str) -> list[int]:
    return open_database(url, migrate=False).migrate()


def charge(args: tuple[str, str, list[str], int]) -> list[str]:
    """One replica: holds and settles each request id; returns the ids it was allowed to charge."""
    url, account, request_ids, price = args
    ledger = Ledger(open_database(url))
    charged = []
    for request_id in request_ids:
        try:
            hold = ledger.hold(account, request_id, "cartoon", "generic", price)
        except InsufficientCredits:
            continue
        if ledger.settle(request_id, billable=True).charged == price and hold.held == price:
            charged.append(request_id)
    return charged


def take(args: tuple[str, int]) -> int:
    """One replica: `n` requests into the shared bucket; returns how many passed."""
    url, n = args
    limiter = RateLimiter(open_database(url))
    return sum(limiter.take("acct:shared", rate_per_s=0.001, capacity=25).allowed for _ in range(n))


def claim_all(args: tuple[str, str]) -> list[tuple[str, int]]:
    """One runner (a replica on some node): claims items until none is left; returns what it claimed."""
    from avatar.store.jobs import open_job_store
    url, owner = args
    store = open_job_store(url)
    claimed = []
    while (got := store.claim_item(owner, 60)) is not None:
        claimed.append(got[0].key)
    return claimed
