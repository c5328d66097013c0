"""Rate limits: one token bucket per account (or anonymous client) in the service's database, so every replica on
every node draws from the same bucket.

A bucket holds up to `capacity` tokens and refills at `rate_per_s`; a request takes one. The row is read with a row
lock (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite's write transaction locks the file), refilled by the time elapsed
on the database server's clock (one clock for all nodes) and written back in the same transaction: concurrent
requests never both spend the last token. A limiter given a `clock` reads it instead (tests move it rather than
sleeping for tokens to come back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from avatar.clock import Clock
from avatar.store.database import Database


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int              # the bucket's capacity
    remaining: int          # whole tokens left after this request
    reset_s: float          # until the bucket is full again
    retry_after_s: float    # until one token is back (0 when allowed)

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-*` of the answer; Reset is in seconds from now (the IETF RateLimit draft's delta form)."""
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_s))}


class RateLimiter:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock   # None: the database server's clock, one for every node

    def take(self, bucket: str, rate_per_s: float, capacity: int, cost: float = 1.0) -> RateDecision:
        """Spend `cost` tokens of `bucket` when it has them."""
        with self.db.transaction() as tx:
            now = self.clock() if self.clock is not None else tx.now()
            select = "SELECT tokens, updated_at FROM rate_buckets WHERE bucket=?" + tx.for_update
            row = tx.execute(select, (bucket,)).fetchone()
            if row is None:   # first use: a full bucket (a concurrent first insert wins; this one then reads it)
                tx.execute("INSERT INTO rate_buckets (bucket, tokens, updated_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (bucket) DO NOTHING", (bucket, float(capacity), now))
                row = tx.execute(select, (bucket,)).fetchone()
            tokens, updated = float(row[0]), float(row[1])
            tokens = min(float(capacity), tokens + max(0.0, now - updated) * rate_per_s)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            tx.execute("UPDATE rate_buckets SET tokens=?, updated_at=? WHERE bucket=?",
                       (tokens, max(now, updated), bucket))
        return RateDecision(allowed, capacity, int(tokens), (capacity - tokens) / rate_per_s,
                            0.0 if allowed else (cost - tokens) / rate_per_s)
