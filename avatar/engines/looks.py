"""Per-style look parameters of the CPU style engine.

Every field is a plain float (or tuple of floats) with a documented range, so a custom style token can override any of
them by name (`token["params"]`) and training code can learn them. "Amount" fields are strengths at intensity 1; the
engine scales them by `StyleSpec.intensity`, so intensity 0 leaves the image unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class CorporateLook:
    """Photorealistic studio headshot: neutral colour, even light on the face, smoothed skin, nothing stylised."""

    white_balance: float = 0.6     # 0..1 share of the gray-world correction applied (casts from indoor light)
    wb_max_gain: float = 1.15      # cap on any channel gain, so a strongly coloured scene is not over-corrected
    shadow_lift: float = 0.45      # 0..1 how far the face's local shadows are lifted towards its mean brightness
    fill_light: float = 0.04       # 0..0.3 soft frontal fill added on the face (share of full scale)
    skin_smooth: float = 0.85      # 0..1 blend of the edge-preserving smoothed skin (skin only, never eyes/lips)
    skin_detail: float = 0.2       # 0..1 share of fine skin texture kept after smoothing (avoids a plastic look)
    smooth_sigma_color: float = 30.0   # bilateral range sigma (0..255 units): higher merges stronger blemishes
    smooth_sigma_space: float = 0.012  # bilateral spatial sigma as a share of the image side
    saturation: float = 0.96       # 0.5..1.5 global saturation multiplier (a touch below 1 = neutral, corporate)
    contrast: float = 1.04         # 0.8..1.3 gentle global contrast around mid grey


@dataclass(frozen=True)
class AnimeLook:
    """Cel-shaded character: smooth flat regions, a few luminance bands, reduced palette, thin dark line art."""

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


@dataclass(frozen=True)
class EditorialLook:
    """Magazine portrait: teal-orange grade, directional key light, punchy S-curve, vignette and film grain."""

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


Look = CorporateLook | AnimeLook | EditorialLook

LOOKS: dict[str, type] = {"corporate_headshot": CorporateLook, "anime_character": AnimeLook,
                          "editorial_portrait": EditorialLook}


def look_for(style: str, overrides: dict[str, Any] | None = None) -> Look:
    """The default look of `style` with the known fields of `overrides` applied (unknown keys are ignored)."""
    look = LOOKS[style]()
    if not overrides:
        return look
    names = {f.name for f in fields(look)}
    valid = {k: _coerce(getattr(look, k), v) for k, v in overrides.items() if k in names}
    return replace(look, **valid)


def _coerce(default: Any, value: Any) -> Any:
    if isinstance(default, tuple):
        return tuple(float(v) for v in value)
    return float(value)
