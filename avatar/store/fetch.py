"""Fetching a photo by URL without letting callers reach internal services (SSRF).

Every hop (the first request and each redirect) resolves the host, refuses loopback, private, link-local, multicast,
reserved and cloud-metadata addresses, then connects to the checked address itself (Host header and TLS SNI keep the
name), so a DNS answer cannot change between the check and the connection. Size and time are capped.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from avatar.errors import FetchRefused, PayloadTooLarge

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float = 10.0
    max_bytes: int = 15 * 2**20
    allow_private: bool = False   # only for tests and closed networks


def _check_address(ip: str, policy: FetchPolicy, field: str = "image_url") -> None:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if policy.allow_private and not addr.is_multicast and not addr.is_unspecified:
        return
    if not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_link_local:
        raise FetchRefused(f"{field} resolves to a non-public address ({addr})", field=field)


def _resolve(host: str, port: int, policy: FetchPolicy, field: str = "image_url") -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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
    _resolve(host, port, policy, field)


def post(url: str, body: bytes, headers: dict[str, str], policy: FetchPolicy, field: str = "webhook_url") -> int:
    """POST `body` to `url` under the same rules as an image fetch (the address checked and pinned); answers the
    HTTP status. No redirect is followed (a redirect is an answer like any other non-2xx) and the answer's body is
    not read: a receiver says all it has to say in its status."""
    _, host, port = _split(url, field)
    ip = _resolve(host, port, policy, field)
    pinned = urlunsplit(urlsplit(url)._replace(netloc=_netloc(ip, port)))
    sent = {**headers, "Host": host if port in (80, 443) else f"{host}:{port}"}
    with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
        with client.stream("POST", pinned, content=body, headers=sent, extensions={"sni_hostname": host}) as resp:
            return resp.status_code


def fetch_image(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """GET `url` under `policy`, following at most MAX_REDIRECTS redirects, each re-checked."""
    deadline = time.monotonic() + policy.timeout_s
    with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port = _split(url)
            ip = _resolve(host, port, policy)
            pinned = urlunsplit(urlsplit(url)._replace(netloc=_netloc(ip, port)))
            headers = {"Host": host if port in (80, 443) else f"{host}:{port}", "Accept": "image/*"}
            try:
                with client.stream("GET", pinned, headers=headers, extensions={"sni_hostname": host}) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise FetchRefused(f"image_url answered HTTP {resp.status_code}", field="image_url",
                                           code="image_url_unreachable")
                    return _read_capped(resp, policy, deadline)
            except httpx.TimeoutException:
                raise FetchRefused("image_url timed out", field="image_url", code="image_url_timeout") from None
            except httpx.HTTPError as exc:
                raise FetchRefused(f"image_url could not be fetched ({type(exc).__name__})", field="image_url",
                                   code="image_url_unreachable") from None
    raise FetchRefused(f"image_url redirected more than {MAX_REDIRECTS} times", field="image_url")


def _netloc(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _read_capped(resp: httpx.Response, policy: FetchPolicy, deadline: float) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise PayloadTooLarge(f"image_url body is {declared} bytes; the limit is {policy.max_bytes}",
                              field="image_url")
    chunks, total = [], 0
    for chunk in resp.iter_bytes():
        total += len(chunk)
        if total > policy.max_bytes:
            raise PayloadTooLarge(f"image_url body exceeds {policy.max_bytes} bytes", field="image_url")
        if time.monotonic() > deadline:
            raise FetchRefused("image_url timed out", field="image_url", code="image_url_timeout")
        chunks.append(chunk)
    return b"".join(chunks)
