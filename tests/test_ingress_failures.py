"""A stage that fails, hangs or is overloaded answers JSON (5xx with the request id, no stack trace), and the ingress
keeps serving. Runs the ingress class directly with stand-in stage handles: no cluster needed."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from avatar.flow.names import Stage
from service.app import app
from service.dependencies import get_ingress
from service.ingress import Ingress
from stand_ins import Handle, blank_photo


@pytest.fixture()
def make_ingress(tmp_path, monkeypatch):
    """The real FastAPI app over an ingress whose every stage is `fn`."""
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))

    def make(fn, timeout_s: float = 5.0):
        ingress = Ingress(**{stage.value: Handle(fn) for stage in Stage})
        ingress.reconfigure({"request_timeout_s": timeout_s, "usage_flush_interval_s": 0})
        app.dependency_overrides[get_ingress] = lambda: ingress
        ingress.client = TestClient(app, raise_server_exceptions=False)
        return ingress
    yield make
    app.dependency_overrides.clear()


def _call(ingress, body):
    response = ingress.client.post("/v1/avatar/generate", json=body)
    return response.status_code, response.json()


def test_a_crashing_stage_answers_500_json(make_ingress):
    async def crash(*_):
        raise RuntimeError("segfault-like failure in a model runtime")
    status, body = _call(make_ingress(crash), {"image": blank_photo()})
    assert status == 500 and body["error"]["code"] == "stage_failed" and body["request_id"].startswith("req_")
    assert "segfault" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_a_hanging_stage_answers_504_within_the_timeout(make_ingress):
    async def hang(*_):
        await asyncio.sleep(30)
    status, body = _call(make_ingress(hang, timeout_s=0.3), {"image": blank_photo()})
    assert status == 504 and body["error"]["code"] == "timeout"


def test_overload_answers_503(make_ingress):
    from ray.serve.exceptions import BackPressureError

    async def full(*_):
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)
    ingress = make_ingress(full)
    status, body = _call(ingress, {"image": blank_photo()})
    assert status == 503 and body["error"]["code"] == "overloaded"
    assert ingress.telemetry.summary()["counts"]["generate:overloaded"] == 1


def test_the_ingress_keeps_serving_after_failures(make_ingress):
    calls = {"n": 0}

    async def flaky(*_):
        calls["n"] += 1
        raise RuntimeError("first failure")
    ingress = make_ingress(flaky)
    assert _call(ingress, {"image": blank_photo()})[0] == 500
    status, body = _call(ingress, {"image": blank_photo(), "platform": "nowhere"})
    assert status == 422 and body["error"]["field"] == "platform"   # admission still works
    assert calls["n"] == 1


@pytest.mark.parametrize("quality", ["best", "fast"])
def test_the_requested_matte_quality_reaches_the_stages(make_ingress, quality):
    """`quality` travels with the job to BgGenerate (which picks the learned matte for `best`), from JSON and forms."""
    seen: list[str] = []

    async def record(job, *_):
        seen.append(job.quality)
        raise RuntimeError("stop after the first stage")
    ingress = make_ingress(record)
    _call(ingress, {"image": blank_photo(), "quality": quality})
    import base64
    form = ingress.client.post("/v1/avatar/generate", data={"quality": quality},
                               files={"image": ("me.png", base64.b64decode(blank_photo()), "image/png")})
    assert form.status_code == 500
    assert seen == [quality, quality]


def test_an_unknown_matte_quality_is_a_422_naming_the_field(make_ingress):
    async def never(*_):
        raise AssertionError("no stage runs for an invalid request")
    status, body = _call(make_ingress(never), {"image": blank_photo(), "quality": "ultra"})
    assert status == 422 and body["error"]["field"] == "quality"
