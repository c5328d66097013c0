"""Face counting on group photos composed from the packaged portraits (tests/groups.py): two, three and six faces at
several sizes and head angles, each counted exactly, every face boxed, none twice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from groups import groups  # noqa: E402

from avatar.types import DetectedFace  # noqa: E402
from avatar.vision.face.detector import merge, tiles  # noqa: E402

GROUPS = {g.name: g for g in groups()}


def _inside(face_box, tile) -> bool:
    cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    return tile[0] <= cx < tile[2] and tile[1] <= cy < tile[3]


@pytest.mark.parametrize("name", list(GROUPS))
def test_every_face_is_counted_once(face_analyzer, name):
    group = GROUPS[name]
    faces = face_analyzer.detect(group.image)
    print(f"{name}: {len(faces)} of {group.count}: " + ", ".join(f"{f.box[2] - f.box[0]:.0f}px {f.score:.2f}"
                                                                    for f in faces))
    assert len(faces) == group.count
    for tile in group.boxes:                         # one face in every pasted portrait
        assert sum(_inside(f.box, tile) for f in faces) == 1, tile
    assert all(f.landmarks is not None and f.landmarks.shape == (468, 2) for f in faces)


def test_dominant_face_is_the_largest_in_a_group(face_analyzer):
    faces = face_analyzer.detect(GROUPS["two_sizes"].image)
    assert faces[0].box[2] - faces[0].box[0] > 1.3 * (faces[1].box[2] - faces[1].box[0])
    assert faces[0].box[0] < 400 < faces[1].box[0]


def test_merge_keeps_the_best_of_overlapping_boxes():
    kp = np.zeros((6, 2), np.float32)
    a = DetectedFace((100, 100, 200, 200), 0.7, kp)
    b = DetectedFace((105, 102, 205, 198), 0.9, kp)           # the same face from the other model
    c = DetectedFace((120, 120, 170, 170), 0.8, kp)           # a partial box inside it (a tile edge)
    d = DetectedFace((300, 100, 400, 200), 0.6, kp)           # another face
    kept = merge([a, b, c, d])
    assert [f.score for f in kept] == [0.9, 0.6]


def test_tiles_cover_the_photo_and_overlap_by_a_third():
    grid = tiles(900, 600)
    assert len(grid) == 4
    assert min(t.x0 for t in grid) == 0 and max(t.x1 for t in grid) == 900
    assert min(t.y0 for t in grid) == 0 and max(t.y1 for t in grid) == 600
    left, right = sorted({(t.x0, t.x1) for t in grid})
    assert left[1] - right[0] == 300                          # any face narrower than a third lies in one tile
    assert all(t.inner != (False, False, False, False) for t in grid)


def test_faces_below_the_counting_size_are_not_reported(face_analyzer, astronaut):
    """A face under 4 % of the photo's side: found (the tiles reach it) but too small to count as a person in the picture."""
    import cv2

    from avatar.store.models import resolve
    from avatar.vision.face.detector import FaceDetector
    canvas = np.full((1000, 1000, 3), 128, np.uint8)
    canvas[400:600, 400:600] = cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA)   # face ~38 px
    everything = FaceDetector(str(resolve("face_detector")), str(resolve("face_detector_full")), min_face_share=0.0)
    try:
        assert len(everything.detect(canvas)) == 1
    finally:
        everything.close()
    assert face_analyzer.detect(canvas) == []
