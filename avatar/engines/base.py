"""The engine interface StyleApply and BgGenerate call, so a diffusion engine can replace the CPU one by configuration."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from avatar.types import StyleSpec


@runtime_checkable
class StyleEngine(Protocol):
    """Renders a style onto an aligned face crop.

    `image`: (S, S, 3) uint8 aligned crop; `landmarks`: (468, 2) face-mesh points in crop pixels (MediaPipe indices);
    returns an (S, S, 3) uint8 image of the same size. Must be deterministic for equal inputs.
    """

    name: str
    version: str

    def apply(self, image: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray: ...


@runtime_checkable
class BackgroundEngine(Protocol):
    """Replaces the background outside `mask` ((S, S) float 0..1, 1 = person) for `spec` (style, palette, background)."""

    name: str
    version: str

    def render(self, image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray: ...
