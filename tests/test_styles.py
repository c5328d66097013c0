"""StyleApply's CPU engine on the real aligned astronaut: each look changes the picture, scales with intensity and keeps
the face where it was."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from avatar.vision import face_regions as fr
from avatar.catalog.styles import STYLES as CATALOGUE, look_for
from avatar.engines.cpu_style import CpuStyleEngine, apply_lut
from avatar.engines.registry import create_style_engine
from avatar.types import StyleSpec

STYLES = tuple(CATALOGUE)


@pytest.fixture(scope="module")
def engine() -> CpuStyleEngine:
    return CpuStyleEngine()


@pytest.fixture(scope="module")
def face(aligned_astronaut):
    return aligned_astronaut.image, np.asarray(aligned_astronaut.landmarks, np.float32)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _face_box(lm: np.ndarray) -> tuple[slice, slice]:
    oval = lm[list(fr.FACE_OVAL)]
    (x0, y0), (x1, y1) = oval.min(axis=0).astype(int), oval.max(axis=0).astype(int)
    return slice(y0, y1), slice(x0, x1)


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def test_registry_builds_the_cpu_engine_without_options():
    engine = create_style_engine("cpu")
    assert engine.name == "cpu" and engine.version


@pytest.mark.parametrize("style", STYLES)
def test_style_changes_the_image_more_as_intensity_rises(engine, face, style):
    image, lm = face
    outs = {t: engine.apply(image, lm, StyleSpec(style=style, intensity=t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)}
    for out in outs.values():
        assert out.shape == image.shape and out.dtype == np.uint8
    diffs = [_diff(outs[t], image) for t in sorted(outs)]
    print(f"{style}: mean |out - in| by intensity " + ", ".join(f"{t}: {d:.2f}" for t, d in zip(sorted(outs), diffs)))
    assert diffs[0] < 0.5, "intensity 0 must leave the image nearly as it was"
    assert diffs[-1] > 4.0, "the full look must visibly change the image"
    assert all(b > a for a, b in zip(diffs, diffs[1:])), "difference must grow with intensity"


@pytest.mark.parametrize("style", STYLES)
def test_style_is_deterministic(engine, face, style):
    image, lm = face
    spec = StyleSpec(style=style, intensity=0.8)
    first = engine.apply(image, lm, spec)
    start = time.perf_counter()
    second = engine.apply(image, lm, spec)
    print(f"{style}: {(time.perf_counter() - start) * 1000:.1f} ms at {image.shape[0]} px")
    assert np.array_equal(first, second)


def test_corporate_keeps_the_face_structure(engine, face):
    image, lm = face
    out = engine.apply(image, lm, StyleSpec(style="corporate_headshot", intensity=1.0))
    box = _face_box(lm)
    ssim = structural_similarity(_gray(image)[box], _gray(out)[box])
    print(f"corporate face SSIM {ssim:.3f}")
    assert ssim > 0.8


def test_corporate_smooths_skin_but_not_eyes(engine, face):
    image, lm = face
    out = engine.apply(image, lm, StyleSpec(style="corporate_headshot", intensity=1.0))
    masks = fr.face_masks(image.shape, lm)
    eyes = fr.feature_mask(image.shape, lm, ("eyes",)) > 0.5
    skin = masks.skin > 0.95

    def detail(img: np.ndarray, where: np.ndarray) -> float:
        """Fine texture in log luminance, so the relight's brightening does not count as texture."""
        log = np.log(_gray(img).astype(np.float32) + 8.0)
        return float(np.abs(log - cv2.GaussianBlur(log, (0, 0), 2.0))[where].mean())

    skin_ratio = detail(out, skin) / detail(image, skin)
    eye_ratio = detail(out, eyes) / detail(image, eyes)
    print(f"texture kept: skin {skin_ratio:.2f}, eyes {eye_ratio:.2f}")
    assert skin_ratio < 0.92 and eye_ratio > skin_ratio + 0.1


def test_anime_reduces_the_palette_and_draws_lines_on_real_edges(engine, face):
    image, lm = face
    out = engine.apply(image, lm, StyleSpec(style="anime_character", intensity=1.0))
    colours_in = len(np.unique(image.reshape(-1, 3), axis=0))
    colours_out = len(np.unique(out.reshape(-1, 3), axis=0))
    print(f"anime colours {colours_in} -> {colours_out}")
    assert colours_out < colours_in * 0.25
    box = _face_box(lm)
    dark_lines = (_gray(out)[box] < 50) & (_gray(image)[box] >= 50)   # drawn, not already dark
    edges = cv2.Canny(cv2.GaussianBlur(_gray(image), (0, 0), 1.5), 10, 30)
    near_edges = cv2.dilate(edges, np.ones((7, 7), np.uint8))[box] > 0
    share = float(near_edges[dark_lines].mean())
    print(f"anime line pixels on the face near real edges: {share:.2f} of {int(dark_lines.sum())}")
    assert dark_lines.sum() > 200 and share > 0.7


