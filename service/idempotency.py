"""`Idempotency-Key` on every request that creates work (generate, async jobs, batches, style training).

The first request with a key reserves it for its body's fingerprint; its answer (2xx or 4xx) is stored, and a repeat
with the same key and body gets that answer back (`Idempotent-Replayed: true`) without new work or a new charge. The
same key with another body is refused (422 `idempotency_key_reused`); a repeat while the first is still running gets
409 `idempotency_in_progress`. A 5xx releases the key so the client's retry runs again. Keys are scoped by account
(callers without a key share the anonymous scope, where the body fingerprint still keeps answers apart) and kept
for `AVATAR_JOB_TTL_S`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator

from fastapi import Header
from starlette.responses import JSONResponse

from avatar.errors import AvatarError, InvalidRequest
from avatar.settings import settings
from avatar.store.jobs import JobStore

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")   # printable ASCII, no spaces (as the IETF draft's examples)

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="Makes a retry safe: the same key and body answer the original response (no "
    "new work, no new charge); the same key with another body is refused (422). 1-255 printable ASCII characters.")]
"""A route's `Idempotency-Key` request header (checked by `begin`, which answers the service's own 422)."""


def fingerprint(payload: Any, *blobs: bytes | None) -> str:
    """The request body's identity: its fields as canonical JSON and the hash of each uploaded file, so the same
    multipart upload sent twice (with another boundary) is the same body."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode())
    for blob in blobs:
        digest.update(b"\0" + (hashlib.sha256(blob).digest() if blob is not None else b"-"))
    return digest.hexdigest()


@dataclass
class Idempotency:
    """One request's hold on its key (None key: the request is not idempotent and every method is a no-op)."""

    store: JobStore | None
    scope: str
    route: str
    key: str | None

    async def save(self, status_code: int, body: dict[str, Any]) -> None:
        if self.key is not None and self.store is not None:
            await asyncio.to_thread(self.store.idempotency_save, self.scope, self.route, self.key, status_code, body)

    async def release(self) -> None:
        if self.key is not None and self.store is not None:
            await asyncio.to_thread(self.store.idempotency_release, self.scope, self.route, self.key)

    @asynccontextmanager
    async def guard(self) -> AsyncIterator["Idempotency"]:
        """Around the request's work: a 4xx raised inside is stored as the key's answer (the same body would get
        it again), anything else releases the key."""
        try:
            yield self
        except AvatarError as exc:
            if exc.status < 500:
                await self.save(exc.status, exc.to_body())
            else:
                await self.release()
            raise
        except BaseException:
            await self.release()
            raise

    async def finish(self, response: JSONResponse | Any, status_code: int = 200) -> None:
        """Store a final answer (a model or a JSONResponse); release the key on a 5xx."""
        if isinstance(response, JSONResponse):
            status_code, body = response.status_code, json.loads(bytes(response.body))
        else:
            body = response.model_dump(mode="json") if hasattr(response, "model_dump") else response
        if status_code >= 500:
            await self.release()
        else:
            await self.save(status_code, body)


def checked_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not _KEY_RE.match(key):
        raise InvalidRequest("Idempotency-Key must be 1-255 printable ASCII characters without spaces",
                             field="idempotency-key", code="invalid_idempotency_key")
    return key


async def begin(key: str | None, store_of: Any, account: str | None, route: str,
                print_: str) -> tuple[Idempotency, JSONResponse | None]:
    """The request's hold on its key, and the stored answer when this is a replay. `store_of` is called only when
    the request carries a key (so requests without one never open the job store)."""
    key = checked_key(key)
    scope = account or "anonymous"
    if key is None:
        return Idempotency(None, scope, route, None), None
    store: JobStore = store_of()
    found = await asyncio.to_thread(store.idempotency_begin, scope, route, key, print_, settings().job_ttl_s)
    if found.status == "conflict":
        raise InvalidRequest("this Idempotency-Key was used with a different request body; use a new key for a new "
                             "request", field="idempotency-key", code="idempotency_key_reused")
    if found.status == "in_progress":
        raise AvatarError("a request with this Idempotency-Key is still being processed; retry later",
                          field="idempotency-key", code="idempotency_in_progress", status=409)
    hold = Idempotency(store, scope, route, key)
    if found.status == "replay":
        return hold, JSONResponse(found.response, status_code=found.status_code or 200,
                                  headers={"Idempotent-Replayed": "true"})
    return hold, None
