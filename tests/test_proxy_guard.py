"""The proxy guard on a plain uvicorn server (the server Serve's proxy runs): bodies cut at the cap whatever the
framing, header and body deadlines, a connection cap, slow clients kept away from the app, and JSON for every error
answer. Raw sockets, small limits; every test is bounded in time. The same guard through a real Serve proxy is
exercised by tests/test_hardening_service.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from service import proxy_guard
from service.proxy_guard import BodyGuard, ProxyLimits

pytestmark = pytest.mark.timeout(90)

LIMITS = ProxyLimits(max_body_bytes=1 * 2**20, upload_routes={"POST /v1/styles": 2 * 2**20},
                     max_buffered_bytes=8 * 2**20, header_timeout_s=1.0, body_timeout_s=3.0, body_idle_s=1.0,
                     max_connections=40)


class Inner:
    """Stands in for Serve's proxy app: answers the body's length; counts requests that reached it."""

    def __init__(self) -> None:
        self.active = self.peak = self.seen = 0

    async def __call__(self, scope, receive, send) -> None:
        self.active += 1
        self.seen += 1
        self.peak = max(self.peak, self.active)
        try:
            body = b""
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            if scope["path"] == "/plain-error":
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
                return
            if scope["path"] == "/no-answer":
                return   # what the proxy does when the ingress replica died mid-request
            if scope["path"] == "/slow":
                await asyncio.sleep(0.5)
            payload = json.dumps({"bytes": len(body)}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
        finally:
            self.active -= 1


@pytest.fixture()
def server(monkeypatch):
    yield from _serve(monkeypatch, LIMITS)


def _serve(monkeypatch, limits: ProxyLimits):
    """A uvicorn server with the guard in front of an `Inner` app, until the generator is closed."""
    import uvicorn.config
    monkeypatch.setitem(uvicorn.config.HTTP_PROTOCOLS, "auto", uvicorn.config.HTTP_PROTOCOLS["auto"])
    proxy_guard.install_protocol(limits)
    inner = Inner()
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(BodyGuard(inner, limits), log_level="critical", lifespan="off", access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    inner.port = sock.getsockname()[1]
    yield inner
    srv.should_exit = True
    thread.join(5)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return s


def _read_answer(s: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        need = int(headers.get("content-length", 0))
        while len(body) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body
    except (ConnectionError, TimeoutError, IndexError, ValueError):
        return 0, {}, data


def _closed(s: socket.socket, timeout: float = 5) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def _stream_chunked(port: int, path: str, total: int, method: str = "POST") -> tuple[int, int, dict]:
    """Send up to `total` bytes as a chunked body; returns (bytes the server took before cutting, status, body)."""
    s = _connect(port)
    s.sendall(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              "transfer-encoding: chunked\r\n\r\n".encode())
    piece = b"x" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    s.settimeout(5)
    try:
        while sent < total:
            s.sendall(frame)
            sent += len(piece)
        s.sendall(b"0\r\n\r\n")
    except (ConnectionError, TimeoutError):
        pass
    status, headers, body = _read_answer(s)
    s.close()
    return sent, status, json.loads(body) if body else {}


def test_a_chunked_body_is_cut_at_the_cap(server):
    sent, status, body = _stream_chunked(server.port, "/v1/avatar/generate", 300 * 2**20)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    # what got in before the cut: the cap plus socket buffers, not the 300 MiB the client meant to send
    assert sent < LIMITS.max_body_bytes + 8 * 2**20, f"{sent / 2**20:.1f} MiB accepted"
    assert server.seen == 0   # the app never saw it


def test_the_upload_route_has_its_own_cap(server):
    sent, status, _ = _stream_chunked(server.port, "/v1/styles", int(1.5 * 2**20))
    assert status == 200
    _, status, _ = _stream_chunked(server.port, "/v1/styles", 40 * 2**20)
    assert status == 413


@pytest.fixture()
def configured(monkeypatch, tmp_path):
    """The guard as the embedded service sets it up: limits from a serve config (small caps) through the launcher's
    environment and the proxy's settings."""
    import yaml
    from service.config import INGRESS, app_config, load_config
    from service.launcher import ray_environment
    config = load_config()
    ingress = next(d for d in app_config(config)["deployments"] if d["name"] == INGRESS)
    ingress["user_config"].update(max_body_bytes=512 * 2**10)
    ingress["user_config"]["styles"]["max_upload_bytes"] = 3 * 2**20
    ingress["user_config"]["batches"]["max_upload_bytes"] = 5 * 2**20
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "unused")   # no token file is made for this
    for key, value in ray_environment(str(path)).items():
        monkeypatch.setenv(key, value)
    limits = ProxyLimits.from_settings()
    yield from _serve(monkeypatch, limits)


def test_each_upload_route_gets_the_allowance_the_config_gives_it(configured):
    """POST /v1/batches (multipart team uploads) and POST /v1/styles take their configured upload size plus framing;
    every other route, and other methods on those paths, keep the normal body cap (512 KiB + 1 MiB here)."""
    assert _stream_chunked(configured.port, "/v1/batches", 5 * 2**20)[1] == 200
    assert _stream_chunked(configured.port, "/v1/styles", 3 * 2**20)[1] == 200
    assert _stream_chunked(configured.port, "/v1/styles", 5 * 2**20)[1] == 413    # styles' own cap, not batches'
    for method, path in (("POST", "/v1/avatar/generate"), ("PUT", "/v1/batches"), ("POST", "/v1/styles/s_1"),
                         ("POST", "/v1/jobs/j_1/cancel")):
        sent, status, body = _stream_chunked(configured.port, path, 3 * 2**20, method=method)
        assert status == 413 and body["error"]["message"].endswith("exceeds 1572864 bytes"), (method, path, body)
    assert configured.seen == 2


