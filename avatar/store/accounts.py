"""Accounts, API keys and the per-account registry of custom style tokens.

API keys are `avk_<key id>.<secret>` with a 32-byte random secret. Only HMAC-SHA256(pepper, secret) is stored: a
leaked database alone neither reveals keys nor lets anyone test guesses without the pepper, which lives outside it
(`AVATAR_ACCOUNT_PEPPER`, or for the embedded SQLite file only, a 0600 file beside it). The key id is a public lookup handle, so the lookup
itself leaks nothing; the secret is compared with `hmac.compare_digest`. A random 256-bit secret needs no slow hash.

Every style query is scoped by account: another account's token is indistinguishable from a missing one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from avatar.contracts import is_style_token
from avatar.errors import InvalidRequest
from avatar.settings import settings
from avatar.store.database import Database, SqliteDatabase, Tx, open_database, redact, sqlite_path

KEY_PREFIX = "avk_"


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    created_at: float
    plan: str | None = None     # None: the operator's default plan


@dataclass(frozen=True)
class StyleRecord:
    """A registered style token: `manifest` is the token's JSON manifest (see `avatar.tokens`)."""

    account_id: str
    token_id: str
    manifest: dict[str, Any]
    created_at: float


@runtime_checkable
class AccountStore(Protocol):
    """What the HTTP layer and the training job need; implementations are chosen by URI (`open_account_store`)."""

    def create_account(self, name: str, plan: str | None = None) -> tuple[str, str]: ...
    def authenticate(self, api_key: str | None) -> str | None: ...
    def get_account(self, account_id: str) -> Account | None: ...
    def rotate_key(self, account_id: str) -> str: ...
    def set_plan(self, account_id: str, plan: str | None) -> None: ...
    def register_style(self, account_id: str, token_id: str, manifest: dict[str, Any]) -> None: ...
    def get_style(self, account_id: str, token_id: str) -> StyleRecord | None: ...
    def list_styles(self, account_id: str) -> list[StyleRecord]: ...
    def delete_style(self, account_id: str, token_id: str) -> bool: ...


