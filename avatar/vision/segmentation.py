"""Person / background confidence of the aligned crop: MediaPipe's selfie segmentation model run through OpenCV.

The model file is MediaPipe's (`selfie_segmentation.tflite`, 256x256 RGB in 0..1, one sigmoid channel out). It runs
through `cv2.dnn` rather than the MediaPipe Tasks `ImageSegmenter`: the Tasks segmenter carries state from one call
to the next (the same crop gave 58 % person after one photo and 64 % after another; only repeated calls on one
image settle), so a request's mask depended on the request before it. `cv2.dnn` is stateless and agrees with the
settled Tasks output within 0.006 mean absolute confidence on the wall composites of the tests.

`avatar.vision.matting` turns the confidence into the matte the background is composited with.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

MODEL_SIDE = 256


class PersonSegmenter:
    """Person confidence per pixel; one network per object, calls serialised (a cv2.dnn.Net is not thread-safe)."""

    def __init__(self, net: cv2.dnn.Net, feather: float = 0.004) -> None:
        self._net = net
        self._lock = threading.Lock()
        self.feather = feather   # edge softening of `mask`, as a share of the image side

    @classmethod
    def load(cls, path: str | Path | None = None, feather: float = 0.004) -> "PersonSegmenter":
        from avatar.store.models import resolve
        return cls(cv2.dnn.readNetFromTFLite(str(path or resolve("person_segmenter"))), feather)

    def confidence(self, rgb: np.ndarray) -> np.ndarray:
        """Float32 (H, W) person confidence in 0..1 at the model's resolution, resized to the image."""
        if self._net is None:
            raise RuntimeError("the segmenter is closed")
        small = cv2.resize(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), (MODEL_SIDE, MODEL_SIDE),
                           interpolation=cv2.INTER_AREA)
        blob = np.ascontiguousarray((small.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        with self._lock:
            self._net.setInput(blob)
            out = self._net.forward()
        conf = np.clip(out.reshape(MODEL_SIDE, MODEL_SIDE), 0.0, 1.0).astype(np.float32)
        h, w = rgb.shape[:2]
        return cv2.resize(conf, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != conf.shape else conf

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """The coarse matte: confidence contrast-stretched and feathered (no checks; see `avatar.vision.matting`)."""
        return refine_mask(self.confidence(rgb), self.feather)

    def close(self) -> None:
        self._net = None

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def refine_mask(conf: np.ndarray, feather: float = 0.004) -> np.ndarray:
    """Confidence to a soft mask: contrast-stretched around 0.5 (removes the low-confidence haze), then feathered."""
    matte = np.clip((conf - 0.5) * 2.5 + 0.5, 0.0, 1.0)
    sigma = feather * max(conf.shape)
    if sigma > 0:
        matte = cv2.GaussianBlur(matte, (0, 0), sigma)
    return matte.astype(np.float32)
