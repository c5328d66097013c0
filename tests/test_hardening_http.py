"""Hardening of the HTTP layer without a cluster (the real FastAPI app over stand-in stage handles): load shedding
with fast 503/429 and Retry-After, operator-only stats, signed URLs that ignore the client's Host header, and JSON
error answers without internals for hostile bodies."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from avatar.flow.names import Stage
from service.app import app
from service.dependencies import get_ingress
from service.ingress import Ingress
from stand_ins import Handle, blank_photo

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def make_ingress(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AVATAR_OPERATOR_KEY", "op-secret")

    def make(fn, gated: bool = True, **config):
        ingress = Ingress(**{stage.value: Handle(fn) for stage in Stage if gated or stage is not Stage.QUALITY_GATE})
        ingress.reconfigure({"request_timeout_s": 20, "usage_flush_interval_s": 0, **config})
        app.dependency_overrides[get_ingress] = lambda: ingress
        ingress.client = TestClient(app, raise_server_exceptions=False)
        return ingress
    yield make
    app.dependency_overrides.clear()


# ---------------------------------------------------------------- load shedding
async def _slow(*_):
    await asyncio.sleep(1.5)
    raise RuntimeError("a slow stage")   # what it answers does not matter; how long it holds a turn does


def test_excess_requests_are_refused_fast_with_retry_after(make_ingress):
    ingress = make_ingress(_slow, admission={"max_running": 2, "max_waiting": 2, "max_wait_s": 10})
    client = ingress.client

    def post(_):
        started = time.perf_counter()
        resp = client.post("/v1/avatar/generate", json={"image": blank_photo()})
        return resp, time.perf_counter() - started
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(post, range(10)))
    refused = [(r, s) for r, s in results if r.status_code == 503]
    admitted = [(r, s) for r, s in results if r.status_code != 503]
    assert len(admitted) == 4 and len(refused) == 6   # 2 running + 2 waiting; the rest at once
    first_turn_done = min(s for _, s in admitted)   # a running turn holds its stage for 1.5 s
    for resp, seconds in refused:
        assert resp.json()["error"]["code"] == "overloaded" and resp.headers["retry-after"] == "2"
        assert seconds < first_turn_done, f"a refusal took {seconds:.2f} s: it waited for a turn"
    counts = ingress.telemetry.summary()["counts"]
    assert counts["generate:overloaded"] == 6   # refusals are recorded like every other request


def test_a_waiter_past_its_wait_is_refused(make_ingress):
    ingress = make_ingress(_slow, admission={"max_running": 1, "max_waiting": 4, "max_wait_s": 0.3})
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ingress.client.post, "/v1/avatar/generate", json={"image": blank_photo()})
        time.sleep(0.2)
        second = ingress.client.post("/v1/avatar/generate", json={"image": blank_photo()})
        assert second.status_code == 503 and second.json()["error"]["code"] == "overloaded"
        assert first.result().status_code == 500


def test_one_account_over_its_share_gets_429(make_ingress):
    ingress = make_ingress(_slow, admission={"max_running": 8, "max_waiting": 8, "per_account": 2})
    _, key = ingress.auth.store.create_account("A")
    with ThreadPoolExecutor(4) as pool:
        same = list(pool.map(lambda _: ingress.client.post("/v1/avatar/generate", json={"image": blank_photo()},
                                                            headers={"authorization": f"Bearer {key}"}), range(4)))
    codes = sorted(r.status_code for r in same)
    assert codes == [429, 429, 500, 500]
    limited = next(r for r in same if r.status_code == 429)
    assert limited.json()["error"]["code"] == "too_many_requests" and limited.headers["retry-after"]


# ---------------------------------------------------------------- operator stats
async def _unused(*_):
    raise AssertionError("no stage is called")


def test_stats_need_the_operator_key(make_ingress):
    client = make_ingress(_unused).client
    assert client.get("/v1/stats").status_code == 401
    assert client.get("/v1/stats", headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/v1/stats", headers={"authorization": "Bearer op-secret"})
    assert ok.status_code == 200 and "counts" in ok.json()


def test_stats_are_closed_without_an_operator_key(make_ingress, monkeypatch):
    monkeypatch.delenv("AVATAR_OPERATOR_KEY")
    resp = make_ingress(_unused).client.get("/v1/stats", headers={"authorization": "Bearer anything"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "operator_routes_disabled"


# ---------------------------------------------------------------- signed URLs
class _Done:
    """The job SaveAvatar would return."""

    def __init__(self):
        from avatar.job import AvatarJob
        self.job = AvatarJob(request_id="req_x", style="corporate_headshot", platform="generic", size=800,
                             intensity=0.6, avatar_key="avatars/x.png", thumbnail_key="avatars/x_thumb.png")
        self.job.billable = True


def _delivering():
    async def deliver(*args):
        return _Done().job
    return deliver


def test_signed_urls_ignore_the_clients_host_header(make_ingress):
    client = make_ingress(_delivering(), gated=False).client
    body = client.post("/v1/avatar/generate", json={"image": blank_photo()}, headers={"host": "evil.example"}).json()
    assert "evil.example" not in body["avatar_url"] and "evil.example" not in body["thumbnail_url"]
    forwarded = client.post("/v1/avatar/generate", json={"image": blank_photo()},
                            headers={"x-forwarded-host": "evil.example", "x-forwarded-proto": "https"}).json()
    assert "evil.example" not in forwarded["avatar_url"]   # proxy headers are not trusted unless configured


def test_signed_urls_use_the_public_url_or_trusted_proxy_headers(make_ingress):
    client = make_ingress(_delivering(), gated=False, public_url="https://avatars.example.com").client
    body = client.post("/v1/avatar/generate", json={"image": blank_photo()}, headers={"host": "evil.example"}).json()
    assert body["avatar_url"].startswith("https://avatars.example.com/v1/files/")
    client = make_ingress(_delivering(), gated=False, trusted_proxy_headers=True).client
    body = client.post("/v1/avatar/generate", json={"image": blank_photo()},
                       headers={"x-forwarded-host": "cdn.example.org", "x-forwarded-proto": "https"}).json()
    assert body["avatar_url"].startswith("https://cdn.example.org/v1/files/")


# ---------------------------------------------------------------- hostile bodies answer JSON
def test_hostile_bodies_answer_json_without_internals(make_ingress):
    client = make_ingress(_unused).client
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = client.post("/v1/avatar/generate", content=deep, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = client.get("/v1/files/avatars/x.png", params={"expires": "\u00b2", "signature": "ab"})
    assert resp.status_code == 403 and resp.json()["error"]["field"] == "signature"
    for expires in ("9" * 5000, str(2**63), "9" * 13):   # more digits than int() takes, or than any expiry has
        resp = client.get("/v1/files/avatars/x.png", params={"expires": expires, "signature": "ab"})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "invalid_signature", expires


@pytest.mark.parametrize("epochs", ["1e400", "-Infinity", "NaN", "2.5", "true", "[3]", '"9999"', '"' + "9" * 5000 + '"',
                                    "0", "51", str(2**63)])
def test_hostile_training_epochs_get_422(make_ingress, epochs):
    from avatar.store.accounts import open_account_store
    client = make_ingress(_unused, styles={"images_uri_prefixes": ["s3://examples/{account}/"]}).client
    account, key = open_account_store().create_account("Acme")
    resp = client.post("/v1/styles", content=f'{{"images_uri": "s3://examples/{account}/x/", "epochs": {epochs}}}',
                       headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "epochs", resp.text


@pytest.mark.parametrize("files, code, field", [
    ({"photo": ("a.png", b"x")}, "invalid_request", "photo"),     # a file part of another name
    ({"name": (None, "only a field")}, "missing_images", "images"),
])
def test_training_uploads_are_read_by_the_one_multipart_reader(make_ingress, files, code, field):
    from avatar.store.accounts import open_account_store
    client = make_ingress(_unused).client
    _, key = open_account_store().create_account("Acme")
    resp = client.post("/v1/styles", files=files, headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text
    assert resp.json()["error"]["code"] == code


def test_training_takes_json_or_multipart_only(make_ingress):
    from avatar.store.accounts import open_account_store
    client = make_ingress(_unused).client
    _, key = open_account_store().create_account("Acme")
    resp = client.post("/v1/styles", content=b"images_uri=x",
                       headers={"authorization": f"Bearer {key}", "content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_content_type"


def test_decode_errors_carry_no_heap_addresses():
    from avatar.errors import AvatarError
    from avatar.vision.imageio import decode_photo
    for data in (b"\xff\xd8\xff" + b"garbage" * 100, b"\x89PNG\r\n\x1a\n" + b"x" * 100):
        with pytest.raises(AvatarError) as err:
            decode_photo(data)
        assert err.value.code == "corrupt_image"
        assert "0x" not in err.value.message and " at " not in json.dumps(err.value.to_body())
