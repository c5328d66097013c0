"""anime_character: a cel-shaded character for gaming profiles.

Smooth flat regions, a few luminance bands anchored on the skin tone, a reduced and more vivid palette, and thin dark
line art on real edges. Not photo-real: the quality gate may confirm its face by structure when a detector misses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar.catalog.styles import EnhanceLook, StyleDefinition
from avatar.catalog.styles._imageops import LUMA
from avatar.vision.face_regions import face_masks, face_scale


@dataclass(frozen=True)
class AnimeLook:
    """Look parameters; "amount" fields are strengths at intensity 1."""

    smooth_passes: float = 2.0     # 1..4 bilateral passes (at half resolution) that flatten texture into regions
    bands: float = 4.0             # 2..8 luminance bands of the cel shading
    band_softness: float = 0.06    # 0..0.5 width of the transition between bands (share of a band): anti-aliasing
    highlight_gain: float = 0.5    # 0..1 how readily lighter-than-skin areas reach a highlight band (lower = rarer)
    highlight_level: float = 0.5   # 0..1 height of a highlight band relative to a shadow band
    skin_shade_blur: float = 0.04  # 0..0.2 blur of the skin shading, in face widths: broad shadows, no blotches
    chroma_step: float = 10.0      # 2..32 quantisation step of the Lab a/b channels: the palette reduction
    saturation: float = 1.5        # 1..2 chroma multiplier, for the vivid anime palette
    line_strength: float = 0.85    # 0..1 darkness of the line art
    line_sigma: float = 1.2        # 0.5..3 DoG scale of the lines, in px at 512 (scaled with the image side)
    line_threshold: float = 0.008  # 0..0.05 DoG response below which no line is drawn (ignores texture)
    line_sharpness: float = 130.0  # 10..300 how quickly a line reaches full darkness past the threshold
    brightness: float = 0.04       # -0.1..0.2 overall lift (anime palettes are light)


def render(x: np.ndarray, lm: np.ndarray, look: AnimeLook, t: float) -> np.ndarray:
    flat = _flatten(x, int(round(look.smooth_passes)))
    flat = x + (flat - x) * t
    lab = cv2.cvtColor(flat, cv2.COLOR_RGB2Lab)
    light = lab[..., 0] / 100.0
    masks = face_masks(x.shape, lm)
    skin_light = float((light * masks.skin).sum() / max(masks.skin.sum(), 1.0))
    cel = _bands(_shading_light(light, masks.skin, lm, look), skin_light, look) + look.brightness
    chroma = lab[..., 1:] * look.saturation
    chroma = np.round(chroma / look.chroma_step) * look.chroma_step
    lines = _line_art(flat, look, x.shape[0] / 512.0)
    cel = cel * (1.0 - look.line_strength * lines)
    lab[..., 0] = (light + (cel - light) * t) * 100.0
    lab[..., 1:] += (chroma - lab[..., 1:]) * t
    return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)


def _shading_light(light: np.ndarray, skin: np.ndarray, lm: np.ndarray, look: AnimeLook) -> np.ndarray:
    """The lightness that decides the bands: speckle-free (median), and on skin broad soft shading only."""
    k = max(3, int(round(light.shape[0] / 512.0 * 3)) * 2 + 1)
    regions = cv2.medianBlur(np.round(light * 255).astype(np.uint8), k).astype(np.float32) / 255.0
    broad = cv2.GaussianBlur(light, (0, 0), look.skin_shade_blur * face_scale(lm))
    return regions + (broad - regions) * skin


def _flatten(x: np.ndarray, passes: int) -> np.ndarray:
    """Texture removed, region edges kept: repeated bilateral filtering at half resolution (fast), upsampled."""
    h, w = x.shape[:2]
    small = cv2.resize(x, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    for _ in range(max(passes, 1)):
        small = cv2.bilateralFilter(small, 7, 0.12, 4.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _bands(light: np.ndarray, anchor: float, look: AnimeLook) -> np.ndarray:
    """Cel shading: lightness snapped to levels `1 / (bands - 1)` apart, one level on `anchor` (the skin tone, so the
    face is one flat tone), with a short smoothstep between levels. Highlights are rarer and softer than shadows."""
    n = max(look.bands - 1.0, 1.0)
    v = (light - anchor) * n
    v = np.where(v > 0, v * look.highlight_gain, v)
    base = np.floor(v)
    s = np.clip((v - base - 0.5) / max(look.band_softness, 1e-3) + 0.5, 0.0, 1.0)
    q = base + s * s * (3.0 - 2.0 * s)
    return anchor + np.where(q > 0, q * look.highlight_level, q) / n


def _line_art(x: np.ndarray, look: AnimeLook, scale: float) -> np.ndarray:
    """Thin dark lines (0..1) on the dark side of strong edges: a thresholded difference of Gaussians (XDoG)."""
    gray = x @ LUMA
    sigma = look.line_sigma * scale
    dog = cv2.GaussianBlur(gray, (0, 0), sigma) - cv2.GaussianBlur(gray, (0, 0), sigma * 1.6)
    return np.clip((-dog - look.line_threshold) * look.line_sharpness, 0.0, 1.0)


STYLE = StyleDefinition(
    name="anime_character",
    description="Cel-shaded character: flat colour regions, a few shading bands, a vivid palette, thin line art.",
    look=AnimeLook,
    render=render,
    backdrop=("neon_geometric", "neon"),
    enhance=EnhanceLook(esr_blend=0.9, feature_sharpen=0.5, skin_tone=0.0, dof_blur=0.0),
    intensity=0.8,
    photoreal=False,
)
