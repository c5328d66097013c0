"""The whole graph through a real local Ray Serve app over HTTP: happy paths, signed URLs, and bad inputs."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.serve, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def service(serve_app):
    """The session's app (serve_config.yaml, CPU profile) with usage rows flushed per request and anonymous input
    caching on for this module."""
    with serve_app.configured({"AvatarIngress": {"usage_flush_interval_s": 0},
                               "LoadPhoto": {"input_cache_anonymous": True}}):
        with serve_app.client() as client:
            client.usage_dir = str(serve_app.data / "usage")
            yield client


def _b64(image: np.ndarray, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, quality=92)
    return base64.b64encode(buf.getvalue()).decode()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb shape), with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("style", ["corporate_headshot", "anime_character", "editorial_portrait"])
def test_generate_each_style(service, astronaut, style):
    resp = service.post("/v1/avatar/generate", json={"image": _b64(astronaut), "style": style, "platform": "linkedin"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["face_detected"] is True and body["face_count"] == 1
    assert body["style"] == style and body["platform"] == "linkedin"
    assert (body["width"], body["height"]) == (800, 800)
    assert 0.0 <= body["likeness_score"] <= 1.0 and 0.0 <= body["input_quality_score"] <= 1.0
    png = service.get(body["avatar_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (800, 800)
    assert image.text["avatar:style"] == style and image.text["avatar:request_id"] == body["request_id"]
    assert image.text["avatar:style_engine"].startswith("cpu/")
    thumb = Image.open(io.BytesIO(service.get(body["thumbnail_url"]).content))
    assert thumb.size == (100, 100)


def test_signed_urls_refuse_tampering(service, astronaut):
    body = service.post("/v1/avatar/generate", json={"image": _b64(astronaut), "platform": "discord",
                                                     "resolution": "high"}).json()
    assert body["style"] == "anime_character" and body["width"] == 1200
    url = body["avatar_url"]
    assert Image.open(io.BytesIO(service.get(url).content)).size == (1200, 1200)
    tampered = url.replace("signature=", "signature=0")
    assert service.get(tampered).status_code == 403
    other_key = url.replace(body["request_id"], body["request_id"] + "x")
    assert service.get(other_key).status_code == 403
    expired = url.split("expires=")[0] + "expires=1000&" + url.split("&", 1)[1]
    resp = service.get(expired)
    assert resp.status_code == 403 and resp.json()["error"]["field"] in ("signature", "expires")


def test_multipart_upload(service, astronaut):
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="PNG")
    resp = service.post("/v1/avatar/generate", files={"image": ("me.png", buf.getvalue(), "image/png")},
                        data={"style": "editorial_portrait", "platform": "portfolio", "style_intensity": "0.5"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["style"] == "editorial_portrait"


def test_no_face_answers_422(service):
    from skimage import data
    resp = service.post("/v1/avatar/generate", json={"image": _b64(data.coffee())})
    assert resp.status_code == 422
    body = resp.json()
    assert body["face_detected"] is False and body["face_count"] == 0
    assert 0.0 <= body["input_quality_score"] <= 1.0
    assert body["error"]["code"] == "no_face_detected"


def _bad_inputs(astronaut: np.ndarray) -> list[tuple[str, dict | bytes, int, str | None]]:
    jpeg = base64.b64decode(_b64(astronaut))
    gif = io.BytesIO()
    Image.fromarray(astronaut).save(gif, format="GIF")
    small = _b64(np.asarray(Image.fromarray(astronaut).resize((150, 150))))
    enc = lambda raw: base64.b64encode(raw).decode()
    return [
        ("empty body", b"", 400, None),
        ("neither image field", {"style": "corporate_headshot"}, 422, "image"),
        ("both image fields", {"image": enc(jpeg), "image_url": "https://example.com/a.jpg"}, 422, "image"),
        ("broken base64", {"image": "not*base64!!"}, 422, "image"),
        ("truncated jpeg", {"image": enc(jpeg[: len(jpeg) // 3])}, 422, "image"),
        ("gif", {"image": enc(gif.getvalue())}, 415, "image"),
        ("svg", {"image": enc(b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"/>')}, 415, "image"),
        ("text", {"image": enc(b"hello, this is not an image at all")}, 415, "image"),
        ("150x150", {"image": small}, 422, "image"),
        ("50000x50000 header", {"image": enc(_png_header(50000, 50000))}, 413, "image"),
        ("url to loopback", {"image_url": "http://127.0.0.1:8000/healthz"}, 422, "image_url"),
        ("url to metadata", {"image_url": "http://169.254.169.254/latest/meta-data/"}, 422, "image_url"),
        ("unknown style", {"image": enc(jpeg), "style": "pirate"}, 422, "style"),
        ("unknown platform", {"image": enc(jpeg), "platform": "myspace"}, 422, "platform"),
        ("intensity out of range", {"image": enc(jpeg), "style_intensity": 1.5}, 422, "style_intensity"),
        ("json array", b"[1, 2]", 400, None),
        ("not json", b"{oops", 400, None),
    ]


def test_bad_inputs_get_clear_4xx_and_service_stays_healthy(service, astronaut):
    for name, payload, status, field in _bad_inputs(astronaut):
        if isinstance(payload, bytes):
            resp = service.post("/v1/avatar/generate", content=payload, headers={"content-type": "application/json"})
        else:
            resp = service.post("/v1/avatar/generate", json=payload)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        error = resp.json()["error"]
        assert error["code"] and error["message"], name
        assert error["field"] == field, f"{name}: field {error['field']!r}"
        assert "Traceback" not in resp.text, name
    unknown = service.post("/v1/avatar/generate", json={"image": "eA==", "platform": "myspace"}).json()
    assert "linkedin" in unknown["error"]["message"]   # names the allowed values
    assert service.get("/healthz").json() == {"status": "ok"}


def test_openapi_and_unknown_route(service):
    doc = service.get("/openapi.json").json()
    assert "/v1/avatar/generate" in doc["paths"]
    assert "GenerateRequest" in doc["components"]["schemas"]
    assert service.get("/v1/nothing").status_code == 404
    assert service.post("/v1/avatar/generate", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def _small_face(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut at full size on a large canvas: face coverage about 0.12."""
    canvas = np.full((1000, 1300, 3), 235, np.uint8)
    canvas[250:762, 400:912] = astronaut
    return canvas


