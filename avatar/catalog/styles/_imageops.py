"""Image operations more than one style uses (float RGB 0..1 arrays)."""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # Rec. 601 luma weights


def saturate(x: np.ndarray, factor: float) -> np.ndarray:
    """Saturation scaled by `factor` around each pixel's luma (1 = unchanged, 0 = grey)."""
    y = (x @ LUMA)[..., None]
    return y + (x - y) * factor
