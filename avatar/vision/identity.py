"""Identity embedding: how much an output still looks like the person in the input.

dlib's ResNet face descriptor (128-d, public-domain weights) with its 5-point shape predictor. The box comes from our
face detector (or from the aligned geometry): dlib's own HOG detector is slow and misses faces our detector finds.
Euclidean distance between descriptors: same person ~0.1-0.45, different people ~0.7-0.9, dlib's accept line 0.6.
`avatar.vision.calibration` turns the distance into the 0..1 likeness score the API reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.store.models import resolve
from avatar.types import Box

EMBEDDING_SIZE = 128
_MIN_SIDE = 8.0   # a box smaller than this has no identity left to measure


@dataclass
class IdentityModel:
    """Loaded dlib shape predictor + face recognition net; `embed` is ~75-110 ms per face on one CPU core."""

    encoder: object
    shape: object

    @classmethod
    def load(cls, encoder_path: str | Path | None = None, shape_path: str | Path | None = None) -> IdentityModel:
        import dlib  # imported here so modules that only type against IdentityModel don't need dlib

        encoder = dlib.face_recognition_model_v1(str(encoder_path or resolve("identity_encoder")))
        shape = dlib.shape_predictor(str(shape_path or resolve("identity_shape")))
        return cls(encoder=encoder, shape=shape)

    def embed(self, rgb: np.ndarray, box: Box) -> np.ndarray | None:
        """The (128,) float32 descriptor of the face in `box` (x0, y0, x1, y1 pixels); None if it can't be measured."""
        import dlib

        image = _as_rgb_u8(rgb)
        if image is None or not _box_usable(box, image.shape):
            return None
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        try:
            points = self.shape(image, dlib.rectangle(x0, y0, x1, y1))
            descriptor = self.encoder.compute_face_descriptor(image, points, 0)
        except RuntimeError:
            return None
        out = np.asarray(descriptor, dtype=np.float32)
        return out if out.shape == (EMBEDDING_SIZE,) and np.all(np.isfinite(out)) else None

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance between two descriptors (the metric dlib's 0.6 accept line is defined on)."""
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def _as_rgb_u8(rgb: np.ndarray) -> np.ndarray | None:
    """dlib wants a C-contiguous (H, W, 3) uint8 array; grey images are widened, anything else is refused."""
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] < 3:
        return None
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


def _box_usable(box: Box, shape: tuple[int, ...]) -> bool:
    x0, y0, x1, y1 = box
    if not all(np.isfinite(v) for v in box) or x1 - x0 < _MIN_SIDE or y1 - y0 < _MIN_SIDE:
        return False
    return x1 > 0 and y1 > 0 and x0 < shape[1] and y0 < shape[0]
