"""The HTTP surface without a cluster: the generated OpenAPI document, Swagger UI, routing errors and the error
mapping of Ray's failures."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def test_openapi_document_is_valid_and_complete(client):
    from openapi_spec_validator import validate
    doc = client.get("/openapi.json").json()
    validate(doc)
    paths = doc["paths"]
    assert {"/v1/avatar/generate", "/v1/avatar/check", "/v1/styles", "/v1/styles/{ident}", "/v1/files/{key}",
            "/healthz", "/v1/stats"} <= set(paths)
    for route in ("/v1/avatar/generate", "/v1/avatar/check"):
        body = paths[route]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "multipart/form-data"}   # both ways in are described
        form = body["multipart/form-data"]["schema"]["properties"]
        assert form["image"]["format"] == "binary"
        responses = paths[route]["post"]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("Response")
        for status in ("400", "413", "415", "422", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    generate_form = paths["/v1/avatar/generate"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"image_url", "input_id", "cache_input", "style", "platform", "resolution"} <= set(
        generate_form["schema"]["properties"])
    schemas = doc["components"]["schemas"]
    assert {"GenerateRequest", "GenerateResponse", "CheckRequest", "CheckResponse", "ErrorResponse",
            "StyleView"} <= set(schemas)
    assert "HTTPValidationError" not in schemas   # validation errors use the one error shape
    assert set(schemas["GenerateRequest"]["properties"]) >= {"image", "image_url", "input_id", "style_intensity"}


def test_request_headers_are_declared_by_the_handlers(client):
    """Idempotency-Key and Prefer are FastAPI header parameters of the routes that read them, so the document lists
    them on exactly those operations."""
    paths = client.get("/openapi.json").json()["paths"]

    def headers(route: str) -> set[str]:
        return {p["name"] for p in paths[route]["post"].get("parameters", []) if p["in"] == "header"}
    assert headers("/v1/avatar/generate") == {"Prefer", "Idempotency-Key"}
    assert headers("/v1/batches") == headers("/v1/styles") == {"Idempotency-Key"}
    assert headers("/v1/avatar/check") == set()


def test_swagger_ui_is_served(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text and "/openapi.json" in page.text


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v1/nothing", 404, "not_found"),
    ("GET", "/v1/avatar/generate", 405, "method_not_allowed"),
    ("DELETE", "/healthz", 405, "method_not_allowed"),
])
def test_routing_errors_are_json(client, method, path, status, code):
    resp = client.request(method, path)
    assert resp.status_code == status and resp.json()["error"]["code"] == code


def test_head_healthz(client):
    assert client.head("/healthz").status_code == 200


def test_a_stage_error_nested_in_ray_task_errors_keeps_its_own_code():
    """A chained stage whose input failed raises RayTaskError(RayTaskError(original)): the original is answered."""
    from ray.exceptions import RayTaskError

    from avatar.errors import InvalidRequest
    from service.errors import as_avatar_error
    original = InvalidRequest("the face is too small", field="image", code="face_too_small",
                              extra={"face_coverage": 0.1})
    inner = RayTaskError("FaceDetect.run", "traceback", original).as_instanceof_cause()
    outer = RayTaskError("StyleApply.run", "traceback", inner).as_instanceof_cause()
    error = as_avatar_error(outer)
    assert (error.status, error.code, error.field, error.extra) == (422, "face_too_small", "image",
                                                                    {"face_coverage": 0.1})


@pytest.mark.parametrize("exc_factory, status, code", [
    (lambda: __import__("ray.serve.exceptions", fromlist=["x"]).BackPressureError(
        num_queued_requests=4, max_queued_requests=4), 503, "overloaded"),
    (lambda: __import__("ray.exceptions", fromlist=["x"]).ActorDiedError(), 503, "stage_unavailable"),
    (lambda: TimeoutError(), 504, "timeout"),
    (lambda: RuntimeError("boom"), 500, "stage_failed"),
])
def test_ray_failures_map_by_type(exc_factory, status, code):
    from service.errors import as_avatar_error
    error = as_avatar_error(exc_factory(), 60)
    assert (error.status, error.code) == (status, code)


# ---------------------------------------------------------------- unexpected failures
@pytest.fixture()
def ingress_app(tmp_path, monkeypatch):
    """The app over a real ingress whose stages are stand-ins that crash (`stage_failed` territory)."""
    from avatar.flow.names import Stage
    from service.dependencies import get_ingress
    from service.ingress import Ingress
    from stand_ins import Handle
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AVATAR_OPERATOR_KEY", "op-secret")

    async def crash(*_):
        raise RuntimeError("model runtime blew up at 0x7f00dead")
    ingress = Ingress(**{stage.value: Handle(crash) for stage in Stage})
    ingress.reconfigure({"usage_flush_interval_s": 0})
    app.dependency_overrides[get_ingress] = lambda: ingress
    yield ingress, TestClient(app, raise_server_exceptions=False)
    app.dependency_overrides.pop(get_ingress, None)


def test_an_unexpected_error_outside_the_pipeline_is_an_internal_error_with_a_request_id(ingress_app, monkeypatch,
                                                                                          caplog):
    ingress, client = ingress_app

    def broken() -> dict:
        raise KeyError("column 'x' of a corrupt table at 0x7f00beef")
    monkeypatch.setattr(ingress.telemetry, "summary", broken)
    with caplog.at_level("ERROR", logger="avatar.http"):
        resp = client.get("/v1/stats", headers={"authorization": "Bearer op-secret"})
    body = resp.json()
    assert resp.status_code == 500 and body["error"]["code"] == "internal_error", body
    assert "stage" not in body["error"]["message"] and "pipeline" not in body["error"]["message"]
    assert body["request_id"].startswith("req_") and resp.headers["x-request-id"] == body["request_id"]
    assert "0x7f" not in resp.text and "KeyError" not in resp.text and "Traceback" not in resp.text
    logged = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None        # the operator finds the details by the request id
    again = client.get("/v1/stats", headers={"authorization": "Bearer op-secret"})
    assert again.json()["request_id"] != body["request_id"]   # one id per request


def test_a_failed_stage_stays_stage_failed_and_carries_its_request_id_header(ingress_app):
    from stand_ins import blank_photo
    _, client = ingress_app
    resp = client.post("/v1/avatar/generate", json={"image": blank_photo()})
    body = resp.json()
    assert resp.status_code == 500 and body["error"]["code"] == "stage_failed"
    assert resp.headers["x-request-id"] == body["request_id"] and body["request_id"].startswith("req_")
    assert "0x7f" not in resp.text


def test_ray_failures_outside_the_pipeline_keep_their_answers():
    from ray.serve.exceptions import BackPressureError

    from service.errors import as_internal_error
    assert as_internal_error(BackPressureError(num_queued_requests=1, max_queued_requests=1)).code == "overloaded"
    assert as_internal_error(TimeoutError()).status == 504
    assert (as_internal_error(ValueError("x")).status, as_internal_error(ValueError("x")).code) == (500,
                                                                                                   "internal_error")
