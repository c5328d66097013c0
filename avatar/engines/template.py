"""Profile templates: the delivered avatar's shape (square, circle, rounded square with transparent corners), an
optional border, and transparent backgrounds, applied at the avatar's size and again at the thumbnail's.

Shapes are drawn from a signed distance (a rounded box: a circle is the box whose corner radius is half the side,
a square the one whose radius is 0), so edges are anti-aliased analytically at any size; the border is the band
between the shape and the same shape inset by the border's width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("square", "circle", "rounded")
ROUNDED_RADIUS = 0.2              # corner radius of "rounded", share of the side
REFERENCE_SIDE = 800              # border widths are given in pixels of an 800 px avatar and scale with the size
MAX_BORDER_WIDTH = 80             # a tenth of that side


@dataclass(frozen=True)
class OutputTemplate:
    """How the avatar is cut and framed; the default (square, opaque, no border) changes nothing."""

    shape: str = "square"
    border_color: tuple[int, int, int] | None = None
    border_width: int = 0         # pixels at REFERENCE_SIDE
    transparent: bool = False     # keep the matte's alpha instead of a generated background

    @property
    def has_alpha(self) -> bool:
        return self.transparent or self.shape != "square"

    @property
    def is_plain(self) -> bool:
        return not self.has_alpha and self.border_width <= 0

    def border_px(self, size: int) -> float:
        """The border's width at `size` px (at least one pixel when there is a border)."""
        if self.border_width <= 0:
            return 0.0
        return max(1.0, self.border_width * size / REFERENCE_SIDE)


def parse_colour(value: str) -> tuple[int, int, int]:
    """`#RGB` or `#RRGGBB` (case-insensitive) to an RGB triple; ValueError for anything else."""
    text = value.strip()
    if not text.startswith("#") or len(text) not in (4, 7):
        raise ValueError("expected a hex colour like #1a73e8 or #fff")
    digits = text[1:]
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    try:
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    except ValueError:
        raise ValueError("expected a hex colour like #1a73e8 or #fff") from None


def coverage(size: int, shape: str, inset: float = 0.0) -> np.ndarray:
    """Float32 (size, size) share of each pixel inside `shape`, shrunk by `inset` px on every side."""
    half = size / 2.0 - inset
    if half <= 0:
        return np.zeros((size, size), np.float32)
    radius = {"square": 0.0, "circle": size / 2.0, "rounded": ROUNDED_RADIUS * size}[shape]
    radius = float(np.clip(radius - inset, 0.0, half))
    centre = np.arange(size, dtype=np.float32) + 0.5 - size / 2.0
    qx = np.abs(centre)[None, :] - half + radius
    qy = np.abs(centre)[:, None] - half + radius
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    distance = outside + inside - radius
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


def apply(rgb: np.ndarray, alpha: np.ndarray | None, template: OutputTemplate) -> np.ndarray:
    """The framed avatar: RGBA uint8 when the template has transparency, else RGB uint8.

    `alpha` is the person's matte at the image's size (used when the background is transparent)."""
    size = rgb.shape[0]
    if template.is_plain:
        return rgb[..., :3]
    content = alpha.astype(np.float32) if template.transparent and alpha is not None \
        else np.ones((size, size), np.float32)
    outer = coverage(size, template.shape)
    width = template.border_px(size)
    inner = coverage(size, template.shape, width) if width else outer
    ring = np.clip(outer - inner, 0.0, 1.0)
    person = content * inner
    total = person + ring
    colour = np.asarray(template.border_color or (255, 255, 255), np.float32)
    premultiplied = rgb[..., :3].astype(np.float32) * person[..., None] + colour * ring[..., None]
    opaque = np.where(total[..., None] > 1e-6, premultiplied / np.maximum(total, 1e-6)[..., None],
                      rgb[..., :3].astype(np.float32))
    out = np.clip(opaque + 0.5, 0, 255).astype(np.uint8)
    if not template.has_alpha:
        return out
    return np.dstack([out, np.clip(total * 255.0 + 0.5, 0, 255).astype(np.uint8)])


def frame(rgb: np.ndarray, alpha: np.ndarray | None, template: OutputTemplate | None,
          thumbnail: int) -> tuple[np.ndarray, np.ndarray]:
    """(avatar, thumbnail) pixels with the template applied at each size (the thumbnail is resized first, then cut,
    so its shape and border are as crisp as the avatar's). `alpha` may be at any size (the work crop's)."""
    import cv2
    template = template or OutputTemplate()
    size = rgb.shape[0]
    if alpha is not None and template.transparent:
        alpha = np.clip(cv2.resize(alpha.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    else:
        alpha = None
    small = cv2.resize(rgb[..., :3], (thumbnail, thumbnail), interpolation=cv2.INTER_AREA)
    small_alpha = None if alpha is None else cv2.resize(alpha, (thumbnail, thumbnail), interpolation=cv2.INTER_AREA)
    return apply(rgb, alpha, template), apply(small, small_alpha, template)
