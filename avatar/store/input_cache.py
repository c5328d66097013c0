"""Opt-in 24 h cache of normalised input photos (`cache_input: true`), so a platform can re-generate (another style,
another platform) or generate after a pre-flight check without uploading the photo again.

Stateless by default: nothing is kept unless the caller asks, and only a photo whose face was accepted is kept.
Entries are keyed by an unguessable id under the caller's account, count against the account's quota (entries and
bytes), expire after `ttl_s`, and are swept lazily. Callers without an API key may cache only where the operator
allowed it (`anonymous`), and then share one quota.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from avatar.clock import Clock, system_clock
from avatar.errors import NotFound, TooManyRequests, Unauthorized
from avatar.store.storage import Storage

INPUT_ID_RE = re.compile(r"^in_[A-Za-z0-9_-]{22}$")
ANONYMOUS = "public"


@dataclass(frozen=True)
class InputQuota:
    """What one account (or all anonymous callers together) may keep at once."""

    max_entries: int = 100
    max_bytes: int = 256 * 2**20
    anonymous: bool = False      # callers without an API key may cache


class InputCache:
    def __init__(self, storage: Storage, ttl_s: int = 24 * 3600, sweep_every_s: int = 600,
                 quota: InputQuota = InputQuota(), clock: Clock = system_clock) -> None:
        self.storage = storage
        self.clock = clock   # what expiry is measured against (objects' mtimes are the store's clock)
        self.ttl_s = ttl_s
        self.sweep_every_s = sweep_every_s
        self.quota = quota
        self._last_sweep = 0.0

    @staticmethod
    def _key(account: str | None, input_id: str) -> str:
        return f"inputs/{account or ANONYMOUS}/{input_id}"

    def admit(self, account: str | None, adding: int = 0) -> None:
        """Refuse before any work when the caller may not cache: no API key (unless anonymous caching is on), or the
        account's live entries would pass the quota with `adding` more bytes."""
        if account is None and not self.quota.anonymous:
            raise Unauthorized("cache_input needs the account's API key: send 'Authorization: Bearer <api key>'",
                               field="cache_input", code="cache_input_needs_api_key")
        entries, used = self._usage(account)
        if entries + (1 if adding else 0) > self.quota.max_entries or used + adding > self.quota.max_bytes:
            raise TooManyRequests(f"the account keeps {entries} cached inputs ({used} bytes); the quota is "
                                  f"{self.quota.max_entries} inputs and {self.quota.max_bytes} bytes, freed as they "
                                  f"expire", field="cache_input", code="input_quota_exceeded")

    def put(self, account: str | None, photo: bytes) -> tuple[str, int]:
        """Store `photo` (within the quota); returns (input_id, expires_at epoch seconds)."""
        self.maybe_sweep()
        self.admit(account, adding=len(photo))
        input_id = "in_" + secrets.token_urlsafe(16)
        self.storage.put(self._key(account, input_id), photo)
        return input_id, int(self.clock()) + self.ttl_s

    def get(self, account: str | None, input_id: str) -> bytes:
        """The cached photo; 404 when unknown, expired or another account's (indistinguishable on purpose)."""
        if not INPUT_ID_RE.match(input_id or ""):
            raise NotFound("input_id is not a cached input", field="input_id", code="input_not_found")
        key = self._key(account, input_id)
        modified = self.storage.modified(key)
        if modified is None or modified + self.ttl_s < self.clock():
            raise NotFound("input_id is unknown or has expired (inputs are kept 24 h)", field="input_id",
                           code="input_not_found")
        return self.storage.get(key)

    def _usage(self, account: str | None) -> tuple[int, int]:
        """Live (unexpired) entries of `account` and their bytes."""
        cutoff = self.clock() - self.ttl_s
        sizes = self.storage.sizes(f"inputs/{account or ANONYMOUS}", modified_after=cutoff)
        return len(sizes), sum(sizes.values())

    def maybe_sweep(self) -> int:
        """Delete expired entries, at most once per `sweep_every_s`; returns how many were removed."""
        now = self.clock()
        if now - self._last_sweep < self.sweep_every_s:
            return 0
        self._last_sweep = now
        removed = 0
        for key in self.storage.list("inputs"):
            modified = self.storage.modified(key)
            if modified is not None and modified + self.ttl_s < now:
                self.storage.delete(key)
                removed += 1
        return removed
