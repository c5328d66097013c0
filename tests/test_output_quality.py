"""The whole flow (in-process pipeline) on portraits composited onto vivid walls and on group photos: no trace of the
old background in the avatars of the three styles, the gate's background check and its retry with a stricter matte,
faces counted right in generate and in check."""

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
from groups import groups  # noqa: E402

from avatar.contracts import GenerateRequest  # noqa: E402
from avatar.flow.local import LocalPipeline  # noqa: E402
from avatar.flow.names import Stage  # noqa: E402
from avatar.job import AvatarJob, PhotoInput  # noqa: E402
from avatar.vision.matting import PersonMatter  # noqa: E402

CASES = {"corporate_headshot": "linkedin", "anime_character": "discord", "editorial_portrait": "portfolio"}
MAX_REMNANT = 0.003          # share of the frame
MAX_FRINGE = 0.04            # share of the silhouette's edge band


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Iterator[LocalPipeline]:
    store = f"file://{tmp_path_factory.mktemp('avatars')}"
    with LocalPipeline(configs={"save_avatar": {"storage_uri": store}, "load_photo": {"input_cache": False}}) as p:
        yield p


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def generate(pipeline: LocalPipeline, photo: np.ndarray, **fields) -> tuple[np.ndarray, AvatarJob]:
    job = pipeline.generate(GenerateRequest(image="-", **fields), PhotoInput(data=_png(photo)))
    data = pipeline.stages[Stage.SAVE_AVATAR].storage.get(job.avatar_key)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), job


@pytest.mark.parametrize("style", list(CASES))
def test_no_old_background_left_on_vivid_walls(pipeline, face_analyzer, style):
    platform = CASES[style]
    reference, _ = generate(pipeline, walls.composite("grey").photo, style=style, platform=platform)
    for name in walls.WALLS:
        comp = walls.composite(name)
        out, job = generate(pipeline, comp.photo, style=style, platform=platform)
        alpha, _ = walls.in_output(comp, face_analyzer, platform, out.shape[0])
        remnant = walls.remnant_share(out, reference, alpha, comp.colours)
        fringe = walls.edge_fringe(out, reference, alpha, comp.colours)
        print(f"{style} on {name}: old background {remnant:.3%} of the frame, edge fringe {fringe:.2%}, "
              f"attempts {job.attempt}, gate remnant {job.gate.background_remnant:.4f}")
        assert remnant <= MAX_REMNANT and fringe <= MAX_FRINGE, name
        assert job.gate.checks["background"] and job.billable


class CoarseUntil:
    """The service's matter, but answering with the unchecked coarse mask below matting level `level` (how the
    service composited before the checks existed): the fault the gate must catch."""

    def __init__(self, matter: PersonMatter, level: int) -> None:
        self.matter, self.level = matter, level
        self.levels_seen: list[int] = []

    def mask(self, rgb):
        return self.matter.mask(rgb)

    def matte(self, rgb, landmarks, level=0):
        from avatar.vision.matting import Matte
        self.levels_seen.append(level)
        if level >= self.level:
            return self.matter.matte(rgb, landmarks, level)
        alpha = self.matter.mask(rgb)
        check = self.matter.matte(rgb, landmarks, 0).check
        return Matte(alpha, rgb.astype(np.float32), check, (alpha > 0.5).astype(np.float64), level)


@pytest.mark.parametrize("fixed_at, attempts, billable", [(1, 2, True), (9, 3, False)])
def test_old_background_is_retried_with_a_stricter_matte(pipeline, fixed_at, attempts, billable):
    stage = pipeline.stages[Stage.BG_GENERATE]
    real = stage.segmenter
    stage.segmenter = fault = CoarseUntil(real, fixed_at)
    try:
        _, job = generate(pipeline, walls.composite("magenta").photo, style="corporate_headshot", platform="linkedin")
    finally:
        stage.segmenter = real
    codes = {w.code for w in job.warnings}
    print(f"levels {fault.levels_seen}; history {[h['checks'] for h in job.history]}; warnings {codes}")
    assert job.attempt == attempts and fault.levels_seen == list(range(attempts))
    assert not job.history[0]["checks"]["background"]
    assert job.billable is billable
    assert ("old_background_visible" in codes) is (not billable)
    if billable:
        assert job.history[-1]["checks"]["background"] and job.gate.background_remnant <= MAX_REMNANT


def test_likeness_and_face_survive_the_matte(pipeline, astronaut):
    for style, platform in CASES.items():
        _, job = generate(pipeline, astronaut, style=style, platform=platform)
        assert job.attempt == 1 and all(job.gate.checks.values()), (style, job.gate.checks)


def test_generate_counts_every_face_of_a_group(pipeline):
    group = next(g for g in groups() if g.name == "three_mixed")
    _, job = generate(pipeline, group.image, style="corporate_headshot", platform="generic")
    assert job.face_count == 3
    assert any(w.code == "multiple_faces" and "3 faces" in w.message for w in job.warnings)


def test_check_lists_the_faces_with_the_dominant_first(pipeline):
    group = next(g for g in groups() if g.name == "six_sizes")
    stage = pipeline.stages[Stage.LOAD_PHOTO]
    job = AvatarJob(request_id="req_check", style="", platform="generic", size=0, intensity=0)
    job = stage.run(job, PhotoInput(data=_png(group.image)))
    report = pipeline.stages[Stage.FACE_DETECT].check(job)
    faces = report["faces"]
    print([(f["box"], f["score"], f["dominant"]) for f in faces])
    assert report["face_count"] == len(faces) == 6
    assert [f["dominant"] for f in faces] == [True] + [False] * 5
    widths = [f["box"][2] - f["box"][0] for f in faces]
    assert widths[0] == max(widths)
    for f in faces:
        x0, y0, x1, y1 = f["box"]
        assert 0 <= x0 < x1 <= group.image.shape[1] and 0 <= y0 < y1 <= group.image.shape[0]
        assert sum(bx0 <= (x0 + x1) / 2 < bx1 and by0 <= (y0 + y1) / 2 < by1
                   for bx0, by0, bx1, by1 in group.boxes) == 1


def test_check_boxes_are_in_the_uploaded_photos_pixels(pipeline):
    """A photo larger than the working side (2048) is downscaled for detection; boxes come back in its own pixels."""
    import cv2
    group = next(g for g in groups() if g.name == "two_side_by_side")
    big = cv2.resize(group.image, (3200, 1600), interpolation=cv2.INTER_LINEAR)
    job = AvatarJob(request_id="req_check", style="", platform="generic", size=0, intensity=0)
    job = pipeline.stages[Stage.LOAD_PHOTO].run(job, PhotoInput(data=_png(big)))
    faces = pipeline.stages[Stage.FACE_DETECT].check(job)["faces"]
    assert len(faces) == 2 and max(f["box"][2] for f in faces) > 2048
