"""Quality gate on real outputs of the aligned astronaut: faithful and styled pass, destroyed faces fail."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar.vision.calibration import load_curve
from avatar.gate import GateConfig, GateResult, IdentityRef, QualityGate, pick_best, plan_retry
from avatar.vision.identity import IdentityModel
from avatar.vision.safety import SafetyClassifier

STYLE_PLATFORM = {"corporate_headshot": "linkedin", "editorial_portrait": "instagram", "anime_character": "discord"}


class StubSafety:
    """open_nsfw stand-in: NSFW test images can't ship with the repository, so the threshold logic gets a fixed score."""

    def __init__(self, p: float) -> None:
        self.p = p

    def nsfw_probability(self, rgb: np.ndarray) -> float:
        return self.p


@pytest.fixture(scope="module")
def identity() -> IdentityModel:
    return IdentityModel.load()


@pytest.fixture(scope="module")
def safety() -> SafetyClassifier:
    return SafetyClassifier.load()


@pytest.fixture(scope="module")
def gate(identity, safety, face_analyzer) -> QualityGate:
    return QualityGate(identity, safety, face_analyzer, GateConfig())


@pytest.fixture(scope="module")
def ref(identity, astronaut, astronaut_face, aligned_astronaut) -> IdentityRef:
    return IdentityRef(identity.embed(astronaut, astronaut_face.box), aligned_astronaut.image)


@pytest.fixture(scope="module")
def box(aligned_astronaut):
    return aligned_astronaut.face_box


def face_region(aligned) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in aligned.face_box)


def codes(result: GateResult) -> set[str]:
    return {w.code for w in result.warnings}


def test_astronaut_is_safe_content(safety, astronaut):
    p = safety.nsfw_probability(astronaut)
    assert 0.0 <= p < GateConfig().nsfw_threshold / 2


def test_faithful_output_passes_and_auto_accepts(gate, aligned_astronaut, ref, box):
    r = gate.evaluate(aligned_astronaut.image, box, ref, "linkedin", "corporate_headshot")
    assert r.passed and all(r.checks.values()) and not r.warnings
    assert r.face_source == "detector" and r.face_score > 0.5
    assert r.likeness >= 0.9 and r.auto_accept and not r.needs_review


@pytest.mark.parametrize("style", sorted(STYLE_PLATFORM))
def test_styled_outputs_pass_on_their_platforms(gate, aligned_astronaut, ref, box, style):
    from avatar.engines.cpu_style import CpuStyleEngine
    from avatar.types import StyleSpec
    out = CpuStyleEngine().apply(aligned_astronaut.image, aligned_astronaut.landmarks, StyleSpec(style, 1.0))
    r = gate.evaluate(out, box, ref, STYLE_PLATFORM[style], style)
    assert r.passed, (style, r)
    assert r.likeness >= gate.config.likeness_min(STYLE_PLATFORM[style])


def test_anime_face_confirmed_by_structure_when_detector_is_absent(identity, safety, aligned_astronaut, ref, box):
    from avatar.engines.cpu_style import CpuStyleEngine
    from avatar.types import StyleSpec
    out = CpuStyleEngine().apply(aligned_astronaut.image, aligned_astronaut.landmarks,
                                 StyleSpec("anime_character", 1.0))
    r = QualityGate(identity, safety, None).evaluate(out, box, ref, "discord", "anime_character")
    assert r.checks["face_present"] and r.face_source == "structure" and r.face_score >= 0.5


def test_heavily_blurred_face_fails(gate, aligned_astronaut, ref, box):
    out = aligned_astronaut.image.copy()
    x0, y0, x1, y1 = face_region(aligned_astronaut)
    out[y0:y1, x0:x1] = cv2.GaussianBlur(out, (0, 0), 16)[y0:y1, x0:x1]
    r = gate.evaluate(out, box, ref, "twitter", "editorial_portrait")
    assert not r.passed and {"no_face_in_output", "low_likeness"} <= codes(r)
    assert r.checks["content_safety"]


def test_scrambled_face_fails(gate, aligned_astronaut, ref, box):
    out = aligned_astronaut.image.copy()
    x0, y0, x1, y1 = face_region(aligned_astronaut)
    n, bh, bw = 4, (y1 - y0) // 4, (x1 - x0) // 4
    blocks = [out[y0 + i * bh:y0 + (i + 1) * bh, x0 + j * bw:x0 + (j + 1) * bw].copy()
              for i in range(n) for j in range(n)]
    for k, p in enumerate(np.random.default_rng(0).permutation(len(blocks))):
        i, j = divmod(k, n)
        out[y0 + i * bh:y0 + (i + 1) * bh, x0 + j * bw:x0 + (j + 1) * bw] = blocks[p]
    r = gate.evaluate(out, box, ref, "discord", "anime_character")
    assert not r.passed and {"no_face_in_output", "low_likeness"} <= codes(r)


