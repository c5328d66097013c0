"""Accounts, API keys and the per-account registry of custom style tokens.

API keys are `avk_<key id>.<secret>` with a 32-byte random secret. Only HMAC-SHA256(pepper, secret) is stored: a
leaked database alone neither reveals keys nor lets anyone test guesses without the pepper, which lives outside it
(`AVATAR_ACCOUNT_PEPPER` or a 0600 file beside the database). The key id is a public lookup handle, so the lookup
itself leaks nothing; the secret is compared with `hmac.compare_digest`. A random 256-bit secret needs no slow hash.

Every style query is scoped by account: another account's token is indistinguishable from a missing one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from avatar.contracts import is_style_token
from avatar.errors import InvalidRequest
from avatar.settings import settings

KEY_PREFIX = "avk_"


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    created_at: float


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

    def create_account(self, name: str) -> tuple[str, str]: ...
    def authenticate(self, api_key: str | None) -> str | None: ...
    def get_account(self, account_id: str) -> Account | None: ...
    def rotate_key(self, account_id: str) -> str: ...
    def register_style(self, account_id: str, token_id: str, manifest: dict[str, Any]) -> None: ...
    def get_style(self, account_id: str, token_id: str) -> StyleRecord | None: ...
    def list_styles(self, account_id: str) -> list[StyleRecord]: ...
    def delete_style(self, account_id: str, token_id: str) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(account_id),
    digest TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS styles (
    token_id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(account_id),
    manifest TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS styles_by_account ON styles(account_id, created_at);
"""


class SqliteAccountStore:
    """The embedded default: one SQLite file (created on first use) shared by replicas and training jobs (WAL mode).

    `path=":memory:"` keeps everything in this process (tests). A connection per call keeps it safe across threads.
    """

    def __init__(self, path: str | os.PathLike[str], pepper: bytes | None = None) -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._pepper = pepper or _load_pepper(None if self._memory else Path(self.path + ".pepper"))
        with self._conn() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._memory:
                if self._shared is None:
                    self._shared = sqlite3.connect(":memory:", check_same_thread=False)
                db = self._shared
            else:
                db = sqlite3.connect(self.path, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
            try:
                with db:   # one transaction: commit on success, roll back on error
                    yield db
            finally:
                if not self._memory:
                    db.close()

    def _digest(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def create_account(self, name: str) -> tuple[str, str]:
        """A new account and its first API key. The key is returned once and never stored."""
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise InvalidRequest("account name must be 1-200 characters", field="name", code="invalid_name")
        account_id = "acc_" + secrets.token_hex(8)
        with self._conn() as db:
            db.execute("INSERT INTO accounts VALUES (?, ?, ?)", (account_id, name, time.time()))
            api_key = self._insert_key(db, account_id)
        return account_id, api_key

    def _insert_key(self, db: sqlite3.Connection, account_id: str) -> str:
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?)", (key_id, account_id, self._digest(secret), time.time()))
        return f"{KEY_PREFIX}{key_id}.{secret}"

    def rotate_key(self, account_id: str) -> str:
        """Revoke every key of the account and issue a new one."""
        with self._conn() as db:
            if db.execute("SELECT 1 FROM accounts WHERE account_id=?", (account_id,)).fetchone() is None:
                raise KeyError(account_id)
            db.execute("DELETE FROM api_keys WHERE account_id=?", (account_id,))
            return self._insert_key(db, account_id)

    def authenticate(self, api_key: str | None) -> str | None:
        """The account id the key belongs to, or None (malformed, unknown or revoked key)."""
        key_id, secret = _split_key(api_key)
        with self._conn() as db:
            row = db.execute("SELECT account_id, digest FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        expected = row[1] if row else self._digest("\0absent")   # same work whether or not the id exists
        ok = hmac.compare_digest(self._digest(secret), expected)
        return row[0] if (row and ok) else None

    def get_account(self, account_id: str) -> Account | None:
        with self._conn() as db:
            row = db.execute("SELECT account_id, name, created_at FROM accounts WHERE account_id=?",
                             (account_id,)).fetchone()
        return Account(*row) if row else None

    def register_style(self, account_id: str, token_id: str, manifest: dict[str, Any]) -> None:
        """Record a trained token for its account. Token ids are global, so re-using one is refused."""
        if not is_style_token(token_id):
            raise InvalidRequest(f"invalid style token id {token_id!r}", field="style", code="invalid_style")
        with self._conn() as db:
            if db.execute("SELECT 1 FROM accounts WHERE account_id=?", (account_id,)).fetchone() is None:
                raise KeyError(account_id)
            db.execute("INSERT INTO styles VALUES (?, ?, ?, ?)",
                       (token_id, account_id, json.dumps(manifest, sort_keys=True), time.time()))

    def get_style(self, account_id: str, token_id: str) -> StyleRecord | None:
        """The account's token, or None when it is missing *or* belongs to another account (callers answer 404)."""
        with self._conn() as db:
            row = db.execute("SELECT account_id, token_id, manifest, created_at FROM styles "
                             "WHERE account_id=? AND token_id=?", (account_id, token_id)).fetchone()
        return _style(row) if row else None

    def list_styles(self, account_id: str) -> list[StyleRecord]:
        with self._conn() as db:
            rows = db.execute("SELECT account_id, token_id, manifest, created_at FROM styles WHERE account_id=? "
                              "ORDER BY created_at, token_id", (account_id,)).fetchall()
        return [_style(r) for r in rows]

    def delete_style(self, account_id: str, token_id: str) -> bool:
        """True when the account's token was removed; False when missing or another account's."""
        with self._conn() as db:
            cur = db.execute("DELETE FROM styles WHERE account_id=? AND token_id=?", (account_id, token_id))
        return cur.rowcount > 0


def _style(row: tuple) -> StyleRecord:
    return StyleRecord(account_id=row[0], token_id=row[1], manifest=json.loads(row[2]), created_at=row[3])


def _split_key(api_key: str | None) -> tuple[str, str]:
    if not api_key or not api_key.startswith(KEY_PREFIX) or "." not in api_key:
        return "", ""
    key_id, _, secret = api_key[len(KEY_PREFIX):].partition(".")
    return key_id, secret


def _load_pepper(path: Path | None) -> bytes:
    """`AVATAR_ACCOUNT_PEPPER`, else a random pepper written once (0600) beside the database."""
    return settings().pepper(path)


def open_account_store(uri: str | None = None) -> AccountStore:
    """The store named by `uri` (default `AVATAR_ACCOUNTS_URI`, else `<data dir>/accounts.sqlite3`).

    `sqlite:///relative/path`, `sqlite:////absolute/path`, `sqlite://:memory:`. Other backends register in `BACKENDS`.
    """
    uri = uri or settings().resolved_accounts_uri
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in BACKENDS:
        raise ValueError(f"unsupported account store URI {uri!r}; schemes: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[scheme](rest)


def _open_sqlite(rest: str) -> SqliteAccountStore:
    path = rest[1:] if rest.startswith("/") else rest   # sqlite:///rel -> rel, sqlite:////abs -> /abs
    return SqliteAccountStore(path or ":memory:")


BACKENDS: dict[str, Any] = {"sqlite": _open_sqlite}