def _two_faces(astronaut: np.ndarray) -> np.ndarray:
    canvas = np.full((700, 1000, 3), 200, np.uint8)
    canvas[50:650, 350:950] = np.asarray(Image.fromarray(astronaut).resize((600, 600)))   # larger, off-centre
    canvas[300:600, 20:320] = np.asarray(Image.fromarray(astronaut).resize((300, 300)))
    return canvas


def test_small_face_is_refused_by_check_and_generate(service, astronaut):
    image = _b64(_small_face(astronaut))
    check = service.post("/v1/avatar/check", json={"image": image})
    assert check.status_code == 200, check.text
    report = check.json()
    assert report["face_detected"] and not report["accepted"] and report["face_coverage"] < 0.15
    assert "face_too_small" in {w["code"] for w in report["validation_warnings"]}
    gen = service.post("/v1/avatar/generate", json={"image": image})
    assert gen.status_code == 422, gen.text
    body = gen.json()
    assert body["error"]["code"] == "face_too_small"
    assert body["face_coverage"] == pytest.approx(report["face_coverage"], abs=1e-3)


def test_two_faces_use_the_larger_one_and_warn(service, astronaut):
    image = _b64(_two_faces(astronaut))
    report = service.post("/v1/avatar/check", json={"image": image}).json()
    assert report["face_count"] == 2 and report["accepted"]
    assert "multiple_faces" in {w["code"] for w in report["validation_warnings"]}
    faces = report["faces"]                            # the dominant (larger) face first, boxes in photo pixels
    assert [f["dominant"] for f in faces] == [True, False] and faces[0]["coverage"] > faces[1]["coverage"]
    assert all(len(f["box"]) == 4 and 0 <= f["box"][0] < f["box"][2] for f in faces)
    body = service.post("/v1/avatar/generate", json={"image": image, "platform": "slack"}).json()
    assert body["face_count"] == 2 and "multiple_faces" in {w["code"] for w in body["validation_warnings"]}
    # coverage is measured on the face used: ~0.18 for the 600 px copy, ~0.09 for the 300 px one
    assert body["face_coverage"] > 0.13 and report["face_coverage"] == pytest.approx(body["face_coverage"], abs=1e-3)
    assert body["billable"] and body["likeness_score"] >= 0.85


