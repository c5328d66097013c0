"""The person matte on portraits composited onto vivid walls (tests/walls.py): the checks take the wall away, the
edge keeps no wall colour, and the background check measures what is left. Unit level, on the aligned crop."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from avatar.catalog.platforms import PLATFORMS
from avatar.vision.face.align import align_face
from avatar.vision.mask_checks import check_mask
from avatar.vision.matting import MattingConfig, PersonMatter, decontaminate, refine
from avatar.vision import remnant
from walls import WALLS, composite, edge_band, wall_coloured, warp

GREY = np.array([128, 128, 128], np.float32)


@pytest.fixture(scope="module")
def matter() -> Iterator[PersonMatter]:
    m = PersonMatter.load()
    yield m
    m.close()


@pytest.fixture(scope="module")
def scenes(face_analyzer, matter) -> dict:
    """Per wall: the aligned crop (LinkedIn framing, 512 px), its landmarks, the coarse confidence, the true alpha and
    person colours, the wall's colours."""
    out = {}
    for name in WALLS:
        comp = composite(name)
        aligned = align_face(comp.photo, face_analyzer.detect(comp.photo)[0], PLATFORMS["linkedin"].framing, 512)
        truth, person = warp(comp, aligned.matrix, 512)
        out[name] = (aligned.image, aligned.landmarks, matter.segmenter.confidence(aligned.image), truth,
                     comp.colours, person)
    return out


def _over_grey(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(rgb.astype(np.float32) * a + GREY * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def test_segmenter_gives_the_same_confidence_whatever_ran_before(scenes, matter):
    magenta, lime = scenes["magenta"][0], scenes["lime"][0]
    first = matter.segmenter.confidence(magenta)
    matter.segmenter.confidence(lime)
    assert np.array_equal(first, matter.segmenter.confidence(magenta))


def test_coarse_mask_keeps_the_magenta_wall(scenes):
    """The defect the checks exist for: the selfie model keeps >2 % of the crop's magenta wall as person."""
    _, _, conf, truth, *_ = scenes["magenta"]
    assert ((conf > 0.5) & (truth < 0.1)).mean() > 0.02


@pytest.mark.parametrize("wall", list(WALLS))
def test_matte_keeps_no_wall_and_loses_no_person(scenes, matter, wall):
    image, landmarks, conf, truth, *_ = scenes[wall]
    matte = refine(image, conf, landmarks)
    kept = float(((matte.alpha > 0.5) & (truth < 0.1)).mean())
    lost = float(((matte.alpha < 0.5) & (truth > 0.9)).mean())
    sad = float(np.abs(matte.alpha - truth).mean())
    print(f"{wall}: coarse kept {((conf > 0.5) & (truth < 0.1)).mean():.4f}; matte kept {kept:.4f}, lost {lost:.4f}, "
          f"mean |alpha error| {sad:.4f}, removed by the checks {matte.check.removed:.4f}")
    assert kept < 0.001 and lost < 0.005 and sad < 0.01
    assert matte.alpha.dtype == np.float32 and matte.alpha.shape == image.shape[:2]
    assert 0.0 <= matte.alpha.min() and matte.alpha.max() <= 1.0


@pytest.mark.parametrize("wall", ["magenta", "lime", "cyan", "flag"])
def test_decontaminated_edge_carries_no_wall_colour(scenes, wall):
    image, landmarks, conf, truth, colours, person = scenes[wall]
    matte = refine(image, conf, landmarks)
    band = edge_band(truth) & ~wall_coloured(person, colours, 0.3)    # the person's own colours may be wall-like
    raw = wall_coloured(_over_grey(image, matte.alpha), colours, 0.3)[band].mean()
    clean = wall_coloured(_over_grey(matte.foreground, matte.alpha), colours, 0.3)[band].mean()
    print(f"{wall}: wall-tinted share of the edge band, raw colours {raw:.3f}, decontaminated {clean:.3f}")
    assert raw > 0.02 and clean < 0.01


def test_decontamination_leaves_the_person_untouched(scenes):
    image, landmarks, conf, truth, *_ = scenes["magenta"]
    matte = refine(image, conf, landmarks)
    inside = matte.alpha >= 0.999
    assert np.array_equal(matte.foreground[inside], image[inside].astype(np.float32))
    assert np.isfinite(decontaminate(image, np.zeros(image.shape[:2], np.float32))).all()


def test_face_prior_rules_out_a_wall_patch_beside_the_head(scenes):
    image, landmarks, conf, truth, *_ = scenes["lime"]
    patched = conf.copy()
    patched[140:230, 455:512] = 1.0                  # a block of wall beside the head at eye level ...
    patched[200:215, 300:460] = 1.0                  # ... joined to the person by a strip
    check = check_mask(image, patched, landmarks)
    assert check.person[140:230, 455:512].mean() == 0.0 and check.prior.allowed[20:80, 200:300].all()


@pytest.mark.parametrize("wall", list(WALLS))
def test_background_check_flags_the_kept_wall_and_passes_the_matte(scenes, wall):
    image, landmarks, conf, truth, *_ = scenes[wall]
    coarse = np.clip((conf - 0.5) * 2.5 + 0.5, 0, 1)
    matte = refine(image, conf, landmarks)
    before = remnant.measure(image, coarse, _over_grey(image, coarse), landmarks)
    after = remnant.measure(image, matte.alpha, _over_grey(matte.foreground, matte.alpha), landmarks)
    print(f"{wall}: old background visible, coarse mask {before.share:.4f}, matte {after.share:.4f}")
    assert after.passed
    if wall == "magenta":
        assert not before.passed


def test_stricter_levels_never_keep_more(scenes):
    image, landmarks, conf, truth, *_ = scenes["magenta"]
    kept = [float(((refine(image, conf, landmarks, level).alpha > 0.5) & (truth < 0.1)).mean()) for level in (0, 1, 2)]
    assert kept[2] <= kept[1] + 1e-4 and kept[1] <= kept[0] + 1e-4


def test_closed_form_method_gives_a_matte_of_the_same_quality(scenes):
    image, landmarks, conf, truth, *_ = scenes["magenta"]
    matte = refine(image, conf, landmarks, config=MattingConfig(method="closed_form"))
    assert float(np.abs(matte.alpha - truth).mean()) < 0.01


def test_unknown_matting_settings_are_refused():
    with pytest.raises(ValueError):
        MattingConfig.from_dict({"method": "magic"})
    with pytest.raises(ValueError):
        MattingConfig.from_dict({"radius": 3})


def test_the_shadow_under_the_chin_stays_person(matter, aligned_astronaut):
    """On the astronaut's dark backdrop the shadow under her chin has the backdrop's colours, yet it is enclosed by the
    person and lies under the face: it stays opaque (a transparent avatar showed a see-through band there)."""
    lm = np.asarray(aligned_astronaut.landmarks, np.float32)
    matte = matter.matte(aligned_astronaut.image, lm)
    (x0, _), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    cx, fw = (x0 + x1) / 2, x1 - x0
    under_chin = matte.alpha[int(y1 - 0.06 * fw):int(y1 + 0.03 * fw), int(cx - 0.15 * fw):int(cx + 0.15 * fw)]
    assert under_chin.size and under_chin.min() > 0.9, under_chin.min()
