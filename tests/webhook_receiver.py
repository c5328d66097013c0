"""Webhook receivers on loopback for tests: `Receiver` verifies each delivery as a platform would (Standard Webhooks),
answers the status codes it is told to, and keeps what it received; `DripReceiver` answers its headers a byte at a
time, as a receiver that wants to hold the sender's connection would."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from avatar.webhooks import WebhookVerificationError, verify


class Receiver:
    def __init__(self, secret: str | None = None, statuses: list[int] | None = None) -> None:
        self.secret = secret
        self.statuses = list(statuses or [])      # answered in order, then 204
        self.received: list[dict] = []            # {"headers", "body", "event" | None, "verified": bool, "status"}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                event, verified = None, False
                if receiver.secret:
                    try:
                        event, verified = verify(receiver.secret, body, headers), True
                    except WebhookVerificationError:
                        pass
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                    if not verified:
                        status = 400
                    receiver.received.append({"headers": headers, "body": body, "event": event,
                                              "verified": verified, "status": status})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/avatar"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        with self.lock:
            return [r["event"]["type"] for r in self.received if r["verified"]]

    def payloads(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.received]


class DripReceiver:
    """A hostile receiver: reads each request, answers the status line, then drips its headers one byte every
    `every_s`, so every single read is quick and only a deadline on the whole send stops it. It stops dripping when
    `release` is set, the sender hangs up, or after `limit_s` (so a sender without a deadline fails a test rather
    than hanging it). `connections` lists each request's `webhook-id` in the order they arrived."""

    def __init__(self, every_s: float = 0.05, limit_s: float = 20.0) -> None:
        self.every_s, self.limit_s = every_s, limit_s
        self.release = threading.Event()
        self.connections: list[str | None] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hooks/slow"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                ids = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"webhook-id:")]
                with self.lock:
                    self.connections.append(ids[0] if ids else None)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(int(self.limit_s / self.every_s)):
                    if self.release.wait(self.every_s):
                        return
                    conn.sendall(b"X")
            except OSError:   # the sender hung up
                return

    def __enter__(self) -> "DripReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.thread.join(5)
        self.server.close()
