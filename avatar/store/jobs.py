"""Durable jobs: asynchronous generations and team batches, their items, webhook deliveries, idempotency records and
per-account webhook secrets, behind one interface (`JobStore`), on the service's database (`avatar.store.database`):
an SQLite file on one node (the embedded default), PostgreSQL for a cluster. The tables are migration step 3.

Why the store is the queue: an accepted job must survive the restart of any replica and never run twice to
completion. Every piece of work is a row; a runner *claims* an item with a lease (owner + expiry + attempt count) in
one `BEGIN IMMEDIATE` transaction, renews the lease while it works, and its result is accepted only while it still
owns the running item. A runner that dies leaves a lease that expires; the next claim takes the item again (up to
`max_attempts`), and items already finished are never claimed again. Webhook deliveries and job finalisation are
claimed the same way. Claims are serialised: SQLite's write transaction locks the file; on PostgreSQL each kind of
claim takes a transaction-scoped advisory lock first (`tx.serialize`), so runners on any node never take the same
row. Every other write is a single conditional UPDATE (owner and state in its WHERE), safe under READ COMMITTED.

Every read is scoped by account: another account's job is indistinguishable from a missing one.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from avatar.clock import Clock, system_clock
from avatar.settings import settings
from avatar.store.database import Database, SqliteDatabase, Tx, open_database, redact, sqlite_path

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELED)

GENERATE, BATCH = "generate", "batch"
PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "failed"


def new_job_id() -> str:
    return "job_" + secrets.token_hex(10)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(10)


@dataclass
class JobRecord:
    job_id: str
    account: str
    kind: str                                   # generate | batch
    state: str
    params: dict[str, Any]                      # the generate parameters (style, platform, ...), shared by items
    base_url: str                               # base of the signed URLs in the answer
    webhook_url: str | None
    webhook_events: list[str]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None             # set when the job ends: ttl_s later it is deleted
    output: dict[str, Any] | None = None        # generate: the synchronous answer; batch: result URLs and summary
    error: dict[str, Any] | None = None         # the JSON error body of a failed job
    counts: dict[str, int] = field(default_factory=dict)   # items by state

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def settled(self) -> int:
        return sum(self.counts.get(s, 0) for s in TERMINAL)


@dataclass
class ItemRecord:
    job_id: str
    idx: int
    external_id: str | None
    source: dict[str, Any]                      # {"upload": key} | {"url": ...} | {"input_id": ...}
    request_id: str                             # stable across re-runs: a re-run overwrites the same outputs
    state: str = QUEUED
    attempts: int = 0
    owner: str | None = None
    result: dict[str, Any] | None = None        # the generate answer body
    error: dict[str, Any] | None = None         # the generate error body
    billable: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    outputs: list[str] = field(default_factory=list)   # storage keys written for it (avatar, thumbnail)
    account: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.job_id, self.idx


@dataclass
class DeliveryRecord:
    delivery_id: str                            # the Standard Webhooks `webhook-id`: the same on every retry
    job_id: str
    event: str
    url: str
    payload: str
    state: str
    created_at: float
    next_at: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    account: str = ""
    lease_until: float | None = None            # the claim's lease: the send must end before it


@dataclass(frozen=True)
class IdempotencyResult:
    """`status` is new (go ahead), replay (`response` is the original answer), conflict (another body used the key)
    or in_progress (the original request is still running)."""

    status: str
    response: dict[str, Any] | None = None
    status_code: int | None = None


@runtime_checkable
class JobStore(Protocol):
    def create_job(self, account: str, kind: str, params: dict[str, Any], items: list[tuple[str | None, dict]],
                   base_url: str, webhook_url: str | None = None, webhook_events: list[str] | None = None,
                   ttl_s: float = 86400.0, job_id: str | None = None) -> JobRecord: ...
    def get_job(self, account: str, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, account: str, limit: int = 50, kind: str | None = None) -> list[JobRecord]: ...
    def items(self, account: str, job_id: str, offset: int = 0, limit: int = 1000) -> list[ItemRecord]: ...
    def cancel(self, account: str, job_id: str) -> JobRecord | None: ...
    def claim_item(self, owner: str, lease_s: float, max_attempts: int = 3) -> tuple[ItemRecord, bool] | None: ...
    def renew(self, owner: str, keys: list[tuple[str, int]], lease_s: float) -> set[tuple[str, int]]: ...
    def items_by_request(self, request_ids: list[str]) -> list[ItemRecord]: ...
    def finish_item(self, owner: str, item: ItemRecord, state: str, result: dict | None = None,
                    error: dict | None = None, billable: bool = False, outputs: list[str] | None = None) -> bool: ...
    def release_item(self, owner: str, item: ItemRecord, delay_s: float = 0.0) -> bool: ...
    def claim_settled_job(self, owner: str, lease_s: float) -> JobRecord | None: ...
    def complete_job(self, owner: str, job_id: str, state: str, output: dict | None = None,
                     error: dict | None = None) -> bool: ...
    def add_delivery(self, job: JobRecord, event: str, payload: str) -> str: ...
    def claim_delivery(self, owner: str, lease_s: float,
                       per_account: int | None = None) -> DeliveryRecord | None: ...
    def record_attempt(self, owner: str, delivery_id: str, attempt: dict[str, Any], next_at: float | None,
                       state: str, lease_until: float | None = None) -> bool: ...
    def deliveries(self, job_id: str) -> list[DeliveryRecord]: ...
    def webhook_secrets(self, account: str) -> list[str]: ...
    def webhook_secret(self, account: str) -> tuple[str, float]: ...
    def rotate_webhook_secret(self, account: str, grace_s: float) -> tuple[str, float]: ...
    def idempotency_begin(self, scope: str, route: str, key: str, fingerprint: str,
                          ttl_s: float) -> IdempotencyResult: ...
    def idempotency_save(self, scope: str, route: str, key: str, status_code: int, response: dict) -> None: ...
    def idempotency_release(self, scope: str, route: str, key: str) -> None: ...
    def sweep(self, now: float | None = None) -> list[tuple[JobRecord, list[ItemRecord]]]: ...



_JOB_COLS = ("job_id, account, kind, state, params, base_url, webhook_url, webhook_events, created_at, started_at, "
             "finished_at, expires_at, output, error")
_ITEM_COLS = ("job_id, idx, external_id, source, request_id, state, attempts, owner, result, error, billable, "
              "started_at, finished_at, outputs")


_LIVE = "(expires_at IS NULL OR expires_at>?)"   # a job expires `ttl_s` after it ends, never while active


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class SqlJobStore:
    """Jobs on the service's database: shared by the ingress replicas and the runners of every node it reaches."""

    def __init__(self, db: Database, clock: Clock = system_clock) -> None:
        self.db = db
        self.uri = db.url
        self.clock = clock   # leases, retry delays, TTLs and secret grace periods read it (tests move it)

    # ------------------------------------------------------------ plumbing
    def _tx(self) -> Any:
        """One write transaction (SQLite: the file's write lock, taken up front)."""
        return self.db.transaction()

    def _read(self) -> Any:
        return self.db.transaction(write=False)

    # ------------------------------------------------------------ jobs
    def create_job(self, account: str, kind: str, params: dict[str, Any], items: list[tuple[str | None, dict]],
                   base_url: str, webhook_url: str | None = None, webhook_events: list[str] | None = None,
                   ttl_s: float = 86400.0, job_id: str | None = None) -> JobRecord:
        """A queued job with its items, in one transaction: accepted work is either all there or not at all."""
        job_id = job_id or new_job_id()
        now = self.clock()
        with self._tx() as db:
            db.execute(f"INSERT INTO jobs ({_JOB_COLS}, ttl_s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (job_id, account, kind, QUEUED, json.dumps(params), base_url, webhook_url,
                        json.dumps(list(webhook_events or [])), now, None, None, None, None, None, ttl_s))
            db.executemany("INSERT INTO items (job_id, idx, external_id, source, request_id, state) "
                           "VALUES (?,?,?,?,?,?)",
                           [(job_id, i, ext, json.dumps(src), new_request_id(), QUEUED)
                            for i, (ext, src) in enumerate(items)])
        job = self.get_job(account, job_id)
        assert job is not None
        return job

    def _job(self, db: Tx, row: tuple) -> JobRecord:
        job = JobRecord(job_id=row[0], account=row[1], kind=row[2], state=row[3], params=json.loads(row[4]),
                        base_url=row[5], webhook_url=row[6], webhook_events=json.loads(row[7]), created_at=row[8],
                        started_at=row[9], finished_at=row[10], expires_at=row[11], output=_loads(row[12]),
                        error=_loads(row[13]))
        job.counts = dict(db.execute("SELECT state, COUNT(*) FROM items WHERE job_id=? GROUP BY state",
                                     (job.job_id,)).fetchall())
        return job

    def get_job(self, account: str, job_id: str) -> JobRecord | None:
        """The account's job, or None when missing, expired or another account's (callers answer 404)."""
        with self._read() as db:
            row = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE job_id=? AND account=? AND {_LIVE}",
                             (job_id, account, self.clock())).fetchone()
            return self._job(db, row) if row else None

    def list_jobs(self, account: str, limit: int = 50, kind: str | None = None) -> list[JobRecord]:
        with self._read() as db:
            rows = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE account=? AND {_LIVE} "
                              "AND (CAST(? AS TEXT) IS NULL OR kind=?) ORDER BY created_at DESC LIMIT ?",
                              (account, self.clock(), kind, kind, limit)).fetchall()
            return [self._job(db, r) for r in rows]

    def items(self, account: str, job_id: str, offset: int = 0, limit: int = 1000) -> list[ItemRecord]:
        with self._read() as db:
            if db.execute("SELECT 1 FROM jobs WHERE job_id=? AND account=?", (job_id, account)).fetchone() is None:
                return []
            rows = db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE job_id=? ORDER BY idx LIMIT ? OFFSET ?",
                              (job_id, limit, offset)).fetchall()
        return [_item(r, account) for r in rows]

    def cancel(self, account: str, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job: every unfinished item becomes canceled (a running item's result will be
        refused), the job ends now. A finished job is returned unchanged."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute(f"SELECT state, ttl_s FROM jobs WHERE job_id=? AND account=? AND {_LIVE}",
                             (job_id, account, now)).fetchone()
            if row is None:
                return None
            if row[0] in ACTIVE:
                db.execute("UPDATE items SET state=?, owner=NULL, finished_at=? WHERE job_id=? AND state IN (?,?)",
                           (CANCELED, now, job_id, QUEUED, RUNNING))
                db.execute("UPDATE jobs SET state=?, finished_at=?, expires_at=?, owner=NULL WHERE job_id=?",
                           (CANCELED, now, now + row[1], job_id))
        return self.get_job(account, job_id)

    # ------------------------------------------------------------ items: claim, renew, finish
    def claim_item(self, owner: str, lease_s: float, max_attempts: int = 3) -> tuple[ItemRecord, bool] | None:
        """The next item to run (oldest job first), leased to `owner`; True when this claim started its job.

        A running item whose lease expired (its runner died) is taken again, unless it has used `max_attempts`
        claims: then it fails with `stage_unavailable` rather than crash-looping a runner. An item `owner` itself
        runs is never handed back to it, even when its lease lapsed (a runner whose loop was busy past the lease
        still runs it, and its result is still accepted while nobody else took the item)."""
        now = self.clock()
        with self._tx() as db:
            db.serialize("jobs:claim_item")
            while True:
                row = db.execute(
                    "SELECT i.job_id, i.idx, i.attempts FROM items i JOIN jobs j ON j.job_id=i.job_id "
                    "WHERE j.state IN (?,?) AND ((i.state=? AND i.not_before<=?) OR (i.state=? AND i.lease_until<? "
                    "AND COALESCE(i.owner, '')<>?)) ORDER BY j.created_at, i.idx LIMIT 1",
                    (QUEUED, RUNNING, QUEUED, now, RUNNING, now, owner)).fetchone()
                if row is None:
                    return None
                job_id, idx, attempts = row
                if attempts >= max_attempts:
                    error = {"error": {"code": "stage_unavailable", "field": None,
                                       "message": f"the item was interrupted {attempts} times; giving up"}}
                    db.execute("UPDATE items SET state=?, error=?, owner=NULL, finished_at=? WHERE job_id=? AND idx=?",
                               (FAILED, json.dumps(error), now, job_id, idx))
                    continue
                db.execute("UPDATE items SET state=?, owner=?, lease_until=?, attempts=attempts+1, "
                           "started_at=COALESCE(started_at, ?) WHERE job_id=? AND idx=?",
                           (RUNNING, owner, now + lease_s, now, job_id, idx))
                started = db.execute("UPDATE jobs SET state=?, started_at=? WHERE job_id=? AND state=?",
                                     (RUNNING, now, job_id, QUEUED)).rowcount > 0
                item = db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE job_id=? AND idx=?", (job_id, idx)).fetchone()
                account = db.execute("SELECT account FROM jobs WHERE job_id=?", (job_id,)).fetchone()[0]
                return _item(item, account), started

    def items_by_request(self, request_ids: list[str]) -> list[ItemRecord]:
        """The items of these request ids, of any account (the runner settles the credit holds of finished items)."""
        out: list[ItemRecord] = []
        with self._read() as db:
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start:start + 500]
                rows = db.execute(f"SELECT {', '.join('i.' + c for c in _ITEM_COLS.split(', '))}, j.account "
                                  "FROM items i JOIN jobs j ON j.job_id=i.job_id "
                                  f"WHERE i.request_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                out.extend(_item(r[:-1], r[-1]) for r in rows)
        return out

    def renew(self, owner: str, keys: list[tuple[str, int]], lease_s: float) -> set[tuple[str, int]]:
        """Extend the leases of `owner`'s running items; returns the ones it still holds (the others were canceled
        or taken over, and their work should stop)."""
        held: set[tuple[str, int]] = set()
        with self._tx() as db:
            for job_id, idx in keys:
                cur = db.execute("UPDATE items SET lease_until=? WHERE job_id=? AND idx=? AND owner=? AND state=?",
                                 (self.clock() + lease_s, job_id, idx, owner, RUNNING))
                if cur.rowcount:
                    held.add((job_id, idx))
        return held

    def finish_item(self, owner: str, item: ItemRecord, state: str, result: dict | None = None,
                    error: dict | None = None, billable: bool = False, outputs: list[str] | None = None) -> bool:
        """Record an item's outcome; refused (False) unless `owner` still holds it running, so an item is finished
        once, by one runner, and never after its job was canceled."""
        with self._tx() as db:
            cur = db.execute("UPDATE items SET state=?, result=?, error=?, billable=?, finished_at=?, owner=NULL, "
                             "outputs=? WHERE job_id=? AND idx=? AND owner=? AND state=?",
                             (state, json.dumps(result) if result is not None else None,
                              json.dumps(error) if error is not None else None, int(billable), self.clock(),
                              json.dumps(outputs or []), item.job_id, item.idx, owner, RUNNING))
            return cur.rowcount > 0

    def release_item(self, owner: str, item: ItemRecord, delay_s: float = 0.0) -> bool:
        """Give a held item back to the queue (a transient failure), to be claimed again after `delay_s`."""
        with self._tx() as db:
            cur = db.execute("UPDATE items SET state=?, owner=NULL, lease_until=NULL, not_before=? "
                             "WHERE job_id=? AND idx=? AND owner=? AND state=?",
                             (QUEUED, self.clock() + delay_s, item.job_id, item.idx, owner, RUNNING))
            return cur.rowcount > 0

    # ------------------------------------------------------------ jobs: finalise
    def claim_settled_job(self, owner: str, lease_s: float) -> JobRecord | None:
        """An active job whose items have all finished, leased to `owner` to build its output and end it."""
        now = self.clock()
        with self._tx() as db:
            db.serialize("jobs:claim_settled_job")
            row = db.execute(
                "SELECT job_id FROM jobs j WHERE state IN (?,?) AND (owner IS NULL OR lease_until<?) "
                "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.job_id=j.job_id AND i.state IN (?,?)) "
                "ORDER BY created_at LIMIT 1", (QUEUED, RUNNING, now, QUEUED, RUNNING)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET owner=?, lease_until=? WHERE job_id=?", (owner, now + lease_s, row[0]))
            job = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE job_id=?", (row[0],)).fetchone()
            return self._job(db, job)

    def complete_job(self, owner: str, job_id: str, state: str, output: dict | None = None,
                     error: dict | None = None) -> bool:
        """End a job the owner finalised; its outputs expire `ttl_s` after this."""
        now = self.clock()
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state=?, output=?, error=?, finished_at=?, expires_at=?+ttl_s, "
                             "owner=NULL WHERE job_id=? AND owner=? AND state IN (?,?)",
                             (state, json.dumps(output) if output is not None else None,
                              json.dumps(error) if error is not None else None, now, now, job_id, owner,
                              QUEUED, RUNNING))
            return cur.rowcount > 0

    # ------------------------------------------------------------ webhook deliveries
    def add_delivery(self, job: JobRecord, event: str, payload: str) -> str:
        delivery_id = "msg_" + secrets.token_hex(12)
        now = self.clock()
        with self._tx() as db:
            db.execute("INSERT INTO deliveries (delivery_id, job_id, event, url, payload, state, created_at, next_at) "
                       "VALUES (?,?,?,?,?,?,?,?)",
                       (delivery_id, job.job_id, event, job.webhook_url or "", payload, PENDING, now, now))
        return delivery_id

    def claim_delivery(self, owner: str, lease_s: float,
                       per_account: int | None = None) -> DeliveryRecord | None:
        """The next due delivery, leased to `owner` (a runner that dies mid-send leaves it to the next one). One
        message of a job is in flight at a time, so a job's events arrive in order while the receiver accepts them;
        a message being retried does not hold back the later ones. An account has at most `per_account` messages
        in flight over every runner, and due messages of accounts with fewer in flight go first: a slow receiver
        costs its own account's sends, not everyone's."""
        now = self.clock()
        limit = per_account if per_account is not None else 2**62
        with self._tx() as db:
            db.serialize("jobs:claim_delivery")
            row = db.execute(
                "WITH busy AS (SELECT k.account, COUNT(*) AS n FROM deliveries e JOIN jobs k ON k.job_id=e.job_id "
                "WHERE e.state=? AND e.lease_until>=? GROUP BY k.account) "
                "SELECT d.delivery_id FROM deliveries d JOIN jobs j ON j.job_id=d.job_id "
                "LEFT JOIN busy b ON b.account=j.account WHERE d.state=? AND d.next_at<=? "
                "AND (d.owner IS NULL OR d.lease_until<?) AND NOT EXISTS (SELECT 1 FROM deliveries e "
                "WHERE e.job_id=d.job_id AND e.state=? AND e.lease_until>=?) AND COALESCE(b.n, 0)<? "
                "ORDER BY COALESCE(b.n, 0), d.next_at, d.created_at LIMIT 1",
                (PENDING, now, PENDING, now, now, PENDING, now, limit)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE deliveries SET owner=?, lease_until=? WHERE delivery_id=?",
                       (owner, now + lease_s, row[0]))
            return self._deliveries(db, "d.delivery_id=?", row[0])[0]

    def record_attempt(self, owner: str, delivery_id: str, attempt: dict[str, Any], next_at: float | None,
                       state: str, lease_until: float | None = None) -> bool:
        """One send's outcome (every attempt stays visible in the job's status); `next_at` schedules a retry.
        Refused (False) unless `owner` still holds the message, under the claim whose `lease_until` it was given:
        a send that outlived its lease (and so may overlap the next claim's send) does not overwrite that claim."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM deliveries WHERE delivery_id=? AND owner=? "
                          "AND (CAST(? AS DOUBLE PRECISION) IS NULL OR lease_until=?)",
                          (delivery_id, owner, lease_until, lease_until)).fetchone() is None:
                return False
            n = db.execute("SELECT COUNT(*) FROM delivery_attempts WHERE delivery_id=?", (delivery_id,)).fetchone()[0]
            db.execute("INSERT INTO delivery_attempts VALUES (?,?,?,?,?,?)",
                       (delivery_id, n + 1, attempt.get("at", self.clock()), attempt.get("status_code"),
                        attempt.get("error"), attempt.get("duration_ms")))
            db.execute("UPDATE deliveries SET state=?, next_at=?, owner=NULL, lease_until=NULL WHERE delivery_id=?",
                       (state, next_at if next_at is not None else self.clock(), delivery_id))
        return True

    def deliveries(self, job_id: str) -> list[DeliveryRecord]:
        with self._read() as db:
            return self._deliveries(db, "d.job_id=?", job_id)

    def _deliveries(self, db: Tx, where: str, arg: str) -> list[DeliveryRecord]:
        rows = db.execute("SELECT d.delivery_id, d.job_id, d.event, d.url, d.payload, d.state, d.created_at, "
                          f"d.next_at, j.account, d.lease_until FROM deliveries d JOIN jobs j ON j.job_id=d.job_id WHERE {where} "
                          "ORDER BY d.created_at", (arg,)).fetchall()
        out = []
        for r in rows:
            attempts = db.execute("SELECT n, at, status_code, error, duration_ms FROM delivery_attempts "
                                  "WHERE delivery_id=? ORDER BY n", (r[0],)).fetchall()
            out.append(DeliveryRecord(*r[:8], attempts=[
                {"attempt": a[0], "at": a[1], "status_code": a[2], "error": a[3], "duration_ms": a[4]}
                for a in attempts], account=r[8], lease_until=r[9]))
        return out

    # ------------------------------------------------------------ webhook secrets
    def webhook_secret(self, account: str) -> tuple[str, float]:
        """The account's signing secret (created on first use) and when it was made."""
        with self._tx() as db:
            db.serialize(f"jobs:webhook_secret:{account}")
            row = db.execute("SELECT secret, created_at FROM webhook_secrets WHERE account=?", (account,)).fetchone()
            if row:
                return row[0], row[1]
            secret, now = _new_secret(), self.clock()
            db.execute("INSERT INTO webhook_secrets (account, secret, created_at) VALUES (?,?,?)",
                       (account, secret, now))
            return secret, now

    def rotate_webhook_secret(self, account: str, grace_s: float) -> tuple[str, float]:
        """A new secret; the old one keeps signing beside it for `grace_s`, so receivers can switch without a gap."""
        self.webhook_secret(account)
        secret, now = _new_secret(), self.clock()
        with self._tx() as db:
            db.execute("UPDATE webhook_secrets SET previous=secret, previous_until=?, secret=?, created_at=? "
                       "WHERE account=?", (now + grace_s, secret, now, account))
        return secret, now

    def webhook_secrets(self, account: str) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the previous one during its grace."""
        current, _ = self.webhook_secret(account)
        with self._read() as db:
            row = db.execute("SELECT previous, previous_until FROM webhook_secrets WHERE account=?",
                             (account,)).fetchone()
        return [current] + ([row[0]] if row and row[0] and (row[1] or 0) > self.clock() else [])

    # ------------------------------------------------------------ idempotency
    def idempotency_begin(self, scope: str, route: str, key: str, fingerprint: str,
                          ttl_s: float) -> IdempotencyResult:
        """Reserve `key` for this request body (its `fingerprint`), or say what the key already stands for."""
        now = self.clock()
        with self._tx() as db:
            db.serialize(f"jobs:idempotency:{scope}:{route}:{key}")
            db.execute("DELETE FROM idempotency WHERE scope=? AND route=? AND key=? AND expires_at<?",
                       (scope, route, key, now))
            row = db.execute("SELECT fingerprint, status_code, response FROM idempotency "
                             "WHERE scope=? AND route=? AND key=?", (scope, route, key)).fetchone()
            if row is None:
                db.execute("INSERT INTO idempotency (scope, route, key, fingerprint, created_at, expires_at) "
                           "VALUES (?,?,?,?,?,?)", (scope, route, key, fingerprint, now, now + ttl_s))
                return IdempotencyResult("new")
        if row[0] != fingerprint:
            return IdempotencyResult("conflict")
        if row[1] is None:
            return IdempotencyResult("in_progress")
        return IdempotencyResult("replay", json.loads(row[2]), row[1])

    def idempotency_save(self, scope: str, route: str, key: str, status_code: int, response: dict) -> None:
        with self._tx() as db:
            db.execute("UPDATE idempotency SET status_code=?, response=? WHERE scope=? AND route=? AND key=?",
                       (status_code, json.dumps(response), scope, route, key))

    def idempotency_release(self, scope: str, route: str, key: str) -> None:
        """Forget a reservation whose request failed transiently, so a retry with the same key runs again."""
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE scope=? AND route=? AND key=? AND status_code IS NULL",
                       (scope, route, key))

    # ------------------------------------------------------------ expiry
    def sweep(self, now: float | None = None) -> list[tuple[JobRecord, list[ItemRecord]]]:
        """Delete expired jobs (with their items and deliveries) and idempotency records; returns what was removed
        so the caller can delete the stored outputs and uploads they point to."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            rows = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE expires_at<=? AND state NOT IN (?,?)",
                              (now, QUEUED, RUNNING)).fetchall()
            removed = []
            for row in rows:
                job = self._job(db, row)
                items = [_item(r, job.account) for r in db.execute(
                    f"SELECT {_ITEM_COLS} FROM items WHERE job_id=?", (job.job_id,)).fetchall()]
                removed.append((job, items))
                db.execute("DELETE FROM jobs WHERE job_id=?", (job.job_id,))
            db.execute("DELETE FROM idempotency WHERE expires_at<?", (now,))
        return removed