def test_different_persons_face_pasted_fails_on_likeness(gate, face_analyzer, aligned_astronaut, ref, box):
    from matplotlib import cbook
    from PIL import Image

    from avatar.vision.face.align import align_face
    hopper = np.array(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    other = align_face(hopper, face_analyzer.detect(hopper)[0], size=aligned_astronaut.image.shape[0])
    out = aligned_astronaut.image.copy()
    x0, y0, x1, y1 = face_region(aligned_astronaut)
    out[y0:y1, x0:x1] = other.image[y0:y1, x0:x1]
    r = gate.evaluate(out, box, ref, "discord", "anime_character")   # even the loosest tier rejects it
    assert not r.passed and r.checks["face_present"] and codes(r) == {"low_likeness"}
    assert r.likeness < 0.6
    assert f"{r.likeness:.2f}" in r.warnings[0].message


def test_unsafe_score_fails_content_safety_and_retries_with_safer_background(identity, aligned_astronaut, ref, box):
    r = QualityGate(identity, StubSafety(0.93), None).evaluate(aligned_astronaut.image, box, ref, "twitter",
                                                               "editorial_portrait")
    assert not r.passed and codes(r) == {"content_unsafe"} and r.nsfw == pytest.approx(0.93)
    plan = plan_retry(1, 0.8, r, GateConfig())
    assert plan is not None and plan.safer_background and plan.intensity == pytest.approx(0.8)


def test_borderline_score_passes_but_needs_review(identity, aligned_astronaut, ref, box):
    cfg = GateConfig()
    p = (cfg.nsfw_review_at + cfg.nsfw_threshold) / 2
    r = QualityGate(identity, StubSafety(p), None, cfg).evaluate(aligned_astronaut.image, box, ref, "twitter",
                                                                 "editorial_portrait")
    assert r.passed and r.needs_review and not r.auto_accept


def _result(passed: bool, likeness: float, **checks: bool) -> GateResult:
    base = {"face_present": True, "likeness": passed, "content_safety": True} | checks
    return GateResult(passed=passed, checks=base, likeness=likeness, nsfw=0.01, face_score=0.9)


def test_plan_retry_lowers_intensity_and_stops_after_two_retries():
    cfg = GateConfig()
    failed = _result(False, 0.5)
    first = plan_retry(1, 1.0, failed, cfg)
    second = plan_retry(first.attempt, first.intensity, failed, cfg)
    assert first.attempt == 2 and first.intensity < 1.0 and not first.safer_background
    assert second.attempt == 3 and second.intensity < first.intensity
    assert plan_retry(second.attempt, second.intensity, failed, cfg) is None
    assert plan_retry(1, 1.0, _result(True, 0.95), cfg) is None


def test_pick_best_prefers_pass_then_safety_then_likeness():
    unsafe_close = _result(False, 0.95, content_safety=False)
    safe_far, safe_closer = _result(False, 0.4), _result(False, 0.55)
    assert pick_best([unsafe_close, safe_far, safe_closer]) == 2
    assert pick_best([safe_closer, _result(True, 0.8)]) == 1


def test_platform_minimums_follow_tiers_with_overrides():
    cfg = GateConfig(likeness_overrides={"discord": 0.7})
    assert cfg.likeness_min("linkedin") == 0.85 and cfg.likeness_min("twitter") == 0.75
    assert cfg.likeness_min("steam") == 0.60 and cfg.likeness_min("discord") == 0.7


def test_low_likeness_on_gaming_passes_into_review(identity, aligned_astronaut, ref, box):
    """A likeness between the gaming minimum and review_below passes but is flagged for review."""
    curve = load_curve()
    target = curve.distance_for((0.6 + 0.75) / 2)

    class Shifted:
        def embed(self, rgb, b):
            return identity.embed(rgb, b)

        def distance(self, a, b):
            return target

    r = QualityGate(Shifted(), StubSafety(0.01), None).evaluate(aligned_astronaut.image, box, ref, "steam",
                                                               "anime_character")
    assert r.passed and r.needs_review and not r.auto_accept
