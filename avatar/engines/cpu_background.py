"""The CPU background engine: generated backgrounds composited behind the person mask (`avatar.vision.segmentation`).

The person pixels are never edited here: the output is `mask * styled + (1 - mask) * background`, so identity stays the
StyleApply result's. Backgrounds are procedural (gradients, light discs, neon shapes), seeded from the request's style
choices, so the same request gives the same picture.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from avatar.vision.face_regions import FACE_OVAL, face_scale
from avatar.types import StyleSpec

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """Colours a background is built from: a mid `base`, a `light` and a `dark` tone, and vivid `accents`."""

    base: RGB
    light: RGB
    dark: RGB
    accents: tuple[RGB, ...]


PALETTE_COLOURS: dict[str, Palette] = {
    "neutral_grey": Palette((150, 150, 153), (222, 222, 225), (78, 78, 84), ((190, 190, 195), (120, 120, 126))),
    "warm_beige": Palette((200, 180, 155), (242, 230, 212), (120, 98, 78), ((225, 200, 165), (170, 140, 110))),
    "cool_blue": Palette((120, 150, 185), (205, 222, 240), (45, 66, 105), ((150, 190, 230), (90, 120, 170))),
    "navy": Palette((36, 52, 92), (90, 115, 170), (12, 18, 40), ((120, 150, 210), (60, 80, 140))),
    "forest": Palette((52, 92, 66), (130, 170, 128), (18, 40, 28), ((160, 200, 120), (90, 140, 90))),
    "sunset": Palette((225, 120, 72), (255, 205, 130), (70, 25, 60), ((255, 160, 70), (240, 90, 110), (255, 220, 150))),
    "neon": Palette((120, 40, 200), (60, 230, 255), (14, 8, 34), ((255, 40, 200), (40, 230, 255), (140, 255, 60))),
    "pastel": Palette((225, 205, 225), (245, 235, 245), (160, 150, 185), ((200, 225, 245), (210, 240, 215))),
    "monochrome": Palette((128, 128, 128), (235, 235, 235), (28, 28, 28), ((200, 200, 200), (90, 90, 90))),
}

STYLE_DEFAULTS: dict[str, tuple[str, str]] = {      # style -> (background, palette)
    "corporate_headshot": ("studio_light", "neutral_grey"),
    "anime_character": ("neon_geometric", "neon"),
    "editorial_portrait": ("bokeh", "sunset"),
}
FALLBACK_DEFAULT: tuple[str, str] = ("studio_light", "neutral_grey")   # custom styles without a known base

CALM_PALETTES: frozenset[str] = frozenset({"neutral_grey", "warm_beige", "cool_blue", "pastel", "monochrome"})


def safer_background(spec: StyleSpec) -> StyleSpec:
    """`spec` with a calm, low-saturation studio background (after a content-safety failure on a busy or dark one)."""
    palette = spec.palette if spec.palette in CALM_PALETTES else "neutral_grey"
    return replace(spec, background="studio_light", palette=palette)


def resolve_background(spec: StyleSpec) -> tuple[str, str]:
    """The (background kind, palette name) a spec renders: its overrides, else its style's defaults."""
    style = spec.style
    if spec.token:
        style = (spec.token.get("params") or {}).get("base_style", spec.token.get("base_style", style))
    kind, palette = STYLE_DEFAULTS.get(style, FALLBACK_DEFAULT)
    return spec.background or kind, spec.palette or palette


