"""API keys on the HTTP surface: `Authorization: Bearer <api_key>` resolved to an account id.

The account store is opened once per ingress replica (`AVATAR_ACCOUNTS_URI`, else `<data dir>/accounts.sqlite3`) and
every lookup runs in a worker thread, so the event loop never waits on the database. Keys are never logged or echoed:
errors say what is wrong with the header, not what it contained.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Mapping

from avatar.contracts import is_style_token
from avatar.errors import NotFound, Unauthorized
from avatar.job import AvatarJob
from avatar.settings import settings
from avatar.store.accounts import AccountStore, open_account_store


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header; None when there is no header.

    A header that is present but not a bearer credential raises Unauthorized (401), like a wrong key.
    """
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        raise Unauthorized("the Authorization header must be 'Bearer <api key>'", field="authorization",
                           code="invalid_authorization")
    return key


class Authenticator:
    """Resolves request credentials to account ids through one account store per replica (opened on first use)."""

    def __init__(self, uri: str | None = None, store: AccountStore | None = None) -> None:
        self.uri = uri or settings().resolved_accounts_uri
        self._store = store
        self._lock = threading.Lock()

    @property
    def store(self) -> AccountStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_account_store(self.uri)
        return self._store

    async def call(self, method: str, *args: Any) -> Any:
        """`store.<method>(*args)` in a worker thread (SQLite or a remote store must not block the event loop)."""
        return await asyncio.to_thread(lambda: getattr(self.store, method)(*args))

    async def account(self, headers: Mapping[str, str]) -> str | None:
        """The account of the request's key; None without a key; Unauthorized (401) for a wrong or revoked key."""
        key = bearer_key(headers)
        if key is None:
            return None
        account = await self.call("authenticate", key)
        if account is None:
            raise Unauthorized("the API key is not valid", field="authorization", code="invalid_api_key")
        return account

    async def require(self, headers: Mapping[str, str]) -> str:
        """The request's account; Unauthorized (401) when no key was sent or it is wrong."""
        account = await self.account(headers)
        if account is None:
            raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <api key>'",
                               field="authorization", code="missing_api_key")
        return account

    async def authorize_style(self, account: str | None, job: AvatarJob) -> None:
        """Built-in styles are open to every caller; a custom token needs a key and must be the account's own
        (another account's token is a 404, exactly like a missing one). Sets `job.account`."""
        job.account = account
        if not is_style_token(job.style):
            return
        if account is None:
            raise Unauthorized("custom styles need the account's API key: send 'Authorization: Bearer <api key>'",
                               field="authorization", code="missing_api_key")
        if await self.call("get_style", account, job.style) is None:
            raise style_not_found(job.style)


def style_not_found(token: str) -> NotFound:
    return NotFound(f"no style {token!r}", field="style", code="style_not_found")
