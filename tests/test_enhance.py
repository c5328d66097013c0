"""DetailEnhance with the real Real-ESRGAN (animevideov3, ncnn) on the aligned astronaut: output size, a sharper face
than a plain resize, detail confined to where it belongs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from avatar.engines.enhance import UPSCALER_NAME, DetailEnhancer, correct_skin_tone
from avatar.vision.face_regions import FACE_OVAL, face_masks, scale_landmarks


@pytest.fixture(scope="module")
def enhancer() -> Iterator[DetailEnhancer]:
    enh = DetailEnhancer.load()
    yield enh
    enh.close()


@pytest.fixture(scope="module")
def face(aligned_astronaut):
    return aligned_astronaut.image, np.asarray(aligned_astronaut.landmarks, np.float32)


def _face_sharpness(image: np.ndarray, lm: np.ndarray) -> float:
    oval = lm[list(FACE_OVAL)]
    (x0, y0), (x1, y1) = oval.min(axis=0).astype(int), oval.max(axis=0).astype(int)
    gray = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@pytest.mark.parametrize("size", [800, 1200])
def test_output_has_the_requested_size_and_scaled_landmarks(enhancer, face, size):
    image, lm = face
    start = time.perf_counter()
    result = enhancer.enhance(image, lm, size, "corporate_headshot")
    print(f"512 -> {size}: {(time.perf_counter() - start) * 1000:.0f} ms, steps {result.steps}")
    assert result.image.shape == (size, size, 3) and result.image.dtype == np.uint8
    assert result.upscaler_used == UPSCALER_NAME
    assert np.allclose(result.landmarks, scale_landmarks(lm, size / image.shape[0]))
    small = cv2.resize(result.image, image.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(np.float32) - image).mean() < 6.0   # same picture, only more detail


@pytest.mark.parametrize("style", ["corporate_headshot", "anime_character", "editorial_portrait"])
def test_small_face_comes_out_sharper_than_a_plain_resize(enhancer, face, style):
    image, lm = face
    small = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)   # a crop with a small face
    small_lm = scale_landmarks(lm, 0.5)
    result = enhancer.enhance(small, small_lm, 800, style)
    plain = cv2.resize(small, (800, 800), interpolation=cv2.INTER_LANCZOS4)
    sharp, base = _face_sharpness(result.image, result.landmarks), _face_sharpness(plain, result.landmarks)
    print(f"{style}: face Laplacian variance {base:.1f} (Lanczos) -> {sharp:.1f}")
    assert result.upscaler_used == UPSCALER_NAME and sharp > base * 1.2


def test_no_superresolution_when_nothing_is_enlarged(enhancer, face):
    image, lm = face
    result = enhancer.enhance(image, lm, image.shape[0], "anime_character")
    assert result.upscaler_used is None and "face_superres" not in result.steps
    assert result.image.shape == image.shape


def test_depth_of_field_follows_the_style(enhancer, face):
    image, lm = face
    corner = (slice(0, 150), slice(0, 150))

    def corner_detail(style: str) -> float:
        out = enhancer.enhance(image, lm, 800, style).image
        return float(cv2.Laplacian(cv2.cvtColor(out[corner], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    plain = cv2.resize(image, (800, 800), interpolation=cv2.INTER_LANCZOS4)
    reference = float(cv2.Laplacian(cv2.cvtColor(plain[corner], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
    detail = {s: corner_detail(s) for s in ("anime_character", "corporate_headshot", "editorial_portrait")}
    print(f"corner detail: Lanczos {reference:.1f}, {detail}")
    assert detail["anime_character"] == pytest.approx(reference, rel=1e-3)   # no depth of field for anime
    assert detail["editorial_portrait"] < detail["corporate_headshot"] < reference


def test_skin_tone_correction_removes_a_cast_and_leaves_natural_skin(face):
    image, lm = face
    skin = face_masks(image.shape, lm).skin
    natural = image.astype(np.float32)
    assert np.array_equal(correct_skin_tone(natural, skin, 0.5), natural)
    green = natural * np.array([0.8, 1.1, 0.9], np.float32)

    def skin_hue(x: np.ndarray) -> float:
        lab = cv2.cvtColor(np.clip(x / 255.0, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
        w = skin / skin.sum()
        return float(np.degrees(np.arctan2((lab[..., 2] * w).sum(), (lab[..., 1] * w).sum())))

    fixed = correct_skin_tone(green, skin, 1.0)
    print(f"skin hue: natural {skin_hue(natural):.1f}, green cast {skin_hue(green):.1f}, corrected {skin_hue(fixed):.1f}")
    assert abs(skin_hue(fixed) - skin_hue(natural)) < abs(skin_hue(green) - skin_hue(natural)) / 2
    def lightness(x: np.ndarray) -> float:
        return float(cv2.cvtColor(np.clip(x / 255.0, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)[..., 0][skin > 0.9]
                     .mean())


    assert abs(lightness(green) - lightness(fixed)) < 1.5
