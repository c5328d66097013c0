"""A stage that fails, hangs or is overloaded answers JSON (5xx with the request id, no stack trace), and the ingress
keeps serving. Runs the ingress class directly with stand-in stage handles: no cluster needed."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from service.ingress import AvatarIngress


class _Method:
    def __init__(self, fn):
        self.remote = fn


class Handle:
    """Stands in for a DeploymentHandle: `handle.run.remote(...)` awaits `fn`."""

    def __init__(self, fn):
        self.run = self.call = _Method(fn)

    def options(self, **_):
        return self


def _request(body: dict) -> Request:
    raw = json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/avatar/generate", "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "query_string": b"", "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": ""}

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}
    return Request(scope, receive)


def _photo() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture()
def make_ingress(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))

    def make(fn, timeout_s: float = 5.0):
        ingress = AvatarIngress.func_or_class(*(Handle(fn) for _ in range(7)))
        ingress.reconfigure({"request_timeout_s": timeout_s, "usage_flush_interval_s": 0})
        return ingress
    return make


def _call(ingress, body):
    response = asyncio.run(ingress(_request(body)))
    return response.status_code, json.loads(response.body)


def test_a_crashing_stage_answers_500_json(make_ingress):
    async def crash(*_):
        raise RuntimeError("segfault-like failure in a model runtime")
    status, body = _call(make_ingress(crash), {"image": _photo()})
    assert status == 500 and body["error"]["code"] == "stage_failed" and body["request_id"].startswith("req_")
    assert "segfault" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_a_hanging_stage_answers_504_within_the_timeout(make_ingress):
    async def hang(*_):
        await asyncio.sleep(30)
    status, body = _call(make_ingress(hang, timeout_s=0.3), {"image": _photo()})
    assert status == 504 and body["error"]["code"] == "timeout"


def test_overload_answers_503(make_ingress):
    class BackPressureError(Exception):
        pass

    async def full(*_):
        raise BackPressureError("queue full")
    ingress = make_ingress(full)
    status, body = _call(ingress, {"image": _photo()})
    assert status == 503 and body["error"]["code"] == "overloaded"
    assert ingress.telemetry.summary()["counts"]["generate:overloaded"] == 1


def test_the_ingress_keeps_serving_after_failures(make_ingress):
    calls = {"n": 0}

    async def flaky(*_):
        calls["n"] += 1
        raise RuntimeError("first failure")
    ingress = make_ingress(flaky)
    assert _call(ingress, {"image": _photo()})[0] == 500
    status, body = _call(ingress, {"image": _photo(), "platform": "nowhere"})
    assert status == 422 and body["error"]["field"] == "platform"   # admission still works
    assert calls["n"] == 1
