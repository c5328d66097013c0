"""Limits that must live in Ray Serve's HTTP proxy, because the proxy reads every request before the app sees it.

Serve's proxy (uvicorn + httptools) forwards a request to the ingress replica as soon as its headers are parsed and
then pushes the body into an in-memory queue as fast as the client sends it, whatever the framing; it has no header
or body read timeout and no connection limit. So a body cap or a read timeout in the app comes too late: a chunked
300 MiB upload is held whole in the proxy before the app's 413, and slow clients occupy ingress slots for as long as
they like. Serve offers one hook into its proxy process: `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, a callable that
returns ASGI middlewares and runs before the proxy's HTTP server starts. `proxy_middlewares` is that callable:

- `BodyGuard` (ASGI): reads each body before the request is forwarded, refusing it as soon as it passes the route's
  cap (413: `max_body_bytes`, or the upload allowance of a route in `upload_routes`) or an overall budget of bodies
  in flight (503), or when the client stalls or is too slow (408); the refusal carries `Connection: close`, so the
  connection is cut there. Slow clients therefore never reach an ingress slot. It also turns the proxy's own error
  answers (timeouts, backpressure, an ingress replica that died) into the service's JSON error shape with
  `Retry-After`.
- `GuardedHttpToolsProtocol` (the uvicorn protocol the proxy uses): a deadline for each request's headers, a cap on
  their size and on open connections, and JSON for malformed requests. Serve builds its uvicorn server without a
  way to pass a protocol class, so the callable points uvicorn's "auto" protocol at this subclass (in the proxy
  process only).

Limits come from `AVATAR_PROXY_*` settings (`avatar/settings.py`); `service.launcher` sets the hook and the body caps
from serve_config.yaml for the embedded service (`service.config.proxy_body_caps`: the upload routes are the config
sections that name one, so the proxy and the ingress follow one table). A load balancer in front should cap the same
things (README, "Operating it").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("avatar.proxy")

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "service.proxy_guard:proxy_middlewares"


@dataclass(frozen=True)
class ProxyLimits:
    max_body_bytes: int = 21 * 2**20          # the ingress's max_body_bytes plus multipart framing
    upload_routes: Mapping[str, int] = field(default_factory=dict)   # "POST /v1/batches" -> its own body cap
    max_buffered_bytes: int = 512 * 2**20     # all bodies being read at once, per proxy
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 2**10
    body_timeout_s: float = 60.0              # whole body
    body_idle_s: float = 10.0                 # between two chunks
    max_connections: int = 512
    retry_after_s: int = 2

    @classmethod
    def from_settings(cls) -> "ProxyLimits":
        from avatar.settings import settings
        env = settings()
        return cls(max_body_bytes=env.proxy_max_body_bytes,
                   upload_routes=env.proxy_upload_routes or _configured_upload_routes(),
                   max_buffered_bytes=env.proxy_max_buffered_bytes, header_timeout_s=env.proxy_header_timeout_s,
                   max_header_bytes=env.proxy_max_header_bytes, body_timeout_s=env.proxy_body_timeout_s,
                   body_idle_s=env.proxy_body_idle_s, max_connections=env.proxy_max_connections)

    def cap_for(self, scope: Scope) -> int:
        """The route's upload allowance (method and exact path), else the normal body cap."""
        path = scope.get("path", "").rstrip("/") or "/"
        return self.upload_routes.get(f"{scope.get('method', '')} {path}", self.max_body_bytes)


def _configured_upload_routes() -> dict[str, int]:
    """Where AVATAR_PROXY_UPLOAD_ROUTES is not set (a cluster whose pods set only the hook): the allowances of the
    serve_config.yaml installed with the service."""
    from service.config import load_config, proxy_body_caps
    return proxy_body_caps(load_config())[1]


def proxy_middlewares() -> list[Middleware]:
    """The proxy callback: installs the connection guard and returns the body guard."""
    limits = ProxyLimits.from_settings()
    install_protocol(limits)
    log.info("proxy guard on: %s", limits)
    return [Middleware(BodyGuard, limits=limits)]


def error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()