def test_without_the_table_in_the_environment_the_proxy_takes_the_installed_config(monkeypatch):
    """A cluster pod that sets only the hook (no AVATAR_PROXY_UPLOAD_ROUTES) still lets batches through."""
    from service.config import FRAMING_BYTES, load_config, proxy_body_caps
    monkeypatch.delenv("AVATAR_PROXY_UPLOAD_ROUTES", raising=False)
    limits = ProxyLimits.from_settings()
    batches = limits.cap_for({"type": "http", "method": "POST", "path": "/v1/batches/"})
    assert batches == proxy_body_caps(load_config())[1]["POST /v1/batches"] > 256 * 2**20
    assert limits.cap_for({"type": "http", "method": "GET", "path": "/v1/batches"}) == limits.max_body_bytes
    assert limits.max_body_bytes < 20 * 2**20 + 2 * FRAMING_BYTES


def test_the_upload_table_names_routes_the_app_serves():
    """A route renamed in the app without the table following would be cut at the normal cap again."""
    from service.app import app
    from service.config import IngressConfig
    served = {f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items() for method in ops}
    table = IngressConfig().upload_routes()
    assert set(table) == {"POST /v1/batches", "POST /v1/styles"} and set(table) <= served
    assert table["POST /v1/batches"] == IngressConfig().batches.max_upload_bytes


def test_a_declared_length_over_the_cap_is_refused_before_reading(server):
    s = _connect(server.port)
    s.sendall(b"POST /v1/avatar/generate HTTP/1.1\r\nhost: x\r\ncontent-length: 314572800\r\n\r\n")
    status, headers, body = _read_answer(s)
    assert status == 413 and headers.get("connection") == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert _closed(s)


def test_slow_or_silent_headers_are_cut_at_the_deadline(server):
    silent, slow = _connect(server.port), _connect(server.port)
    started = time.monotonic()
    slow.sendall(b"POST /v1/avatar/generate HTTP/1.1\r\n")
    for _ in range(3):
        time.sleep(0.4)
        try:
            slow.sendall(b"x-drip: 1\r\n")
        except ConnectionError:
            break
    status, _, body = _read_answer(slow)
    assert status == 408 and json.loads(body)["error"]["code"] == "header_timeout"
    assert _closed(silent) and time.monotonic() - started < LIMITS.header_timeout_s + 3


def test_a_stalled_body_is_cut(server):
    s = _connect(server.port)
    s.sendall(b"POST /v1/avatar/generate HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"a\":")
    started = time.monotonic()
    status, _, body = _read_answer(s)
    assert status == 408 and json.loads(body)["error"]["code"] == "body_timeout"
    assert time.monotonic() - started < LIMITS.body_idle_s + 2 and server.seen == 0


def test_slow_clients_do_not_hold_the_service(server):
    """15 slow-header and 15 slow-body connections at once: a normal request is served at once, and none of the slow
    ones ever reaches the app."""
    stop = threading.Event()

    def drip(start: bytes, more: bytes) -> None:
        """Send `start`, then `more` every half second until stopped or cut."""
        s = _connect(server.port)
        try:
            s.sendall(start)
            while not stop.wait(0.5):
                s.sendall(more)
        except OSError:
            pass
        finally:
            s.close()

    slow_body = (b"POST /v1/avatar/generate HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n", b"x")
    slow_header = (b"GET /healthz HTTP/1.1\r\n", b"x-a: b\r\n")
    threads = [threading.Thread(target=drip, args=a, daemon=True) for a in [slow_body] * 15 + [slow_header] * 15]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        s = _connect(server.port)
        started = time.monotonic()
        s.sendall(b'POST /slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}')
        status, _, body = _read_answer(s)
        assert status == 200 and time.monotonic() - started < 2.0
        assert server.seen == 1 and server.peak == 1   # only the normal request reached the app
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def test_connections_past_the_cap_are_refused(server):
    held = [_connect(server.port) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        extra = _connect(server.port)
        status, _, body = _read_answer(extra)
        assert status == 503 and json.loads(body)["error"]["code"] == "overloaded"
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("path", ["/plain-error", "/no-answer"])
def test_the_proxys_own_failures_answer_json_with_retry_after(server, path):
    s = _connect(server.port)
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    status, headers, body = _read_answer(s)
    assert status == 503 and headers.get("retry-after") and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "unavailable"


def test_an_endless_head_is_cut(server):
    s = _connect(server.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    try:
        for _ in range(40):
            s.sendall(b"x-filler: " + b"a" * 4000 + b"\r\n")
    except ConnectionError:
        pass
    status, _, body = _read_answer(s)
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"


def test_a_malformed_request_answers_json(server):
    s = _connect(server.port)
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    status, headers, body = _read_answer(s)
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
