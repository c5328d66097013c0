"""The CPU style engine: the catalogue's built-in styles (`avatar.catalog.styles`), no generative model.

Identity comes first: every style's operations change colour, tone, texture or draw lines, none moves a pixel, so the
face geometry of the output is the input's. `StyleSpec.intensity` scales each operation's strength linearly (0 = the
input, 1 = the full look), which is what lets the quality gate retry a failed result more gently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avatar.catalog.styles import STYLES, StyleDefinition, base_style_of
from avatar.types import StyleSpec


class CpuStyleEngine:
    """Deterministic built-in styles and custom-token looks on an aligned face crop (see `avatar.engines.base`)."""

    name = "cpu"
    version = "1.0.0"

    def __init__(self, **_options: Any) -> None:
        """No options yet; configuration may pass some, so unknown keys are accepted and ignored."""

    def apply(self, image: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray:
        t = float(np.clip(spec.intensity, 0.0, 1.0))
        base = base_style_of(spec.style, spec.token)
        if base not in STYLES:
            raise ValueError(f"unknown style {base!r}; built-in: {', '.join(STYLES)}")
        if spec.token:
            return self._apply_token(image, landmarks, STYLES[base], spec.token, t)
        return render_look(image, landmarks, STYLES[base], STYLES[base].look_for(spec.extras.get("look")), t)

    def _apply_token(self, image: np.ndarray, landmarks: np.ndarray, base: StyleDefinition, token: dict,
                     intensity: float) -> np.ndarray:
        """A custom style: its base style's look (with `token["params"]` overriding look fields), then its colour map.

        Token keys used (see `avatar.tokens`): `params` (dict: any field of the base style's look dataclass) and
        `lut` ((N, N, N, 3) float 0..1, indexed [r, g, b], applied trilinearly). The token's `curve` is already baked
        into its LUT, so it is not applied again.
        """
        out = render_look(image, landmarks, base, base.look_for(token.get("params")), intensity)
        if token.get("lut") is None:
            return out
        x = out.astype(np.float32) / 255.0
        graded = apply_lut(x, np.asarray(token["lut"], np.float32))
        return _to_u8(x + (graded - x) * intensity)


def render_look(image: np.ndarray, landmarks: np.ndarray, style: StyleDefinition, look: Any, t: float) -> np.ndarray:
    """`image` (uint8 RGB) with `style` rendered with `look` at strength `t` (0..1)."""
    if t <= 0.0:
        return image.copy()
    x = image.astype(np.float32) / 255.0
    return _to_u8(style.render(x, np.asarray(landmarks, np.float32), look, t))


def apply_lut(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Trilinear lookup of float RGB `x` (0..1) in an (N, N, N, 3) table indexed [r, g, b]."""
    n = lut.shape[0]
    pos = np.clip(x, 0.0, 1.0).reshape(-1, 3) * (n - 1)
    i0 = np.minimum(pos.astype(np.int32), n - 2)
    f = pos - i0
    flat = lut.reshape(-1, 3)
    base = (i0[:, 0] * n + i0[:, 1]) * n + i0[:, 2]
    out = np.zeros_like(pos)
    for dr in (0, 1):
        wr = f[:, 0] if dr else 1.0 - f[:, 0]
        for dg in (0, 1):
            wg = wr * (f[:, 1] if dg else 1.0 - f[:, 1])
            for db in (0, 1):
                w = wg * (f[:, 2] if db else 1.0 - f[:, 2])
                out += flat[base + (dr * n + dg) * n + db] * w[:, None]
    return out.reshape(x.shape)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