# ---------------------------------------------------------------- bodies and answers (ASGI)
class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BodyBudget:
    """Bytes of request bodies held by this proxy at once."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class BodyGuard:
    """Reads and caps the body before the request is forwarded; every error answer leaves as JSON."""

    def __init__(self, app: ASGIApp, limits: ProxyLimits = ProxyLimits()) -> None:
        self.app = app
        self.limits = limits
        self.budget = BodyBudget(limits.max_buffered_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = JsonAnswers(send, self.limits.retry_after_s)
        held = 0
        try:
            try:
                body, held = await self._read(scope, receive)
            except Refused as refused:
                await answer.refuse(refused.status, refused.code, refused.message)
                return
            if body is None:   # the client went away while sending
                return
            await self.app(scope, _replay(body, receive), answer)
        except Exception:  # noqa: BLE001 - the proxy failed this request; answer JSON, never a bare 500
            log.exception("proxy failed on %s %s", scope.get("method"), scope.get("path"))
        finally:
            self.budget.give(held)
        if not answer.started:   # the proxy gave up without an answer: the ingress replica died or is restarting
            await answer.refuse(503, "unavailable", "the service is restarting a component; retry shortly",
                                retry=True, close=False)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes | None, int]:
        """The whole body and the budget it holds; Refused past a cap, a stall or the body deadline."""
        limits = self.limits
        cap = limits.cap_for(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise Refused(413, "payload_too_large", f"request body is {declared} bytes; the limit is {cap}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout_s
        chunks: list[bytes] = []
        held = 0
        try:
            while True:
                wait = min(limits.body_idle_s, deadline - loop.time())
                if wait <= 0:
                    raise Refused(408, "body_timeout", f"the body took longer than {limits.body_timeout_s:g} s")
                try:
                    message = await asyncio.wait_for(receive(), wait)
                except TimeoutError:
                    raise Refused(408, "body_timeout", "the client stopped sending the body") from None
                if message["type"] == "http.disconnect":
                    return None, held
                chunk = message.get("body", b"")
                if chunk:
                    if held + len(chunk) > cap:
                        raise Refused(413, "payload_too_large", f"request body exceeds {cap} bytes")
                    if not self.budget.take(len(chunk)):
                        raise Refused(503, "overloaded", "the service is receiving too many uploads; retry shortly")
                    held += len(chunk)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks), held
        except Refused:
            self.budget.give(held)
            raise


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the client's own messages (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


# Answers the proxy makes itself, by status: (code, message, answer status). Its request timeout is a gateway
# timeout from the client's point of view; the rest keep their status.
_PROXY_ERRORS = {
    408: ("timeout", "the request took longer than the service's deadline", 504),
    429: ("too_many_requests", "too many requests; retry shortly", 429),
    500: ("unavailable", "the service is restarting a component; retry shortly", 503),
    503: ("overloaded", "the service is at capacity; retry shortly", 503),
}


class JsonAnswers:
    """Wraps `send`: an error answer that is not JSON (the proxy's plain-text 404/408/500/503) is replaced by the JSON
    error shape, with `Retry-After` where retrying helps. The app's own answers pass through untouched."""

    def __init__(self, send: Send, retry_after_s: int) -> None:
        self._send = send
        self.retry_after_s = retry_after_s
        self.started = False
        self._held: Message | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            status = message["status"]
            ctype = dict(message.get("headers", [])).get(b"content-type", b"")
            if status >= 400 and not ctype.startswith(b"application/json"):
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            if message.get("more_body", False):
                return   # the replaced body is dropped; the JSON answer goes out with the last part
            status = self._held["status"]
            self._held = None
            code, text, answer = _PROXY_ERRORS.get(status, ("http_error", "the request could not be served", status))
            if status == 404:
                code, text = "not_found", "no such route"
            await self._answer(answer, code, text, retry=answer in (429, 503, 504), close=False, sent=True)
            return
        await self._send(message)

    async def refuse(self, status: int, code: str, message: str, retry: bool | None = None, close: bool = True
                     ) -> None:
        if self.started:
            return
        self.started = True
        await self._answer(status, code, message, retry=status in (429, 503, 504) if retry is None else retry,
                           close=close, sent=True)

    async def _answer(self, status: int, code: str, message: str, retry: bool, close: bool, sent: bool) -> None:
        body = error_body(status, code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry:
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        if close:
            headers.append((b"connection", b"close"))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


# ---------------------------------------------------------------- connections and headers (uvicorn protocol)
def _raw_answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = error_body(status, code, message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def guarded_protocol(limits: ProxyLimits) -> type:
    """uvicorn's httptools protocol with a header deadline, a header size cap, a connection cap and JSON 400s."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(_raw_answer(503, "Service Unavailable", "overloaded",
                                            "too many open connections; retry shortly"))
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_bytes = 0
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_raw_answer(408, "Request Timeout", "header_timeout",
                                                 f"the request headers took longer than {limits.header_timeout_s:g} s"))
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            in_headers = self._header_timer is not None
            super().data_received(data)
            if in_headers and self._header_timer is not None:   # the head is still incomplete after this data
                self._header_bytes += len(data)
                if self._header_bytes > limits.max_header_bytes and not self.transport.is_closing():
                    self._disarm()
                    self.transport.write(_raw_answer(431, "Request Header Fields Too Large", "headers_too_large",
                                                     f"request headers exceed {limits.max_header_bytes} bytes"))
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()   # the next request on a kept-alive connection gets its own header deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_raw_answer(400, "Bad Request", "bad_request", msg))
            self.transport.close()

    return GuardedHttpToolsProtocol


def install_protocol(limits: ProxyLimits) -> None:
    """Point uvicorn's "auto" HTTP protocol (the one Serve's proxy uses) at the guarded one, in this process."""
    try:
        import uvicorn.config
        from uvicorn.protocols.http import auto
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:   # no httptools: uvicorn falls back to h11, which has no header deadline of ours
        log.warning("httptools is not installed: the proxy runs without a header deadline")
        return
    if auto.AutoHTTPProtocol is not HttpToolsProtocol:
        log.warning("uvicorn's protocol is %s: the proxy runs without a header deadline", auto.AutoHTTPProtocol)
        return
    uvicorn.config.HTTP_PROTOCOLS["auto"] = guarded_protocol(limits)   # uvicorn also takes a class here
