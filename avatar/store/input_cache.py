"""Opt-in 24 h cache of normalised input photos (`cache_input: true`), so a platform can re-generate (another style,
another platform) or generate after a pre-flight check without uploading the photo again.

Stateless by default: nothing is kept unless the caller asks. Entries are keyed by an unguessable id under the
caller's account, expire after `ttl_s`, and are swept lazily.
"""

from __future__ import annotations

import re
import secrets
import time

from avatar.errors import NotFound
from avatar.store.storage import Storage

INPUT_ID_RE = re.compile(r"^in_[A-Za-z0-9_-]{22}$")


class InputCache:
    def __init__(self, storage: Storage, ttl_s: int = 24 * 3600, sweep_every_s: int = 600) -> None:
        self.storage = storage
        self.ttl_s = ttl_s
        self.sweep_every_s = sweep_every_s
        self._last_sweep = 0.0

    @staticmethod
    def _key(account: str | None, input_id: str) -> str:
        return f"inputs/{account or 'public'}/{input_id}"

    def put(self, account: str | None, photo: bytes) -> tuple[str, int]:
        """Store `photo`; returns (input_id, expires_at epoch seconds)."""
        input_id = "in_" + secrets.token_urlsafe(16)
        self.storage.put(self._key(account, input_id), photo)
        self.maybe_sweep()
        return input_id, int(time.time()) + self.ttl_s

    def get(self, account: str | None, input_id: str) -> bytes:
        """The cached photo; 404 when unknown, expired or another account's (indistinguishable on purpose)."""
        if not INPUT_ID_RE.match(input_id or ""):
            raise NotFound("input_id is not a cached input", field="input_id", code="input_not_found")
        key = self._key(account, input_id)
        modified = self.storage.modified(key)
        if modified is None or modified + self.ttl_s < time.time():
            raise NotFound("input_id is unknown or has expired (inputs are kept 24 h)", field="input_id",
                           code="input_not_found")
        return self.storage.get(key)

    def maybe_sweep(self) -> int:
        """Delete expired entries, at most once per `sweep_every_s`; returns how many were removed."""
        now = time.time()
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