def _item(row: tuple, account: str) -> ItemRecord:
    return ItemRecord(job_id=row[0], idx=row[1], external_id=row[2], source=json.loads(row[3]), request_id=row[4],
                      state=row[5], attempts=row[6], owner=row[7], result=_loads(row[8]), error=_loads(row[9]),
                      billable=bool(row[10]), started_at=row[11], finished_at=row[12],
                      outputs=_loads(row[13]) or [], account=account)


def _new_secret() -> str:
    from avatar.webhooks import new_secret
    return new_secret()


class SqliteJobStore(SqlJobStore):
    """The embedded default: one SQLite file (WAL) shared by the ingress replicas and the runners of one node."""

    def __init__(self, path: str | os.PathLike[str], clock: Clock = system_clock) -> None:
        db = SqliteDatabase(path)
        db.migrate()
        super().__init__(db, clock)
        self.path = db.path


def open_job_store(uri: str | None = None, clock: Clock = system_clock) -> JobStore:
    """The store of the database at `uri` (default `AVATAR_JOBS_URI`, else the service's database
    `AVATAR_DATABASE_URL`, else `<data dir>/jobs.sqlite3`): `sqlite:///relative/path`, `sqlite:////absolute/path` or
    `postgresql://user@host/db`. Other backends register in `BACKENDS`. `clock` is what its leases and TTLs read."""
    uri = uri or settings().resolved_jobs_uri
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme not in BACKENDS:
        raise ValueError(f"unsupported job store URI {redact(uri)!r}; schemes: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[scheme](uri, clock)


def _open_sqlite(uri: str, clock: Clock) -> SqliteJobStore:
    path = sqlite_path(uri)
    if path == ":memory:":
        raise ValueError("the job store must be a file shared by the service's processes, not :memory:")
    return SqliteJobStore(path, clock)


def _open_shared(uri: str, clock: Clock) -> SqlJobStore:
    return SqlJobStore(open_database(uri), clock)


BACKENDS: dict[str, Any] = {"sqlite": _open_sqlite, "postgresql": _open_shared, "postgres": _open_shared}
