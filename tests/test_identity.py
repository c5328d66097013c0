"""Identity descriptor distances on faithful transforms vs other people, and the calibrated likeness curve."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from avatar.vision.calibration import CALIBRATION_PATH, LikenessCurve, likeness_from_distance, load_curve
from avatar.vision.identity import IdentityModel


@pytest.fixture(scope="module")
def identity() -> IdentityModel:
    return IdentityModel.load()


@pytest.fixture(scope="module")
def reference(identity, astronaut, astronaut_face) -> np.ndarray:
    emb = identity.embed(astronaut, astronaut_face.box)
    assert emb is not None
    return emb


@pytest.fixture(scope="module")
def hopper():
    from matplotlib import cbook
    from PIL import Image
    return np.array(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


def _flip(img, box):
    w = img.shape[1]
    return np.ascontiguousarray(img[:, ::-1]), (w - box[2], box[1], w - box[0], box[3])


def _half(img, box):
    return cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), tuple(v / 2 for v in box)


def _darker(img, box):
    return (255 * (img / 255.0) ** 1.5).astype(np.uint8), box


def _jpeg(img, box):
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), box


def _blur(img, box):
    return cv2.GaussianBlur(img, (0, 0), 1.2), box


def _shifted_box(img, box):
    dx = 0.08 * (box[2] - box[0])
    return img, (box[0] + dx, box[1] - dx, box[2] + dx, box[3] - dx)


@pytest.mark.parametrize("transform", [_flip, _half, _darker, _jpeg, _blur, _shifted_box])
def test_faithful_transforms_stay_the_same_person(identity, reference, astronaut, astronaut_face, transform):
    img, box = transform(np.array(astronaut), astronaut_face.box)
    emb = identity.embed(img, box)
    assert emb is not None and emb.shape == (128,) and emb.dtype == np.float32
    assert identity.distance(reference, emb) < 0.6


def test_a_different_person_is_farther_than_any_transform(identity, reference, astronaut, astronaut_face, hopper,
                                                          face_analyzer):
    other = identity.embed(hopper, face_analyzer.detect(hopper)[0].box)
    flipped = identity.embed(*_flip(np.array(astronaut), astronaut_face.box))
    d_other = identity.distance(reference, other)
    assert d_other > 0.6 and d_other > 2 * identity.distance(reference, flipped)
    assert likeness_from_distance(d_other) < 0.5


def test_unmeasurable_boxes_give_none(identity, astronaut):
    assert identity.embed(astronaut, (10, 10, 12, 12)) is None
    assert identity.embed(astronaut, (600, 600, 700, 700)) is None
    assert identity.embed(np.zeros((4, 4), np.uint8), (0, 0, 4, 4)) is None


def test_likeness_is_monotonic_and_bounded():
    d = np.linspace(0.0, 1.5, 301)
    scores = np.array([likeness_from_distance(x) for x in d])
    assert np.all(np.diff(scores) < 0) and scores.min() >= 0.0 and scores.max() <= 1.0
    assert likeness_from_distance(None) == 0.0 and likeness_from_distance(float("nan")) == 0.0


def test_stored_curve_maps_the_documented_anchors():
    doc = json.loads(CALIBRATION_PATH.read_text())
    curve = load_curve()
    anchor = doc["anchor"]
    assert curve(anchor["distance"]) == pytest.approx(anchor["likeness"], abs=0.01)
    assert curve(0.60) == pytest.approx(0.60, abs=0.02)                  # dlib's accept line = gaming minimum
    assert 0.45 <= curve.distance_for(0.75) <= 0.56                       # social minimum near distance 0.5
    assert curve(0.43) >= 0.89                                            # top of real same-person range
    assert curve(0.75) < 0.3                                              # typical different people


def test_stored_provenance_separates_measured_classes():
    doc = json.loads(CALIBRATION_PATH.read_text())
    m, prov = doc["measured"], doc["provenance"]
    assert m["same_person_high_res"]["n"] > 0 and m["different_people_high_res"]["n"] > 0
    assert m["same_person_high_res"]["median"] < m["different_people_high_res"]["p5"]
    assert prov["identity_model"]["sha256"].startswith("55533b28a95800a5")
    curve = LikenessCurve(doc["parameters"]["slope"], doc["parameters"]["midpoint"])
    assert curve(m["same_person_high_res"]["median"]) >= 0.9
    assert curve(m["different_people_high_res"]["median"]) < 0.3


def test_inverse_round_trips():
    curve = load_curve()
    for t in (0.3, 0.6, 0.75, 0.85, 0.9):
        assert curve(curve.distance_for(t)) == pytest.approx(t, abs=1e-6)
