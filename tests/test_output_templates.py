"""Transparent output and profile templates: the request fields (validated, hostile values refused with a 422 naming
the field), the shapes and borders as drawn, and the delivered PNG and thumbnail through the in-process pipeline."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import walls  # noqa: E402

from avatar.contracts import GenerateRequest, parse_request  # noqa: E402
from avatar.engines.template import OutputTemplate, apply, coverage, frame, parse_colour  # noqa: E402
from avatar.errors import InvalidRequest  # noqa: E402

BASE = {"image": "aGVsbG8="}


# ------------------------------------------------------------------------------------------------ request fields
@pytest.mark.parametrize("fields, template", [
    ({}, OutputTemplate()),
    ({"background": "transparent"}, OutputTemplate(transparent=True)),
    ({"shape": "circle"}, OutputTemplate(shape="circle")),
    ({"shape": "rounded", "border_color": "#1A73e8"}, OutputTemplate("rounded", (26, 115, 232), 8)),
    ({"border_width": "12"}, OutputTemplate(border_color=None, border_width=12)),
    ({"border_color": "#fff", "border_width": 0}, OutputTemplate(border_color=(255, 255, 255), border_width=0)),
])
def test_template_fields_are_read(fields, template):
    assert parse_request(GenerateRequest, {**BASE, **fields}).template == template


@pytest.mark.parametrize("field, value", [
    ("shape", "triangle"), ("shape", 5), ("shape", None), ("shape", ["circle"]),
    ("border_color", "red"), ("border_color", "#12345"), ("border_color", "#GGGGGG"), ("border_color", 123),
    ("border_color", "#" + "f" * 10_000), ("border_color", {"r": 1}),
    ("border_width", 10**12), ("border_width", -1), ("border_width", 81), ("border_width", 3.5), ("border_width", True),
    ("border_width", "wide"), ("border_width", [4]), ("border_width", float("nan")),
    ("background", "transparant"), ("background", 0),
])
def test_hostile_template_values_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidRequest) as caught:
        parse_request(GenerateRequest, {**BASE, field: value})
    err = caught.value
    assert err.status == 422 and err.field == field and field in err.message and len(err.message) < 400


def test_hex_colours():
    assert parse_colour("#000") == (0, 0, 0) and parse_colour(" #A0b1C2 ") == (160, 177, 194)
    for bad in ("", "#", "000000", "#00000g", "#0000", "rgb(0,0,0)"):
        with pytest.raises(ValueError):
            parse_colour(bad)


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    """The real FastAPI app over a real ingress whose stages must never run (these requests are refused first)."""
    from fastapi.testclient import TestClient

    from avatar.flow.names import Stage
    from service.app import app
    from service.dependencies import get_ingress
    from service.ingress import Ingress

    class NoStage:
        def __getattr__(self, name):
            raise AssertionError(f"a refused request reached a stage ({name})")

        def options(self, **_):
            return self
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVATAR_DATA_DIR", str(tmp_path_factory.mktemp("templates-data")))
        ingress = Ingress(**{stage.value: NoStage() for stage in Stage})
        ingress.reconfigure({"usage_flush_interval_s": 0})
        app.dependency_overrides[get_ingress] = lambda: ingress
        try:
            yield TestClient(app, raise_server_exceptions=False)
        finally:
            app.dependency_overrides.pop(get_ingress, None)


@pytest.mark.parametrize("field, value, code", [
    ("border_width", 1_000_000, "invalid_field"), ("border_width", "4px", "invalid_field"),
    ("border_width", True, "invalid_field"), ("border_color", "blue", "invalid_border_color"),
    ("shape", "hexagon", "unknown_shape"),
    ("background", "glass", "unknown_background"),
])
def test_http_422_names_the_field(http, field, value, code):
    resp = http.post("/v1/avatar/generate", json={**BASE, field: value})
    body = resp.json()
    assert resp.status_code == 422, body
    assert body["error"]["field"] == field and body["error"]["code"] == code


def test_openapi_documents_the_template_fields(http):
    schema = http.get("/openapi.json").json()["components"]["schemas"]
    assert {"shape", "border_color", "border_width"} <= set(schema["GenerateRequest"]["properties"])
    assert {"box", "score", "dominant"} <= set(schema["FaceFound"]["properties"])
    assert "faces" in schema["CheckResponse"]["properties"]


# ------------------------------------------------------------------------------------------------ drawing
def test_shapes_cover_what_they_should():
    n = 200
    square, circle, rounded = (coverage(n, s) for s in ("square", "circle", "rounded"))
    assert square.min() == 1.0
    assert circle[0, 0] == 0.0 and circle[100, 100] == 1.0 and circle[100, 0] > 0.4 and circle[100, 2] == 1.0
    assert rounded[0, 0] == 0.0 and rounded[100, 0] == 1.0 and rounded[0, 100] == 1.0
    assert 0.0 < circle[29, 29] < 1.0 or 0.0 < circle[30, 30] < 1.0         # anti-aliased rim
    assert abs(circle.sum() / n ** 2 - np.pi / 4) < 0.01


def test_border_is_a_band_of_its_colour_inside_the_shape():
    rgb = np.full((400, 400, 3), 90, np.uint8)
    out = apply(rgb, None, OutputTemplate("circle", (255, 0, 0), 40))          # 20 px at 400 px
    assert out.shape == (400, 400, 4)
    assert out[200, 5, 3] == 255 and tuple(out[200, 5, :3]) == (255, 0, 0)     # in the band
    assert tuple(out[200, 30, :3]) == (90, 90, 90) and out[200, 30, 3] == 255  # inside it
    assert out[2, 2, 3] == 0                                                    # outside the circle
    square = apply(rgb, None, OutputTemplate("square", (0, 0, 255), 40))
    assert square.shape == (400, 400, 3) and tuple(square[3, 200]) == (0, 0, 255) and tuple(square[30, 200]) == (90,) * 3


def test_thumbnail_follows_the_template_at_its_own_size():
    rgb = np.full((800, 800, 3), 60, np.uint8)
    alpha = np.zeros((512, 512), np.float32)
    alpha[100:400, 150:350] = 1.0
    full, thumb = frame(rgb, alpha, OutputTemplate("rounded", (0, 255, 0), 16, transparent=True), 100)
    assert full.shape == (800, 800, 4) and thumb.shape == (100, 100, 4)
    assert thumb[0, 0, 3] == 0 and full[0, 0, 3] == 0
    assert thumb[50, 1, 3] == 255 and tuple(thumb[50, 1, :3]) == (0, 255, 0)   # the border scales down to 2 px
    assert thumb[50, 50, 3] == 255 and thumb[10, 50, 3] == 0                     # the person, the transparent rest


def test_plain_template_changes_nothing():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(apply(rgb, None, OutputTemplate()), rgb)


# ------------------------------------------------------------------------------------------------ delivered files
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Iterator:
    from avatar.flow.local import LocalPipeline
    store = f"file://{tmp_path_factory.mktemp('avatars')}"
    with LocalPipeline(configs={"save_avatar": {"storage_uri": store}, "load_photo": {"input_cache": False}}) as p:
        yield p


def _deliver(pipeline, photo: np.ndarray, **fields) -> tuple[Image.Image, Image.Image, object]:
    from avatar.job import PhotoInput
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    job = pipeline.generate(GenerateRequest(image="-", **fields), PhotoInput(data=buf.getvalue()))
    storage = pipeline.stages["save_avatar"].storage
    return (Image.open(io.BytesIO(storage.get(job.avatar_key))), Image.open(io.BytesIO(storage.get(job.thumbnail_key))),
            job)


def test_transparent_background_is_an_rgba_png_with_the_matte(pipeline, face_analyzer):
    comp = walls.composite("magenta")
    image, thumb, job = _deliver(pipeline, comp.photo, style="corporate_headshot", platform="linkedin",
                                 background="transparent")
    assert image.mode == "RGBA" and image.size == (800, 800) and thumb.mode == "RGBA" and thumb.size == (100, 100)
    rgba = np.asarray(image)
    truth, _ = walls.in_output(comp, face_analyzer, "linkedin", 800)
    alpha = rgba[..., 3] / 255.0
    print(f"mean |alpha - true alpha| {np.abs(alpha - truth).mean():.4f}")
    assert np.abs(alpha - truth).mean() < 0.01
    import cv2
    away = np.ones((9, 9), np.uint8)                       # more than 4 px from the true edge
    person = cv2.erode((truth > 0.99).astype(np.uint8), away).astype(bool)
    backdrop = cv2.erode((truth < 0.01).astype(np.uint8), away).astype(bool)
    assert (alpha[person] > 0.97).mean() > 0.998 and (alpha[backdrop] < 0.03).mean() > 0.998
    visible = rgba[..., 3] > 8
    assert walls.wall_coloured(rgba[..., :3], comp.colours, 0.3)[visible].mean() < 0.002   # no magenta in the edge
    assert walls.wall_coloured(rgba[..., :3], comp.colours, 0.5).mean() < 1e-4           # nor under alpha 0
    assert job.billable and all(job.gate.checks.values())


def test_circle_with_border_and_its_thumbnail(pipeline, astronaut):
    image, thumb, job = _deliver(pipeline, astronaut, style="editorial_portrait", platform="portfolio",
                                 shape="circle", border_color="#ffcc00", border_width=12)
    rgba, small = np.asarray(image), np.asarray(thumb)
    assert image.mode == "RGBA" and rgba[0, 0, 3] == 0 and rgba[400, 400, 3] == 255
    assert tuple(rgba[400, 4, :3]) == (255, 204, 0) and rgba[400, 4, 3] == 255
    assert small[0, 0, 3] == 0 and small[50, 50, 3] == 255 and tuple(small[50, 0, :3]) == (255, 204, 0)
    assert job.billable


def test_transparent_rounded_avatar_keeps_corners_and_background_clear(pipeline, astronaut):
    image, thumb, _ = _deliver(pipeline, astronaut, style="anime_character", platform="discord",
                               background="transparent", shape="rounded")
    rgba = np.asarray(image)
    assert rgba[0, 0, 3] == 0 and rgba[250, 15, 3] < 10          # a corner, and the backdrop beside the head
    assert rgba[400, 400, 3] == 255                             # the face
