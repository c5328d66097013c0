"""The CPU background engine: generated backgrounds composited behind the person mask (`avatar.vision.segmentation`).

The person pixels are never edited here: the output is `mask * styled + (1 - mask) * background`, so identity stays the
StyleApply result's. Backgrounds are procedural (gradients, light discs, neon shapes), seeded from the request's style
choices, so the same request gives the same picture. Kinds and palettes are the catalogue's (`avatar.catalog`).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import cv2
import numpy as np

from avatar.catalog.backgrounds import safer_background  # noqa: F401 - the retry path imports it from here
from avatar.catalog.palettes import PALETTES, RGB, Palette
from avatar.catalog.styles import resolve_background
from avatar.vision.face_regions import FACE_OVAL, face_scale
from avatar.types import StyleSpec


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
        draw = DRAWERS[kind]
        colours = PALETTES[palette]
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


# How this engine draws each catalogued background kind (`avatar.catalog.backgrounds`); a test checks none is missing.
DRAWERS: dict[str, Callable[..., np.ndarray]] = {
    "studio_light": _studio_light, "studio_dark": _studio_dark, "gradient": _gradient,
    "neon_geometric": _neon_geometric, "bokeh": _bokeh, "solid": _solid}
