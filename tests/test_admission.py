"""Admission without a cluster: request validation, photo decoding limits, signed URLs, storage, URL fetch policy, and
the gate of pipeline turns (service/admission.py) on an injected clock."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from PIL import Image

from avatar.store import fetch as fetch_mod
from avatar.contracts import GenerateRequest, parse_request
from avatar.errors import (AvatarError, FetchRefused, Forbidden, NotFound, Overloaded, PayloadTooLarge,
                           UnsupportedMediaType)
from avatar.store.fetch import FetchPolicy, fetch_image
from avatar.vision.imageio import b64decode_image, decode_photo
from avatar.store.storage import Storage, UrlSigner
from service.admission import Admission, AdmissionConfig


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_request_defaults_follow_the_platform():
    req = parse_request(GenerateRequest, {"image": "eA==", "platform": "discord"})
    assert req.resolved_style == "anime_character" and req.size == 800
    req = parse_request(GenerateRequest, {"image": "eA==", "platform": "linkedin", "resolution": "high"})
    assert req.resolved_style == "corporate_headshot" and req.size == 1200
    with pytest.raises(AvatarError) as err:
        parse_request(GenerateRequest, {"image": "eA==", "palette": "rainbow"})
    assert err.value.field == "palette" and "neutral_grey" in err.value.message


def test_decode_applies_exif_orientation():
    tall = Image.fromarray(np.zeros((400, 300, 3), np.uint8))   # 300 wide, 400 high
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 on display
    rgb = decode_photo(_encode(tall, "JPEG", exif=exif.tobytes()))
    assert rgb.shape[:2] == (300, 400)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decode_accepts_supported_formats_by_content(fmt):
    img = Image.fromarray(np.full((256, 256, 4 if fmt == "PNG" else 3), 128, np.uint8))
    assert decode_photo(_encode(img, fmt)).shape == (256, 256, 3)


def test_decode_refusals_name_the_reason():
    big = Image.fromarray(np.zeros((300, 300, 3), np.uint8))
    with pytest.raises(UnsupportedMediaType):
        decode_photo(_encode(big, "GIF"))
    with pytest.raises(PayloadTooLarge):
        decode_photo(_encode(big, "JPEG"), limits=type("L", (), {"max_bytes": 10})())  # type: ignore[arg-type]
    with pytest.raises(AvatarError) as err:
        decode_photo(_encode(big, "PNG")[:200])
    assert err.value.code == "corrupt_image"
    with pytest.raises(AvatarError) as err:
        b64decode_image("%%%")
    assert err.value.code == "invalid_base64" and err.value.field == "image"
    assert b64decode_image("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"


def test_signed_urls(tmp_path):
    signer = UrlSigner(b"k", ttl_s=60)
    url, expires = signer.sign("http://h", "avatars/a.png", now=1000)
    sig = url.split("signature=")[1]
    signer.verify("avatars/a.png", str(expires), sig, now=1030)
    for key, exp, s, now in [("avatars/b.png", str(expires), sig, 1030), ("avatars/a.png", str(expires + 1), sig, 1030),
                             ("avatars/a.png", str(expires), sig, 2000), ("avatars/a.png", None, sig, 1030)]:
        with pytest.raises(Forbidden):
            signer.verify(key, exp, s, now=now)
    assert UrlSigner(b"other")._sig("avatars/a.png", expires) != sig


def test_storage_round_trip_and_key_safety(tmp_path):
    store = Storage(str(tmp_path / "s"))
    store.put("a/b/c.png", b"123")
    assert store.get("a/b/c.png") == b"123" and store.exists("a/b/c.png")
    assert store.list("a") == ["a/b/c.png"]
    store.delete("a/b/c.png")
    assert not store.exists("a/b/c.png")
    for key in ("../etc/passwd", "/abs", "a/../../x"):
        with pytest.raises(NotFound):
            store.get(key)


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/photo.png":
            body = _encode(Image.fromarray(np.zeros((210, 210, 3), np.uint8)), "PNG")
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(302)
            self.send_header("location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def local_server():
    server = HTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_fetch_refuses_private_targets_even_after_a_redirect(local_server, monkeypatch):
    for url in ("http://127.0.0.1/x", "http://169.254.169.254/", "http://[::1]/", "http://10.1.2.3/", "file:///etc/passwd"):
        with pytest.raises(FetchRefused):
            fetch_image(url)
    # A public-looking host that answers with a redirect to the metadata address is refused at the second hop.
    real_resolve = fetch_mod._resolve

    async def resolve(host, port, policy):
        return "127.0.0.1" if host == "photos.example" else await real_resolve(host, port, policy)
    monkeypatch.setattr(fetch_mod, "_resolve", resolve)
    with pytest.raises(FetchRefused) as err:
        fetch_image(f"http://photos.example:{local_server}/start")
    assert "169.254.169.254" in err.value.message
    data = fetch_image(f"http://photos.example:{local_server}/photo.png")
    assert decode_photo(data, field="image_url").shape == (210, 210, 3)
    with pytest.raises(PayloadTooLarge):
        fetch_image(f"http://photos.example:{local_server}/photo.png", FetchPolicy(max_bytes=100))


def test_input_cache_expires_and_is_per_account(tmp_path):
    from avatar.clock import ManualClock
    from avatar.store.input_cache import InputCache
    clock = ManualClock()
    cache = InputCache(Storage(str(tmp_path / "s")), ttl_s=60, sweep_every_s=0, clock=clock)
    input_id, expires = cache.put("acc_a", b"photo")
    assert cache.get("acc_a", input_id) == b"photo"
    with pytest.raises(NotFound):
        cache.get("acc_b", input_id)               # another account's input is not found
    with pytest.raises(NotFound):
        cache.get("acc_a", "../../signing.key")
    clock.advance(expires + 5 - clock())
    with pytest.raises(NotFound):
        cache.get("acc_a", input_id)               # expired
    assert cache.maybe_sweep() == 1 and cache.storage.list("inputs") == []


# ---------------------------------------------------------------- pipeline turns: the wait follows the service rate
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cue:
    """Stands in for `asyncio.wait_for(turn, budget)`: records each waiter's budget; `expire()` times out everyone
    waiting at that moment, as if their budgets had run out."""

    def __init__(self) -> None:
        self.budgets: list[float] = []
        self._expired = asyncio.Event()

    async def __call__(self, awaitable, budget: float):
        self.budgets.append(budget)
        turn = asyncio.ensure_future(awaitable)
        expired = asyncio.ensure_future(self._expired.wait())
        done, _ = await asyncio.wait({turn, expired}, return_when=asyncio.FIRST_COMPLETED)
        expired.cancel()
        if turn in done:
            return turn.result()
        turn.cancel()
        raise TimeoutError

    def expire(self) -> None:
        self._expired.set()


async def _turn(gate: Admission, done: asyncio.Event) -> None:
    """One request: takes a turn, holds it until `done`, gives it back (in its own task, as a route does)."""
    await gate.acquire(None)
    try:
        await done.wait()
    finally:
        gate.release(None)


async def _learn(gate: Admission, clock: Clock, seconds: float, turns: int) -> None:
    """`turns` requests run at once and each takes `seconds` on the clock."""
    done = asyncio.Event()
    tasks = [asyncio.create_task(_turn(gate, done)) for _ in range(turns)]
    await asyncio.sleep(0)
    assert gate.running == turns
    clock.now += seconds
    done.set()
    await asyncio.gather(*tasks)


async def _hold(gate: Admission, turns: int) -> tuple[asyncio.Event, list[asyncio.Task]]:
    done = asyncio.Event()
    tasks = [asyncio.create_task(_turn(gate, done)) for _ in range(turns)]
    await asyncio.sleep(0)
    return done, tasks


def _gate(clock: Clock, cue: Cue, **config) -> Admission:
    return Admission(AdmissionConfig(**{"max_running": 2, "max_waiting": 10, "max_wait_s": 2.0, **config}),
                     clock=clock, wait=cue)


def test_a_request_expected_to_wait_too_long_is_refused_at_once():
    """Turns take 4 s with 2 running, so one ends every 2 s: the first in line (2 s) waits, the second (4 s) is
    refused without waiting, with a Retry-After of its expected wait."""
    async def scenario() -> None:
        clock, cue = Clock(), Cue()
        gate = _gate(clock, cue)
        await _learn(gate, clock, 4.0, turns=2)
        done, running = await _hold(gate, 2)
        first = asyncio.create_task(_turn(gate, done))
        second = asyncio.create_task(_turn(gate, done))
        await asyncio.sleep(0)
        assert not first.done() and gate.waiting == 1 and cue.budgets == [2.0]
        assert second.done() and isinstance(second.exception(), Overloaded)
        assert second.exception().extra["retry_after_s"] == 4
        done.set()
        await asyncio.gather(*running, first)   # the waiter got the turn one of them gave back
        assert gate.running == 0 and gate.waiting == 0
    asyncio.run(scenario())


def test_the_estimate_follows_the_measured_service_time():
    """When turns speed up from 4 s to 1.2 s the line holds three (expected 0.6, 1.2, 1.8 s) where it held one, and
    the fourth (2.4 s) is refused; when they slow to 8 s, even the first in line is refused at once."""
    async def scenario() -> None:
        clock, cue = Clock(), Cue()
        gate = _gate(clock, cue)
        await _learn(gate, clock, 4.0, turns=2)
        assert gate.expected_wait(2) == pytest.approx(4.0)
        for _ in range(15):
            await _learn(gate, clock, 1.2, turns=2)
        assert 1.2 < gate.service_time_s < 1.25
        done, running = await _hold(gate, 2)
        line = [asyncio.create_task(_turn(gate, done)) for _ in range(4)]
        await asyncio.sleep(0)
        assert [t.done() for t in line] == [False, False, False, True] and gate.waiting == 3
        assert isinstance(line[3].exception(), Overloaded) and line[3].exception().extra["retry_after_s"] == 3
        done.set()
        await asyncio.gather(*running, *line[:3])
        for _ in range(3):
            await _learn(gate, clock, 8.0, turns=2)
        done, running = await _hold(gate, 2)
        with pytest.raises(Overloaded):
            await gate.acquire(None)
        assert len(cue.budgets) == 3   # only the three that waited above ever waited
        done.set()
        await asyncio.gather(*running)
    asyncio.run(scenario())


def test_a_waiter_is_refused_when_its_budget_runs_out():
    async def scenario() -> None:
        clock, cue = Clock(), Cue()
        gate = _gate(clock, cue, max_running=1)
        await _learn(gate, clock, 1.5, turns=1)
        done, running = await _hold(gate, 1)
        waiter = asyncio.create_task(_turn(gate, done))
        await asyncio.sleep(0)
        assert not waiter.done() and cue.budgets == [2.0]   # expected 1.5 s; it may wait up to max_wait_s
        cue.expire()
        with pytest.raises(Overloaded) as refused:
            await waiter
        assert refused.value.extra["retry_after_s"] == 2 and gate.waiting == 0
        done.set()
        await asyncio.gather(*running)
        assert gate.running == 0
    asyncio.run(scenario())


def test_before_any_turn_ends_the_line_is_bounded_by_count():
    async def scenario() -> None:
        clock, cue = Clock(), Cue()
        gate = _gate(clock, cue, max_running=1, max_waiting=1, retry_after_s=3)
        done, running = await _hold(gate, 1)
        first = asyncio.create_task(_turn(gate, done))
        second = asyncio.create_task(_turn(gate, done))
        await asyncio.sleep(0)
        assert not first.done() and second.done()
        assert second.exception().extra["retry_after_s"] == 3   # nothing measured yet: the configured value
        done.set()
        await asyncio.gather(*running, first)
    asyncio.run(scenario())


def test_retry_after_is_capped():
    async def scenario() -> None:
        clock, cue = Clock(), Cue()
        gate = _gate(clock, cue, max_running=1, max_retry_after_s=30)
        await _learn(gate, clock, 600.0, turns=1)
        done, running = await _hold(gate, 1)
        with pytest.raises(Overloaded) as refused:
            await gate.acquire(None)
        assert refused.value.extra["retry_after_s"] == 30 and cue.budgets == []
        done.set()
        await asyncio.gather(*running)
    asyncio.run(scenario())
