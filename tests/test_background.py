"""BgGenerate on the real aligned astronaut: the person mask from MediaPipe, and backgrounds that replace only what lies
outside it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from avatar.catalog.backgrounds import safer_background
from avatar.catalog.palettes import CALM_PALETTES
from avatar.catalog.styles import resolve_background
from avatar.engines.cpu_background import CpuBackgroundEngine, generate_background
from avatar.vision.segmentation import PersonSegmenter
from avatar.contracts import BACKGROUNDS, PALETTES
from avatar.engines.registry import create_background_engine
from avatar.types import StyleSpec


@pytest.fixture(scope="module")
def segmenter() -> Iterator[PersonSegmenter]:
    seg = PersonSegmenter.load()
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def scene(aligned_astronaut, segmenter):
    image = aligned_astronaut.image
    return image, np.asarray(aligned_astronaut.landmarks, np.float32), segmenter.mask(image)


@pytest.fixture(scope="module")
def engine() -> CpuBackgroundEngine:
    return CpuBackgroundEngine()


def _outside(mask: np.ndarray) -> np.ndarray:
    return mask < 0.05


def _saturation(image: np.ndarray, where: np.ndarray) -> float:
    return float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1][where].mean())


def test_person_mask_covers_the_face_and_not_the_corners(scene):
    image, lm, mask = scene
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    pts = np.clip(np.round(lm).astype(int), 0, image.shape[0] - 1)
    covered = float((mask[pts[:, 1], pts[:, 0]] > 0.5).mean())
    corners = [mask[:20, :20].mean(), mask[:20, -20:].mean()]
    print(f"face landmarks inside the person mask: {covered:.3f}; top corners {np.round(corners, 3)}")
    assert covered > 0.95 and max(corners) < 0.1


def test_background_replaces_only_what_is_outside_the_person(scene, engine):
    image, lm, mask = scene
    inside = mask > 0.98
    for style in ("corporate_headshot", "anime_character", "editorial_portrait"):
        spec = StyleSpec(style=style, intensity=0.7)
        start = time.perf_counter()
        out = engine.render(image, mask, lm, spec)
        ms = (time.perf_counter() - start) * 1000
        diff = np.abs(out.astype(np.float32) - image).mean(axis=2)
        print(f"{style}: {resolve_background(spec)}, {ms:.1f} ms; mean change outside {diff[_outside(mask)].mean():.1f}"
              f", inside {diff[inside].mean():.2f}")
        assert out.shape == image.shape and out.dtype == np.uint8
        assert diff[_outside(mask)].mean() > 20.0 * max(diff[inside].mean(), 0.5)
        assert np.array_equal(out, engine.render(image, mask, lm, spec))


def test_style_defaults_have_their_character(scene, engine):
    image, lm, mask = scene
    out = {s: engine.render(image, mask, lm, StyleSpec(style=s, intensity=0.7))
           for s in ("corporate_headshot", "anime_character", "editorial_portrait")}
    bg = _outside(mask)
    sat = {s: _saturation(o, bg) for s, o in out.items()}
    brightness = {s: float(o[bg].mean()) for s, o in out.items()}
    print(f"background saturation {sat}, brightness {brightness}")
    assert sat["anime_character"] > sat["corporate_headshot"] + 40          # vivid neon vs neutral studio
    assert brightness["editorial_portrait"] < brightness["corporate_headshot"] - 60   # dark bokeh vs studio light


def test_overrides_change_the_background(scene, engine):
    image, lm, mask = scene
    base = StyleSpec(style="corporate_headshot", intensity=0.6)
    bg = _outside(mask)
    reference = engine.render(image, mask, lm, base)
    for override in ({"background": "bokeh"}, {"background": "neon_geometric"}, {"palette": "forest"},
                     {"background": "solid", "palette": "navy"}):
        spec = StyleSpec(style="corporate_headshot", intensity=0.6, **override)
        changed = np.abs(engine.render(image, mask, lm, spec).astype(np.float32) - reference)[bg].mean()
        assert changed > 10.0, override


def test_every_background_and_palette_renders():
    lm = None
    seen = set()
    for kind in BACKGROUNDS:
        for palette in PALETTES:
            bg = generate_background(kind, palette, (96, 96), lm, seed=1)
            assert bg.shape == (96, 96, 3) and np.isfinite(bg).all() and 0 <= bg.min() and bg.max() <= 255
            seen.add(bg.astype(np.uint8).tobytes())
    assert len(seen) == len(BACKGROUNDS) * len(PALETTES)
    with pytest.raises(ValueError):
        generate_background("clouds", "neutral_grey", (8, 8), lm, seed=1)


def test_safer_background_is_calm(scene, engine):
    image, lm, mask = scene
    risky = StyleSpec(style="anime_character", intensity=0.8, background="neon_geometric", palette="neon")
    safe = safer_background(risky)
    assert safe.style == risky.style and safe.intensity == risky.intensity
    assert safe.background in ("studio_light", "gradient", "solid") and safe.palette in CALM_PALETTES
    bg = _outside(mask)
    neon_sat = _saturation(engine.render(image, mask, lm, risky), bg)
    safe_sat = _saturation(engine.render(image, mask, lm, safe), bg)
    print(f"background saturation neon {neon_sat:.0f} -> safer {safe_sat:.0f}")
    assert safe_sat < neon_sat / 3
    assert safer_background(StyleSpec(style="corporate_headshot", intensity=0.6, palette="warm_beige")).palette \
        == "warm_beige"


def test_registry_builds_the_cpu_background_engine():
    engine = create_background_engine("cpu")
    assert engine.name == "cpu" and engine.version
