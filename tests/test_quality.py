"""Input quality score on the astronaut photo and degraded copies of it."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from avatar.vision.quality import MIN_COVERAGE, QualityReport, assess_input


def codes(report: QualityReport) -> set[str]:
    return {w.code for w in report.warnings}


def assess(face_analyzer, image: np.ndarray) -> QualityReport:
    faces = face_analyzer.detect(image)
    return assess_input(image, faces[0] if faces else None)


@pytest.fixture(scope="module")
def baseline(astronaut, astronaut_face) -> QualityReport:
    return assess_input(astronaut, astronaut_face)


def test_clean_portrait_scores_well_without_warnings(baseline):
    assert 0.6 < baseline.score <= 1.0
    assert baseline.sharpness > 0.8 and baseline.exposure > 0.8
    assert baseline.face_coverage >= MIN_COVERAGE and baseline.head_angle < 10
    assert baseline.warnings == []


def test_blurred_copy_is_less_sharp_and_warned(astronaut, face_analyzer, baseline):
    report = assess(face_analyzer, cv2.GaussianBlur(np.ascontiguousarray(astronaut), (0, 0), 2.0))
    assert report.sharpness < baseline.sharpness - 0.3
    assert report.score < baseline.score
    assert "blurry_input" in codes(report)


def test_dark_copy_is_underexposed(astronaut, face_analyzer, baseline):
    report = assess(face_analyzer, (astronaut * 0.25).astype(np.uint8))
    assert report.exposure < baseline.exposure and report.score < baseline.score
    assert "underexposed" in codes(report) and "overexposed" not in codes(report)


def test_blown_out_copy_is_overexposed(astronaut, face_analyzer, baseline):
    report = assess(face_analyzer, np.clip(astronaut * 1.8, 0, 255).astype(np.uint8))
    assert report.exposure < 0.5 * baseline.exposure and report.score < baseline.score
    assert "overexposed" in codes(report) and "underexposed" not in codes(report)


def test_small_face_in_a_big_canvas_is_too_small(astronaut, face_analyzer):
    canvas = np.full((900, 1200, 3), 128, np.uint8)
    canvas[194:706, 344:856] = astronaut
    report = assess(face_analyzer, canvas)
    assert report.face_coverage < MIN_COVERAGE
    assert "face_too_small" in codes(report)


def test_turned_head_is_warned_and_scores_lower(astronaut, astronaut_face, baseline):
    turned = dataclasses.replace(astronaut_face, yaw=55.0, pitch=10.0)
    report = assess_input(astronaut, turned)
    assert report.head_angle > 45 and "head_angle" in codes(report)
    assert report.score < baseline.score


def test_photo_without_a_face_scores_zero(face_analyzer):
    from skimage import data
    report = assess(face_analyzer, data.coffee())
    assert report.score == 0.0 and report.face_coverage == 0.0
    assert codes(report) == {"no_face"}


@pytest.mark.parametrize("gain", [0.1, 0.5, 1.0, 1.5, 3.0])
def test_every_factor_stays_within_bounds(astronaut, astronaut_face, gain):
    report = assess_input(np.clip(astronaut * gain, 0, 255).astype(np.uint8), astronaut_face)
    for value in (report.score, report.sharpness, report.exposure):
        assert 0.0 <= value <= 1.0
