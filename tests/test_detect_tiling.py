"""Face counting with the tile pass only where the whole-frame detectors leave doubt: every group photo still counted
exactly, a single portrait detected with two model runs instead of six, and the pre-flight check always tiled."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from groups import groups  # noqa: E402

from avatar.vision.face import detector as detector_module  # noqa: E402
from avatar.vision.face.analyzer import FaceAnalyzer  # noqa: E402

GROUPS = {g.name: g for g in groups()}


@pytest.fixture(scope="module")
def auto():
    analyzer = FaceAnalyzer.load(tiled="auto")
    yield analyzer
    analyzer.close()


@pytest.fixture
def runs(monkeypatch) -> list[int]:
    """Counts model runs (whole frame or tile) of every FaceDetector."""
    seen: list[int] = []
    real = detector_module.FaceDetector._run

    def counting(detector, small, window, scale):
        seen.append(1)
        return real(detector, small, window, scale)

    monkeypatch.setattr(detector_module.FaceDetector, "_run", staticmethod(counting))
    return seen


@pytest.mark.parametrize("name", list(GROUPS))
def test_auto_tiling_counts_every_group_exactly(auto, name):
    group = GROUPS[name]
    assert len(auto.detect(group.image)) == group.count


def test_a_portrait_needs_no_tiles(auto, astronaut, runs):
    faces = auto.detect(astronaut)
    assert len(faces) == 1 and len(runs) == 2                # short- and full-range on the whole frame
    runs.clear()
    assert len(auto.detect(astronaut, exhaustive=True)) == 1 and len(runs) == 6   # + four tiles


def test_a_group_is_tiled(auto, runs):
    assert len(auto.detect(GROUPS["six_grid"].image)) == 6 and len(runs) == 6


def test_check_always_tiles_and_generate_only_where_needed(astronaut, runs):
    from avatar.flow.assembly import build_stage
    from avatar.flow.names import Stage
    from avatar.job import AvatarJob
    from avatar.stages import close_stage
    from avatar.vision.imageio import Pixels

    stage = build_stage(Stage.FACE_DETECT, {})
    try:
        job = AvatarJob(request_id="req_t", style="corporate_headshot", platform="generic", size=800, intensity=0.5)
        job.photo, job.photo_size = Pixels.of(astronaut), (512, 512)
        assert stage.check(job)["face_count"] == 1 and len(runs) == 6
        runs.clear()
        assert stage.run(job).face_count == 1 and len(runs) == 2
    finally:
        close_stage(stage)