def test_editorial_lights_the_face_from_one_side(engine, face):
    image, lm = face
    out = engine.apply(image, lm, StyleSpec(style="editorial_portrait", intensity=1.0))
    rows, cols = _face_box(lm)
    mid = (cols.start + cols.stop) // 2

    def side_balance(img: np.ndarray) -> float:
        g = _gray(img).astype(np.float32)[rows]
        return float(g[:, cols.start:mid].mean() - g[:, mid:cols.stop].mean())

    print(f"editorial left-right face brightness: {side_balance(image):.1f} -> {side_balance(out):.1f}")
    assert side_balance(out) > side_balance(image) + 10   # key light from the image left by default
    ssim = structural_similarity(_gray(image)[rows, cols], _gray(out)[rows, cols])
    assert ssim > 0.4


def test_look_overrides_change_the_result(engine, face):
    image, lm = face
    base = engine.apply(image, lm, StyleSpec(style="editorial_portrait", intensity=1.0))
    mirrored = engine.apply(image, lm, StyleSpec(style="editorial_portrait", intensity=1.0,
                                                 extras={"look": {"light_side": 1.0}}))
    assert _diff(base, mirrored) > 3.0
    assert look_for("anime_character", {"bands": 6, "unknown": 1}).bands == 6.0


def test_token_with_identity_lut_matches_its_base_style(engine, face):
    image, lm = face
    n = 9
    grid = np.linspace(0.0, 1.0, n, dtype=np.float32)
    identity = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1)
    curve = np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32) ** 2, (3, 1))   # baked into the LUT: not re-applied
    spec = StyleSpec(style="sty_custom0001", intensity=0.7,
                     token={"lut": identity, "curve": curve, "params": {"base_style": "editorial_portrait"}})
    plain = engine.apply(image, lm, StyleSpec(style="editorial_portrait", intensity=0.7))
    assert np.abs(engine.apply(image, lm, spec).astype(int) - plain).max() <= 1
    inverted = dict(spec.token, lut=1.0 - identity)
    assert _diff(engine.apply(image, lm, StyleSpec(style="sty_custom0001", intensity=0.7, token=inverted)),
                 plain) > 30
    contrast = {"params": {"base_style": "editorial_portrait", "contrast": 2.2}}
    assert _diff(engine.apply(image, lm, StyleSpec(style="sty_custom0001", intensity=0.7, token=contrast)),
                 plain) > 2.0


def test_lut_interpolates_trilinearly():
    rng = np.random.default_rng(0)
    n = 17
    grid = np.linspace(0.0, 1.0, n, dtype=np.float32)
    r, g, b = np.meshgrid(grid, grid, grid, indexing="ij")
    lut = np.stack([g, b, r], axis=-1)   # a channel rotation: trilinear reproduces it exactly
    x = rng.random((32, 32, 3), dtype=np.float32)
    assert np.allclose(apply_lut(x, lut), x[..., [1, 2, 0]], atol=1e-5)


def test_unknown_style_is_refused(engine, face):
    image, lm = face
    with pytest.raises(ValueError):
        engine.apply(image, lm, StyleSpec(style="watercolour", intensity=0.5))


def test_region_polygons_follow_the_mediapipe_mesh(face):
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as conn
    for polygon, name in ((fr.FACE_OVAL, "FACE_OVAL"), (fr.LEFT_EYE, "LEFT_EYE"), (fr.RIGHT_EYE, "RIGHT_EYE"),
                          (fr.LIPS, "LIPS")):
        edges = {frozenset(c) for c in zip(polygon, polygon[1:] + polygon[:1])}
        mesh = {frozenset((c.start, c.end)) for c in getattr(conn, "FACE_LANDMARKS_" + name)}
        assert edges <= mesh, name
    image, lm = face
    masks = fr.face_masks(image.shape, lm)
    eye_centre = np.round(lm[list(fr.LEFT_EYE)].mean(axis=0)).astype(int)
    cheek = np.round(lm[205]).astype(int)
    assert masks.skin[eye_centre[1], eye_centre[0]] < 0.1 and masks.skin[cheek[1], cheek[0]] > 0.9
    assert masks.features[eye_centre[1], eye_centre[0]] > 0.9

