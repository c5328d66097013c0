"""A webhook receiver on loopback for tests: verifies each delivery as a platform would (Standard Webhooks), answers
the status codes it is told to, and keeps what it received."""

from __future__ import annotations

import json
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
