"""Person / background mask of the aligned crop: MediaPipe selfie segmentation, refined into a soft matte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np


class PersonSegmenter:
    """Person / background mask from MediaPipe's selfie segmentation (Tasks ImageSegmenter, confidence masks)."""

    def __init__(self, segmenter: Any, feather: float = 0.004) -> None:
        self._segmenter = segmenter
        self.feather = feather   # edge softening, as a share of the image side

    @classmethod
    def load(cls, path: str | Path | None = None, feather: float = 0.004) -> "PersonSegmenter":
        from mediapipe.tasks.python import BaseOptions, vision

        from avatar.store.models import resolve
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(path or resolve("person_segmenter"))),
            output_confidence_masks=True, output_category_mask=False)
        return cls(vision.ImageSegmenter.create_from_options(options), feather)

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """Float32 (H, W) in 0..1, 1 = person; edges feathered so the composite has no hard cut-out line."""
        import mediapipe as mp
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb, dtype=np.uint8))
        result = self._segmenter.segment(image)
        conf = np.asarray(result.confidence_masks[-1].numpy_view(), np.float32).reshape(rgb.shape[:2])
        return refine_mask(conf, self.feather)

    def close(self) -> None:
        if self._segmenter is not None:
            self._segmenter.close()
            self._segmenter = None

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def refine_mask(conf: np.ndarray, feather: float = 0.004) -> np.ndarray:
    """Confidence to a clean matte: contrast-stretched around 0.5 (removes the low-confidence haze), then feathered."""
    matte = np.clip((conf - 0.5) * 2.5 + 0.5, 0.0, 1.0)
    sigma = feather * max(conf.shape)
    if sigma > 0:
        matte = cv2.GaussianBlur(matte, (0, 0), sigma)
    return matte.astype(np.float32)
