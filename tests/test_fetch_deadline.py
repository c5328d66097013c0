"""The URL fetch has one deadline for resolve + connect + headers + body, and a LoadPhoto replica is not pinned by
a slow URL: other jobs are decoded while it waits. Local servers only; each test is bounded in time."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from avatar.errors import FetchRefused
from avatar.store import fetch as fetch_mod
from avatar.store.fetch import FetchPolicy, fetch_image, fetch_image_async

pytestmark = pytest.mark.timeout(60)
POLICY = FetchPolicy(timeout_s=1.5, allow_private=True)


@pytest.fixture()
def dripping_server():
    """Answers every connection with a status line, then one header byte every 0.2 s for 20 s: each read is quick,
    so only an overall deadline stops it."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(100):
                    if stop.wait(0.2):
                        return
                    conn.sendall(b"X")
            except OSError:
                pass

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/photo.jpg"
    stop.set()
    server.close()


def test_dripped_headers_hit_the_one_deadline(dripping_server):
    started = time.monotonic()
    with pytest.raises(FetchRefused) as err:
        fetch_image(dripping_server, POLICY)
    assert err.value.code == "image_url_timeout" and err.value.field == "image_url"
    assert time.monotonic() - started < POLICY.timeout_s + 1.0


def test_a_slow_dns_answer_is_inside_the_deadline(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow-dns.example":
            time.sleep(5)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    with pytest.raises(FetchRefused) as err:
        fetch_image("http://slow-dns.example/a.jpg", POLICY)
    assert err.value.code == "image_url_timeout"
    assert time.monotonic() - started < POLICY.timeout_s + 1.0


def test_the_sync_form_works_inside_an_event_loop(dripping_server):
    async def inside() -> None:
        with pytest.raises(FetchRefused):
            fetch_image(dripping_server, POLICY)   # the in-process pipeline calls stages from a running loop
    asyncio.run(inside())
    assert fetch_mod.fetch_image_async is fetch_image_async


def _photo() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_slow_url_does_not_pin_the_load_photo_replica(dripping_server, tmp_path, monkeypatch):
    """The replica decodes one job at a time; a URL job waiting on its fetch must not hold that turn."""
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    from avatar.job import AvatarJob, PhotoInput
    from deployments.load_photo import LoadPhoto
    replica = LoadPhoto.func_or_class()
    replica.reconfigure({"fetch_timeout_s": 3, "fetch_allow_private": True, "input_cache": False})

    def job() -> AvatarJob:
        return AvatarJob(request_id=AvatarJob.new_request_id(), style="", platform="generic", size=0, intensity=0)

    async def scenario() -> tuple[float, BaseException | None]:
        slow = asyncio.ensure_future(replica.run(job(), PhotoInput(url=dripping_server, field="image_url")))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        done = await replica.run(job(), PhotoInput(data=_photo()))
        quick = time.monotonic() - started
        assert done.photo_size == (256, 256)
        try:
            await slow
        except FetchRefused as exc:
            return quick, exc
        return quick, None

    quick, slow_error = asyncio.run(scenario())
    assert quick < 1.0, f"an upload waited {quick:.1f} s behind a slow URL"
    assert isinstance(slow_error, FetchRefused) and slow_error.code == "image_url_timeout"
