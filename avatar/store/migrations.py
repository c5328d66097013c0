"""Versioned schema of the service's database: a table of SQL steps, applied in order and recorded in
`schema_migrations`, on start-up (`open_database`) and by `avatar db migrate`.

A step is never edited once released: a change is a new step. Steps are written in SQL both SQLite and PostgreSQL run
(TEXT, BIGINT, DOUBLE PRECISION, BOOLEAN; no engine-specific defaults). Written by hand because the schema is small
and two engines share it: Alembic would bring SQLAlchemy for a dozen tables.

Steps 1 and 3 use `IF NOT EXISTS` with the columns the account and job files had before versioning, so an existing
`accounts.sqlite3` or `jobs.sqlite3` adopts the versioned schema in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol


class Transactional(Protocol):
    """What migrating needs of a `avatar.store.database.Database` (declared here: that module imports this one)."""

    def transaction(self, write: bool = True) -> Any: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "accounts, API keys and custom styles", (
        "CREATE TABLE IF NOT EXISTS accounts (account_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, "
        "account_id TEXT NOT NULL REFERENCES accounts(account_id), digest TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS styles (token_id TEXT PRIMARY KEY, "
        "account_id TEXT NOT NULL REFERENCES accounts(account_id), manifest TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX IF NOT EXISTS styles_by_account ON styles(account_id, created_at)",
        "CREATE INDEX IF NOT EXISTS api_keys_by_account ON api_keys(account_id)",
    )),
    Migration(2, "plans, credits, seats, delivered avatars, feedback and rate limits", (
        "ALTER TABLE accounts ADD COLUMN plan TEXT",
        # the balance each charge decrements atomically (UPDATE ... WHERE balance >= cost)
        "CREATE TABLE credit_balances (account_id TEXT PRIMARY KEY REFERENCES accounts(account_id), "
        "balance BIGINT NOT NULL)",
        "CREATE TABLE credit_grants (grant_id TEXT PRIMARY KEY, "
        "account_id TEXT NOT NULL REFERENCES accounts(account_id), amount BIGINT NOT NULL, note TEXT, "
        "created_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX credit_grants_by_account ON credit_grants(account_id, created_at)",
        # one row per generate request of an account, keyed by request id: a charge can never be taken twice
        "CREATE TABLE avatars (request_id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(account_id), "
        "style TEXT NOT NULL, platform TEXT NOT NULL, external_id TEXT, state TEXT NOT NULL, "
        "held BIGINT NOT NULL, charged BIGINT NOT NULL, billable BOOLEAN NOT NULL, seat_s DOUBLE PRECISION, "
        "created_at DOUBLE PRECISION NOT NULL, settled_at DOUBLE PRECISION)",
        "CREATE INDEX avatars_by_account ON avatars(account_id, created_at)",
        "CREATE INDEX avatars_by_state ON avatars(state, created_at)",
        "CREATE TABLE seats (account_id TEXT NOT NULL REFERENCES accounts(account_id), external_id TEXT NOT NULL, "
        "opened_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, "
        "PRIMARY KEY (account_id, external_id))",
        "CREATE TABLE feedback (request_id TEXT PRIMARY KEY REFERENCES avatars(request_id), "
        "account_id TEXT NOT NULL, verdict TEXT NOT NULL, reason TEXT, created_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX feedback_by_time ON feedback(created_at)",
        "CREATE TABLE rate_buckets (bucket TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, "
        "updated_at DOUBLE PRECISION NOT NULL)",
    )),
    Migration(3, "jobs, batch items, webhook deliveries and secrets, idempotency records", (
        "CREATE TABLE IF NOT EXISTS jobs ( job_id TEXT PRIMARY KEY, account TEXT NOT NULL, kind TEXT NOT "
        "NULL, state TEXT NOT NULL, params TEXT NOT NULL, base_url TEXT NOT NULL, webhook_url TEXT, "
        "webhook_events TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION, "
        "finished_at DOUBLE PRECISION, expires_at DOUBLE PRECISION, ttl_s DOUBLE PRECISION NOT NULL, output "
        "TEXT, error TEXT, owner TEXT, lease_until DOUBLE PRECISION)",
        "CREATE INDEX IF NOT EXISTS jobs_by_account ON jobs(account, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state)",
        "CREATE TABLE IF NOT EXISTS items ( job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE, "
        "idx BIGINT NOT NULL, external_id TEXT, source TEXT NOT NULL, request_id TEXT NOT NULL, state TEXT "
        "NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, owner TEXT, lease_until DOUBLE PRECISION, not_before "
        "DOUBLE PRECISION NOT NULL DEFAULT 0, result TEXT, error TEXT, billable BIGINT NOT NULL DEFAULT 0, "
        "started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, outputs TEXT, PRIMARY KEY (job_id, idx))",
        "CREATE INDEX IF NOT EXISTS items_by_state ON items(state, not_before)",
        "CREATE TABLE IF NOT EXISTS deliveries ( delivery_id TEXT PRIMARY KEY, job_id TEXT NOT NULL "
        "REFERENCES jobs(job_id) ON DELETE CASCADE, event TEXT NOT NULL, url TEXT NOT NULL, payload TEXT NOT "
        "NULL, state TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, next_at DOUBLE PRECISION NOT NULL, "
        "owner TEXT, lease_until DOUBLE PRECISION)",
        "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at)",
        "CREATE TABLE IF NOT EXISTS delivery_attempts ( delivery_id TEXT NOT NULL REFERENCES "
        "deliveries(delivery_id) ON DELETE CASCADE, n BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, "
        "status_code BIGINT, error TEXT, duration_ms DOUBLE PRECISION, PRIMARY KEY (delivery_id, n))",
        "CREATE TABLE IF NOT EXISTS webhook_secrets ( account TEXT PRIMARY KEY, secret TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL, previous TEXT, previous_until DOUBLE PRECISION)",
        "CREATE TABLE IF NOT EXISTS idempotency ( scope TEXT NOT NULL, route TEXT NOT NULL, key TEXT NOT "
        "NULL, fingerprint TEXT NOT NULL, status_code BIGINT, response TEXT, created_at DOUBLE PRECISION NOT "
        "NULL, expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, route, key))",
    )),
)

LATEST = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release than this one."""


def apply(db: Transactional, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the missing steps in one transaction under the migration lock; returns the versions applied.

    Replicas that start together wait for each other on the lock and the later ones find nothing left to do."""
    with db.transaction() as tx:
        lock = getattr(db, "lock_migrations", None)
        if lock is not None:
            lock(tx)
        tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, "
                   "applied_at DOUBLE PRECISION NOT NULL)")
        done = {int(row[0]) for row in tx.execute("SELECT version FROM schema_migrations").fetchall()}
        newest = max(done, default=0)
        if newest > migrations[-1].version:
            raise SchemaTooNew(f"the database schema is at version {newest}, newer than this release's "
                               f"{migrations[-1].version}: upgrade the service before using this database")
        applied = []
        for step in migrations:
            if step.version in done:
                continue
            for statement in step.statements:
                tx.execute(statement)
            tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                       (step.version, step.name, time.time()))
            applied.append(step.version)
        return applied


def current_version(db: Transactional) -> int:
    try:
        with db.transaction(write=False) as tx:
            row = tx.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    except Exception:  # noqa: BLE001 - no table yet: nothing applied
        return 0
    return int(row[0] or 0)