class SqlAccountStore:
    """Accounts on the service's database (`avatar.store.database`): SQLite on one node, PostgreSQL for a cluster.

    The pepper comes from settings (`AVATAR_ACCOUNT_PEPPER`, or `AVATAR_SECRETS_DIR`); only an embedded SQLite file
    may fall back to a pepper generated beside it, because no other node needs to check its keys."""

    def __init__(self, db: Database, pepper: bytes | None = None) -> None:
        self.db = db
        self.uri = db.url
        beside = Path(db.path + ".pepper") if isinstance(db, SqliteDatabase) and db.path != ":memory:" else None
        self._pepper = pepper or settings().pepper(beside, shared=db.shared)

    def _digest(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def create_account(self, name: str, plan: str | None = None) -> tuple[str, str]:
        """A new account and its first API key. The key is returned once and never stored."""
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise InvalidRequest("account name must be 1-200 characters", field="name", code="invalid_name")
        account_id = "acc_" + secrets.token_hex(8)
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO accounts (account_id, name, created_at, plan) VALUES (?, ?, ?, ?)",
                       (account_id, name, time.time(), plan))
            api_key = self._insert_key(tx, account_id)
        return account_id, api_key

    def _insert_key(self, tx: Tx, account_id: str) -> str:
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        tx.execute("INSERT INTO api_keys (key_id, account_id, digest, created_at) VALUES (?, ?, ?, ?)",
                   (key_id, account_id, self._digest(secret), time.time()))
        return f"{KEY_PREFIX}{key_id}.{secret}"

    def _exists(self, tx: Tx, account_id: str) -> bool:
        return tx.execute("SELECT 1 FROM accounts WHERE account_id=?", (account_id,)).fetchone() is not None

    def rotate_key(self, account_id: str) -> str:
        """Revoke every key of the account and issue a new one."""
        with self.db.transaction() as tx:
            if not self._exists(tx, account_id):
                raise KeyError(account_id)
            tx.execute("DELETE FROM api_keys WHERE account_id=?", (account_id,))
            return self._insert_key(tx, account_id)

    def authenticate(self, api_key: str | None) -> str | None:
        """The account id the key belongs to, or None (malformed, unknown or revoked key)."""
        key_id, secret = _split_key(api_key)
        row = None
        if key_id:
            with self.db.transaction(write=False) as tx:
                row = tx.execute("SELECT account_id, digest FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        expected = row[1] if row else self._digest("\0absent")   # same work whether or not the id exists
        ok = hmac.compare_digest(self._digest(secret), expected)
        return row[0] if (row and ok) else None

    def get_account(self, account_id: str) -> Account | None:
        with self.db.transaction(write=False) as tx:
            row = tx.execute("SELECT account_id, name, created_at, plan FROM accounts WHERE account_id=?",
                             (account_id,)).fetchone()
        return Account(*row) if row else None

    def set_plan(self, account_id: str, plan: str | None) -> None:
        """Move the account to `plan` (None: the operator's default plan)."""
        with self.db.transaction() as tx:
            if tx.execute("UPDATE accounts SET plan=? WHERE account_id=?", (plan, account_id)).rowcount == 0:
                raise KeyError(account_id)

    def register_style(self, account_id: str, token_id: str, manifest: dict[str, Any]) -> None:
        """Record a trained token for its account. Token ids are global, so re-using one is refused (409)."""
        if not is_style_token(token_id):
            raise InvalidRequest(f"invalid style token id {token_id!r}", field="style", code="invalid_style")
        with self.db.transaction() as tx:
            if not self._exists(tx, account_id):
                raise KeyError(account_id)
            inserted = tx.execute("INSERT INTO styles (token_id, account_id, manifest, created_at) "
                                  "VALUES (?, ?, ?, ?) ON CONFLICT (token_id) DO NOTHING",
                                  (token_id, account_id, json.dumps(manifest, sort_keys=True), time.time())).rowcount
        if not inserted:
            raise InvalidRequest(f"style token {token_id!r} is already registered", field="style",
                                 code="style_exists", status=409)

    def get_style(self, account_id: str, token_id: str) -> StyleRecord | None:
        """The account's token, or None when it is missing *or* belongs to another account (callers answer 404)."""
        with self.db.transaction(write=False) as tx:
            row = tx.execute("SELECT account_id, token_id, manifest, created_at FROM styles "
                             "WHERE account_id=? AND token_id=?", (account_id, token_id)).fetchone()
        return _style(row) if row else None

    def list_styles(self, account_id: str) -> list[StyleRecord]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT account_id, token_id, manifest, created_at FROM styles WHERE account_id=? "
                              "ORDER BY created_at, token_id", (account_id,)).fetchall()
        return [_style(r) for r in rows]

    def delete_style(self, account_id: str, token_id: str) -> bool:
        """True when the account's token was removed; False when missing or another account's."""
        with self.db.transaction() as tx:
            cur = tx.execute("DELETE FROM styles WHERE account_id=? AND token_id=?", (account_id, token_id))
            return cur.rowcount > 0


class SqliteAccountStore(SqlAccountStore):
    """The embedded default: one SQLite file (created on first use) shared by replicas and training jobs (WAL mode).
    `path=":memory:"` keeps everything in this process (tests)."""

    def __init__(self, path: str | os.PathLike[str], pepper: bytes | None = None) -> None:
        db = SqliteDatabase(path)
        db.migrate()
        super().__init__(db, pepper)
        self.path = db.path


def _style(row: tuple) -> StyleRecord:
    return StyleRecord(account_id=row[0], token_id=row[1], manifest=json.loads(row[2]), created_at=row[3])


def _split_key(api_key: str | None) -> tuple[str, str]:
    if not api_key or not api_key.startswith(KEY_PREFIX) or "." not in api_key:
        return "", ""
    key_id, _, secret = api_key[len(KEY_PREFIX):].partition(".")
    return key_id, secret


def open_account_store(uri: str | None = None) -> AccountStore:
    """The store of the database at `uri` (default `AVATAR_DATABASE_URL`, else `<data dir>/accounts.sqlite3`).

    `sqlite:///relative/path`, `sqlite:////absolute/path`, `sqlite://:memory:`, `postgresql://user@host/db`."""
    uri = uri or settings().resolved_database_url
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme not in BACKENDS:
        raise ValueError(f"unsupported account store URI {redact(uri)!r}; schemes: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[scheme](uri)


def _open_sqlite(uri: str) -> SqliteAccountStore:
    return SqliteAccountStore(sqlite_path(uri))


def _open_shared(uri: str) -> SqlAccountStore:
    return SqlAccountStore(open_database(uri))


BACKENDS: dict[str, Any] = {"sqlite": _open_sqlite, "postgresql": _open_shared, "postgres": _open_shared}