# ---------------------------------------------------------------- backgrounds
class CpuBackgroundEngine:
    """Procedural backgrounds (see `avatar.engines.base.BackgroundEngine`): studio light, gradients, neon, bokeh."""

    name = "cpu"
    version = "1.0.0"

    def __init__(self, **_options: Any) -> None:
        """No options yet; configuration may pass some, so unknown keys are accepted and ignored."""

    def render(self, image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray:
        kind, palette = resolve_background(spec)
        bg = generate_background(kind, palette, image.shape[:2], landmarks, _seed(spec.style, kind, palette))
        alpha = np.clip(mask, 0.0, 1.0)[..., None].astype(np.float32)
        out = image.astype(np.float32) * alpha + bg * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _seed(*parts: str) -> int:
    return zlib.crc32("|".join(parts).encode())


def generate_background(kind: str, palette: str, shape: tuple[int, int], landmarks: np.ndarray | None,
                        seed: int) -> np.ndarray:
    """A float32 (H, W, 3) RGB 0..255 background; drawn at half resolution (it is smooth) and upsampled."""
    try:
        draw = _KINDS[kind]
        colours = PALETTE_COLOURS[palette]
    except KeyError as exc:
        raise ValueError(f"unknown background or palette: {exc.args[0]!r}") from None
    h, w = shape
    sh, sw = max(h // 2, 1), max(w // 2, 1)
    centre = _head_centre(landmarks, (h, w)) * np.array([sw / w, sh / h], np.float32)
    small = draw((sh, sw), centre, colours, np.random.default_rng(seed))
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _head_centre(landmarks: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Where the light sits: a little above the face centre (behind the head), or the upper middle of the frame."""
    h, w = shape
    if landmarks is None or len(landmarks) < max(FACE_OVAL) + 1:
        return np.array([w * 0.5, h * 0.4], np.float32)
    oval = np.asarray(landmarks, np.float32)[list(FACE_OVAL)]
    return np.array([oval[:, 0].mean(), oval[:, 1].mean() - 0.3 * face_scale(landmarks)], np.float32)


def _c(rgb: RGB) -> np.ndarray:
    return np.asarray(rgb, np.float32)


def _radial(shape: tuple[int, int], centre: np.ndarray, inner: RGB | np.ndarray, outer: RGB | np.ndarray,
            radius: float) -> np.ndarray:
    """Smooth radial falloff from `inner` at `centre` to `outer` at `radius` (share of the diagonal) and beyond."""
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    r = np.hypot(xx - centre[0], yy - centre[1]).astype(np.float32) / (np.hypot(h, w) * radius)
    k = np.clip(r, 0.0, 1.0)[..., None]
    k = k * k * (3.0 - 2.0 * k)
    return _c(inner) * (1.0 - k) + _c(outer) * k


def _studio_light(shape, centre, p: Palette, rng) -> np.ndarray:
    """Seamless-paper studio backdrop: soft pool of light behind the head, falling off to the palette tone."""
    return _radial(shape, centre, p.light, _c(p.base) * 0.9 + _c(p.dark) * 0.1, 0.75)


def _studio_dark(shape, centre, p: Palette, rng) -> np.ndarray:
    return _radial(shape, centre, _c(p.base) * 0.55 + _c(p.dark) * 0.45, _c(p.dark) * 0.45, 0.7)


def _gradient(shape, centre, p: Palette, rng) -> np.ndarray:
    """Diagonal light-to-dark gradient with a gentle glow behind the head."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    k = np.clip((xx / w + yy / h) / 2.0, 0.0, 1.0)[..., None]
    base = _c(p.light) * (1.0 - k) + _c(p.dark) * k
    return base * 0.85 + _radial(shape, centre, p.light, base.mean(axis=(0, 1)), 0.6) * 0.15


def _solid(shape, centre, p: Palette, rng) -> np.ndarray:
    return np.broadcast_to(_c(p.base), (*shape, 3)).copy()


def _neon_geometric(shape, centre, p: Palette, rng) -> np.ndarray:
    """Dark backdrop with glowing outlines of triangles, rings and diagonal bars in the palette's accents."""
    h, w = shape
    bg = _radial(shape, centre, _c(p.dark) * 1.6 + 10, _c(p.dark) * 0.6, 0.8)
    layer = np.zeros((h, w, 3), np.float32)
    side = min(h, w)
    thick = max(side // 90, 1)
    for i in range(14):
        colour = tuple(float(v) for v in p.accents[i % len(p.accents)])
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        size = rng.uniform(0.08, 0.28) * side
        kind = i % 3
        if kind == 0:
            ang = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
            pts = np.stack([x + size * np.cos(ang), y + size * np.sin(ang)], 1)
            cv2.polylines(layer, [np.round(pts * 16).astype(np.int32)], True, colour, thick, cv2.LINE_AA, 4)
        elif kind == 1:
            cv2.circle(layer, (int(x * 16), int(y * 16)), int(size * 0.6 * 16), colour, thick, cv2.LINE_AA, 4)
        else:
            d = rng.choice([-1.0, 1.0]) * size
            cv2.line(layer, (int((x - size) * 16), int((y - d) * 16)), (int((x + size) * 16), int((y + d) * 16)),
                     colour, thick * 2, cv2.LINE_AA, 4)
    glow = cv2.GaussianBlur(layer, (0, 0), side * 0.02)
    return np.minimum(bg + layer + glow * 1.5, 255.0)


def _bokeh(shape, centre, p: Palette, rng) -> np.ndarray:
    """Night-city depth of field: a dark gradient with soft, overlapping discs of out-of-focus light."""
    h, w = shape
    bg = _radial(shape, centre, _c(p.dark) * 0.9 + 8, _c(p.dark) * 0.35, 0.8)
    light = np.zeros((h, w, 3), np.float32)
    side = min(h, w)
    for i in range(38):
        colour = np.asarray(p.accents[i % len(p.accents)], np.float32) * rng.uniform(0.25, 0.6)
        r = rng.uniform(0.03, 0.11) * side
        _add_disc(light, rng.uniform(0, w), rng.uniform(0, h), r, colour)
    light = cv2.GaussianBlur(light, (0, 0), side * 0.008)
    return np.minimum(bg + light, 255.0)


def _add_disc(canvas: np.ndarray, x: float, y: float, r: float, colour: np.ndarray) -> None:
    """Add an anti-aliased disc of `colour` onto `canvas`, drawing only within its bounding box (overlaps add up)."""
    h, w = canvas.shape[:2]
    x0, y0 = max(int(x - r) - 1, 0), max(int(y - r) - 1, 0)
    x1, y1 = min(int(x + r) + 2, w), min(int(y + r) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return
    disc = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.circle(disc, (int((x - x0) * 16), int((y - y0) * 16)), int(r * 16), 255, -1, cv2.LINE_AA, 4)
    canvas[y0:y1, x0:x1] += (disc.astype(np.float32) / 255.0)[..., None] * colour


_KINDS = {"studio_light": _studio_light, "studio_dark": _studio_dark, "gradient": _gradient,
          "neon_geometric": _neon_geometric, "bokeh": _bokeh, "solid": _solid}
