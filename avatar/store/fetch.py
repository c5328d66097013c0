"""Fetching a photo by URL, and POSTing a webhook, without letting callers reach internal services (SSRF).

Every hop (the first request and each redirect) resolves the host, judges every answer by the address policy of
`avatar.store.addresses` (metadata, link-local, reserved, multicast and unspecified addresses always refused;
loopback, private and shared space only with `allow_private`), then connects to the checked address itself (Host
header and TLS SNI keep the name), so a DNS answer cannot change between the check and the connection. Size is
capped, and one deadline (`within_deadline`) covers the whole request (resolve, connect, headers, body, redirects):
a peer that drips its answer a byte at a time is cut when the deadline falls, however quick each read is.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from avatar.errors import FetchRefused, PayloadTooLarge
from avatar.store.addresses import refusal

MAX_REDIRECTS = 3
_RESOLVER = ThreadPoolExecutor(8, thread_name_prefix="avatar-dns")
T = TypeVar("T")


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float = 10.0       # one deadline for the whole request
    max_bytes: int = 15 * 2**20
    allow_private: bool = False   # loopback, private and shared space: only for tests and closed networks


def _check_address(ip: str, policy: FetchPolicy, field: str = "image_url") -> None:
    category = refusal(ip, policy.allow_private)
    if category is not None:
        raise FetchRefused(f"{field} resolves to a non-public address ({ip}: {category.value})", field=field)


async def within_deadline(work: Awaitable[T], policy: FetchPolicy, field: str) -> T:
    """`work` (a resolve, a fetch, a POST) bounded as a whole by `policy.timeout_s`; past it the work is cancelled
    (its connection closed) and the caller gets `<field>_timeout`."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await work
    except TimeoutError:
        raise FetchRefused(f"{field} did not answer within {policy.timeout_s:g} s", field=field,
                           code=f"{field}_timeout") from None


def _client(policy: FetchPolicy) -> httpx.AsyncClient:
    """The HTTP client of one request; per-read timeouts stay as a backstop, the deadline is `within_deadline`'s."""
    return httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False, trust_env=False)


async def _resolve(host: str, port: int, policy: FetchPolicy, field: str = "image_url") -> str:
    """The host's address, every answer checked. getaddrinfo blocks and cannot be cancelled, so it runs in resolver
    threads of its own that the caller's deadline does not wait for (nor does a closing event loop)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.run_in_executor(_RESOLVER, partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM))
    except (socket.gaierror, UnicodeError):
        raise FetchRefused(f"{field} host {host!r} does not resolve", field=field) from None
    addresses = sorted({info[4][0] for info in infos})
    for ip in addresses:   # every answer must be public, or a second lookup could pick the private one
        _check_address(ip, policy, field)
    return addresses[0]


def _split(url: str, field: str = "image_url") -> tuple[str, str, int]:
    parts = urlsplit(url)
    invalid = f"invalid_{field}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"{field} must be an absolute http(s) URL", field=field, code=invalid)
    if parts.username or parts.password:
        raise FetchRefused(f"{field} must not carry credentials", field=field, code=invalid)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchRefused(f"{field} has an invalid port", field=field, code=invalid) from None
    return parts.scheme, parts.hostname, port


def check_url(url: str, policy: FetchPolicy, field: str) -> None:
    """Refuse now what a later request to `url` would refuse (scheme, credentials, a non-public address)."""
    _, host, port = _split(url, field)
    _blocking(within_deadline(_resolve(host, port, policy, field), policy, field))


async def post(url: str, body: bytes, headers: dict[str, str], policy: FetchPolicy,
               field: str = "webhook_url") -> int:
    """POST `body` to `url` under the same rules and the same one deadline as an image fetch (the address checked
    and pinned; DNS, connect, sending and the answer's headers all inside `policy.timeout_s`); answers the HTTP
    status. No redirect is followed (a redirect is an answer like any other non-2xx) and the answer's body is not
    read: a receiver says all it has to say in its status."""
    return await within_deadline(_post(url, body, headers, policy, field), policy, field)


async def _post(url: str, body: bytes, headers: dict[str, str], policy: FetchPolicy, field: str) -> int:
    _, host, port = _split(url, field)
    ip = await _resolve(host, port, policy, field)
    pinned = urlunsplit(urlsplit(url)._replace(netloc=_netloc(ip, port)))
    sent = {**headers, "Host": host if port in (80, 443) else f"{host}:{port}"}
    async with _client(policy) as client:
        async with client.stream("POST", pinned, content=body, headers=sent,
                                 extensions={"sni_hostname": host}) as resp:
            return resp.status_code


def fetch_image(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """Blocking form of `fetch_image_async` for synchronous callers (CLI, in-process pipeline)."""
    return _blocking(fetch_image_async(url, policy))


def _blocking(coro: Any) -> Any:
    """Run `coro` to its end from synchronous code, also from inside a running event loop (on a loop of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def fetch_image_async(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """GET `url` under `policy`, following at most MAX_REDIRECTS redirects, each re-checked. One deadline
    (`policy.timeout_s`) covers everything: every DNS lookup, connect, TLS, headers (however slowly they drip) and
    body, across redirects."""
    return await within_deadline(_fetch(url, policy), policy, "image_url")


async def _fetch(url: str, policy: FetchPolicy) -> bytes:
    async with _client(policy) as client:
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port = _split(url)
            ip = await _resolve(host, port, policy)
            pinned = urlunsplit(urlsplit(url)._replace(netloc=_netloc(ip, port)))
            headers = {"Host": host if port in (80, 443) else f"{host}:{port}", "Accept": "image/*"}
            try:
                async with client.stream("GET", pinned, headers=headers,
                                         extensions={"sni_hostname": host}) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise FetchRefused(f"image_url answered HTTP {resp.status_code}", field="image_url",
                                           code="image_url_unreachable")
                    return await _read_capped(resp, policy)
            except httpx.TimeoutException:
                raise FetchRefused("image_url timed out", field="image_url", code="image_url_timeout") from None
            except httpx.HTTPError as exc:
                raise FetchRefused(f"image_url could not be fetched ({type(exc).__name__})", field="image_url",
                                   code="image_url_unreachable") from None
    raise FetchRefused(f"image_url redirected more than {MAX_REDIRECTS} times", field="image_url")


def _netloc(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def _read_capped(resp: httpx.Response, policy: FetchPolicy) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise PayloadTooLarge(f"image_url body is {declared} bytes; the limit is {policy.max_bytes}",
                              field="image_url")
    chunks, total = [], 0
    async for chunk in resp.aiter_bytes():
        total += len(chunk)
        if total > policy.max_bytes:
            raise PayloadTooLarge(f"image_url body exceeds {policy.max_bytes} bytes", field="image_url")
        chunks.append(chunk)
    return b"".join(chunks)
