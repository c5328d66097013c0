"""editorial_portrait: a magazine portrait for social profiles.

A directional key light across the face, a punchy S-curve, a teal-orange split tone, slightly muted colour, a
vignette and seeded film grain (the output is deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar.catalog.styles import EnhanceLook, StyleDefinition
from avatar.catalog.styles._imageops import LUMA, saturate
from avatar.vision.face_regions import FACE_OVAL, face_scale


@dataclass(frozen=True)
class EditorialLook:
    """Look parameters; "amount" fields are strengths at intensity 1."""

    shadow_tint: tuple[float, float, float] = (-0.05, 0.03, 0.08)     # RGB offset added in shadows (teal)
    highlight_tint: tuple[float, float, float] = (0.07, 0.025, -0.05)  # RGB offset added in highlights (orange)
    split_tone: float = 1.6        # 0..2 strength of the two tints
    light_side: float = -1.0       # -1 = key light from the image left, +1 = from the right
    light_strength: float = 0.7   # 0..1 brightness falloff across the face, towards the far side
    light_width: float = 0.9       # 0.5..4 falloff width in face widths (larger = softer gradient)
    contrast: float = 1.5          # 1..2.5 slope of the sigmoid S-curve at mid grey
    saturation: float = 1.0        # 0.5..1.5 global saturation (slightly muted, filmic)
    vignette: float = 0.35         # 0..1 darkening towards the corners
    grain: float = 0.02            # 0..0.1 std of the luminance film grain (share of full scale)
    grain_seed: float = 7.0        # seed of the grain pattern: the output is deterministic


def render(x: np.ndarray, lm: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    x = x * _key_light(x.shape[:2], lm, look, t)[..., None]
    x = _s_curve(x, 1.0 + (look.contrast - 1.0) * t)
    x = _split_tone(x, look, t)
    x = saturate(x, 1.0 + (look.saturation - 1.0) * t)
    x = x * _vignette(x.shape[:2], lm, look.vignette * t)[..., None]
    return x + _grain(x, look, t)


def _face_centre(lm: np.ndarray) -> tuple[float, float]:
    oval = lm[list(FACE_OVAL)]
    return float(oval[:, 0].mean()), float(oval[:, 1].mean())


def _key_light(shape: tuple[int, int], lm: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    """Horizontal gain: full light on the key side, falling off across the face towards the other side."""
    cx, _ = _face_centre(lm)
    u = (np.arange(shape[1], dtype=np.float32) - cx) / (face_scale(lm) * look.light_width)
    ramp = 0.5 * np.tanh(np.sign(look.light_side or -1.0) * u * 2.0) - 0.3
    gain = 1.0 + look.light_strength * t * ramp
    return np.broadcast_to(gain[None, :], shape).astype(np.float32)


def _s_curve(x: np.ndarray, slope: float) -> np.ndarray:
    """Sigmoid contrast curve through (0,0), (0.5,0.5), (1,1) with the given slope at mid grey."""
    if slope <= 1.0001:
        return x
    ks = np.linspace(1e-3, 12.0, 600)
    k = float(np.interp(slope, 0.5 * ks / np.tanh(0.5 * ks), ks))
    return 0.5 + 0.5 * np.tanh(k * (np.clip(x, 0.0, 1.0) - 0.5)) / np.tanh(0.5 * k)


def _split_tone(x: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    """Teal into the shadows, orange into the highlights, weighted by luminance."""
    y = np.clip(x @ LUMA, 0.0, 1.0)[..., None]
    amount = look.split_tone * t
    shadow = np.asarray(look.shadow_tint, np.float32) * ((1.0 - y) ** 2) * amount
    high = np.asarray(look.highlight_tint, np.float32) * (y ** 2) * amount
    return x + shadow + high


def _vignette(shape: tuple[int, int], lm: np.ndarray, amount: float) -> np.ndarray:
    cx, cy = _face_centre(lm)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    r = np.hypot((xx - cx) / shape[1], (yy - cy) / shape[0]).astype(np.float32)
    return 1.0 - amount * np.clip((r - 0.25) / 0.5, 0.0, 1.0) ** 2


def _grain(x: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    """Seeded luminance grain, strongest in the midtones like film."""
    if look.grain * t <= 0.0:
        return np.zeros_like(x)
    rng = np.random.default_rng(int(look.grain_seed))
    noise = rng.standard_normal(x.shape[:2], dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.6) * (look.grain * t * 1.6)
    y = np.clip(x @ LUMA, 0.0, 1.0)
    return (noise * (4.0 * y * (1.0 - y) + 0.25))[..., None]


STYLE = StyleDefinition(
    name="editorial_portrait",
    description="Magazine portrait: teal-orange grade, directional key light, S-curve, vignette and film grain.",
    look=EditorialLook,
    render=render,
    backdrop=("bokeh", "sunset"),
    enhance=EnhanceLook(esr_blend=0.5, feature_sharpen=1.0, skin_tone=0.4, dof_blur=0.006),
    intensity=0.7,
    photoreal=True,
)