def test_check_is_cheap_and_validates(service, astronaut):
    report = service.post("/v1/avatar/check", json={"image": _b64(astronaut), "platform": "linkedin"}).json()
    assert report["accepted"] and report["face_count"] == 1 and report["face_coverage"] >= 0.15
    assert set(report["head_angle"]) == {"yaw", "pitch", "roll"}
    bad = service.post("/v1/avatar/check", json={"image": _b64(astronaut), "platform": "myspace"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "platform"


def test_usage_log_has_one_row_per_generate_request(service, astronaut):
    import pyarrow.dataset as ds
    body = service.post("/v1/avatar/generate", json={"image": _b64(astronaut), "style": "editorial_portrait",
                                                     "platform": "twitter"}).json()
    refused = service.post("/v1/avatar/generate", json={"image": _b64(_small_face(astronaut))}).json()
    table = ds.dataset(service.usage_dir, format="parquet", partitioning="hive").to_table().to_pylist()
    rows = {r["request_id"]: r for r in table}
    assert len(rows) == len(table)   # one row per request
    row = rows[body["request_id"]]
    assert (row["style"], row["platform"], row["billable"], row["attempts"]) == \
        ("editorial_portrait", "twitter", body["billable"], body["attempts"])
    assert row["likeness"] == pytest.approx(body["likeness_score"], abs=1e-3)
    assert row["face_present"] and row["content_safe"] and row["outcome"] == "delivered"
    miss = rows[refused["request_id"]]
    assert miss["outcome"] == "face_too_small" and not miss["billable"]
    assert service.get("/v1/stats").status_code == 401   # operator-only
    stats = service.get("/v1/stats", headers={"authorization": "Bearer operator-secret"}).json()
    assert stats["counts"]["generate"] >= 2 and stats["pass_rate"]["face_present"] == 1.0


def test_cached_input_is_reused_without_upload(service, astronaut):
    check = service.post("/v1/avatar/check", json={"image": _b64(astronaut), "cache_input": True}).json()
    input_id = check["input_id"]
    assert input_id.startswith("in_") and check["input_expires_at"]
    body = service.post("/v1/avatar/generate", json={"input_id": input_id, "style": "anime_character",
                                                     "platform": "discord"})
    assert body.status_code == 200, body.text
    assert body.json()["face_count"] == 1 and "input_id" not in body.json()
    missing = service.post("/v1/avatar/generate", json={"input_id": "in_" + "A" * 22})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "input_id"
    both = service.post("/v1/avatar/generate", json={"input_id": input_id, "image": _b64(astronaut)})
    assert both.status_code == 422
    plain = service.post("/v1/avatar/generate", json={"image": _b64(astronaut)}).json()
    assert "input_id" not in plain   # stateless unless asked


def test_no_serve_process_loads_pandas(service):
    """Controller, proxy and every replica run with `service.serve_imports`' hook: Ray Serve's optional pandas (and
    the pyarrow pandas brings) stays out of them. The two that write the Parquet usage log (ingress, job runner) load
    pandas at their first write all the same: pyarrow's Parquet writer imports it."""
    import psutil
    from ray._private import state

    serve_actors = [a for a in state.actors().values() if a["State"] == "ALIVE" and a.get("Pid") and any(
        kind in a["ActorClassName"] for kind in ("ServeReplica", "ServeController", "ProxyActor"))]
    assert len(serve_actors) >= 10   # controller, proxy, ingress, the stages, the job runner
    usage_writers = ("AvatarIngress", "JobRunner")
    checked = [a for a in serve_actors if not a["ActorClassName"].endswith(usage_writers)]
    assert len(checked) == len(serve_actors) - 2
    loaded = {a["ActorClassName"]: sorted({m.path for m in psutil.Process(int(a["Pid"])).memory_maps()
                                            if "/pandas/" in m.path})[:1] for a in checked}
    assert not any(loaded.values()), {name: paths for name, paths in loaded.items() if paths}
