"""The gate inside the flow: retries at lower intensity, at most two, best attempt delivered unbilled with warnings."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from avatar.contracts import GenerateRequest, parse_request
from avatar.job import PhotoInput
from avatar.flow.local import LocalPipeline


class Destroying:
    """Wraps the real engine; above `keep_below` intensity it scrambles (or blurs) the face region."""

    def __init__(self, engine, mode: str, keep_below: float = 0.0) -> None:
        self.engine, self.mode, self.keep_below = engine, mode, keep_below
        self.name, self.version = "sabotage", "test"
        self.intensities: list[float] = []

    def apply(self, image, landmarks, spec):
        self.intensities.append(spec.intensity)
        out = self.engine.apply(image, landmarks, spec)
        if spec.intensity < self.keep_below:
            return out
        x0, y0 = np.floor(landmarks.min(0)).astype(int)
        x1, y1 = np.ceil(landmarks.max(0)).astype(int)
        face = out[y0:y1, x0:x1].copy()
        if self.mode == "blur":
            out[y0:y1, x0:x1] = cv2.GaussianBlur(face, (0, 0), 16)
        else:
            h, w = (face.shape[0] // 4) * 4, (face.shape[1] // 4) * 4
            blocks = face[:h, :w].reshape(4, h // 4, 4, w // 4, 3).swapaxes(1, 2).reshape(16, h // 4, w // 4, 3)
            order = np.random.default_rng(0).permutation(16)
            shuffled = blocks[order].reshape(4, 4, h // 4, w // 4, 3).swapaxes(1, 2).reshape(h, w, 3)
            out[y0:y0 + h, x0:x0 + w] = shuffled
        return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    with LocalPipeline(configs={"save_avatar": {"storage_uri": str(tmp_path_factory.mktemp("store"))}}) as p:
        yield p


@pytest.fixture(scope="module")
def photo(astronaut) -> PhotoInput:
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=92)
    return PhotoInput(data=buf.getvalue())


def _run(pipeline, photo, engine, **fields):
    stage = pipeline.stages["style_apply"]
    real, stage.engine = stage.engine, engine
    try:
        return pipeline.generate(parse_request(GenerateRequest, {"image": "", **fields}), photo)
    finally:
        stage.engine = real


@pytest.mark.parametrize("style", ["corporate_headshot", "anime_character", "editorial_portrait"])
def test_real_outputs_pass_first_time(pipeline, photo, style):
    job = _run(pipeline, photo, pipeline.stages["style_apply"].engine, style=style, platform="linkedin")
    assert job.billable and job.attempt == 1, job.history
    assert all(job.gate.checks.values())
    assert job.likeness_score >= 0.85


@pytest.mark.parametrize("style, mode, warning", [("corporate_headshot", "scramble", "low_likeness"),
                                                  ("corporate_headshot", "blur", "low_likeness"),
                                                  ("anime_character", "scramble", "no_face_in_output")])
def test_destroyed_face_is_retried_twice_then_delivered_unbilled(pipeline, photo, style, mode, warning):
    engine = Destroying(pipeline.stages["style_apply"].engine, mode)
    job = _run(pipeline, photo, engine, style=style, platform="linkedin", style_intensity=0.8)
    assert job.attempt == 3 and not job.billable
    assert engine.intensities == pytest.approx([0.8, 0.48, 0.288])
    assert [h["style_intensity"] for h in job.history] == pytest.approx(engine.intensities)
    codes = {w.code for w in job.warnings}
    assert warning in codes and "quality_gate_failed" in codes


def test_a_retry_at_lower_intensity_can_pass(pipeline, photo):
    engine = Destroying(pipeline.stages["style_apply"].engine, "scramble", keep_below=0.5)
    job = _run(pipeline, photo, engine, style="corporate_headshot", platform="linkedin", style_intensity=0.8)
    assert job.attempt == 2 and job.billable
    assert [h["passed"] for h in job.history] == [False, True]
    assert "quality_gate_failed" not in {w.code for w in job.warnings}


def test_a_pasted_different_face_fails_likeness(pipeline, photo, face_analyzer):
    from matplotlib import cbook

    from avatar.vision.face.align import align_face
    from avatar.catalog.platforms import PLATFORMS
    hopper = np.array(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))

    class Paste:
        name, version = "paste", "test"

        def apply(self, image, landmarks, spec):
            other = align_face(hopper, face_analyzer.detect(hopper)[0], PLATFORMS["linkedin"].framing,
                               image.shape[0]).image
            return other

    job = _run(pipeline, photo, Paste(), style="corporate_headshot", platform="linkedin")
    assert job.attempt == 3 and not job.billable
    assert "low_likeness" in {w.code for w in job.warnings}
    assert job.likeness_score < 0.6


class SaturatedBackgroundFlagged:
    """Stands in for the NSFW classifier (no unsafe images ship with the tests): flags a vivid, saturated border
    (neon backgrounds measure ~50 there, the calm studio background ~10)."""

    def nsfw_probability(self, rgb):
        border = np.concatenate([rgb[:120].reshape(-1, 3), rgb[:, :80].reshape(-1, 3), rgb[:, -80:].reshape(-1, 3)])
        border = border.astype(np.float32)
        saturation = (border.max(1) - border.min(1)).mean()
        return 0.9 if saturation > 30 else 0.01


def test_unsafe_background_is_regenerated_calmer_at_the_same_intensity(pipeline, photo):
    gate = pipeline.stages["quality_gate"].gate
    real, gate.safety = gate.safety, SaturatedBackgroundFlagged()
    try:
        job = _run(pipeline, photo, pipeline.stages["style_apply"].engine, style="anime_character",
                   platform="discord", style_intensity=0.8)
    finally:
        gate.safety = real
    assert job.attempt == 2 and job.billable, job.history
    first, second = job.history
    assert not first["checks"]["content_safety"] and second["checks"]["content_safety"]
    assert second["background"] == "studio_light" and second["style_intensity"] == first["style_intensity"]
