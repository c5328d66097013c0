"""Face boxes and the six detector keypoints, from MediaPipe's BlazeFace models through the Tasks API.

The short-range model is tuned for faces that fill a good part of the frame (selfies, headshots). When it finds no
face that large, the full-range sparse model runs too and its extra faces are merged in, so small faces in wide
shots and group photos are still found; selfies pay for one model only.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.types import DetectedFace

# Photos are downscaled to this longest side before detection: the models see 128 or 192 px anyway, so a
# full-resolution copy would only cost time and memory.
DETECT_MAX_SIDE = 1024
# The full-range model also runs unless the short-range one found a face the service can use (the minimum face
# coverage, a share of the shorter side): wide shots and group photos get both models, selfies one.
FULL_RANGE_BELOW = 0.15
# Boxes overlapping more than this (intersection over union) are the same face seen by both models.
SAME_FACE_IOU = 0.3


def _create(path: str, min_score: float):
    from mediapipe.tasks.python import BaseOptions, vision
    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                         running_mode=vision.RunningMode.IMAGE,
                                         min_detection_confidence=min_score)
    return vision.FaceDetector.create_from_options(options)


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The photo at most `max_side` on its longest side, and the factor applied."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / float(max(h, w)))
    if scale >= 1.0:
        return np.ascontiguousarray(rgb), 1.0
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return small, scale


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FaceDetector:
    """BlazeFace short range, plus the full-range sparse model for small faces when it is available."""

    def __init__(self, short_range_path: str, full_range_path: str | None = None, min_score: float = 0.5,
                 max_side: int = DETECT_MAX_SIDE) -> None:
        self.max_side = max_side
        self._short = _create(short_range_path, min_score)
        self._full = _create(full_range_path, min_score) if full_range_path else None

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """All faces in photo pixels (unsorted, no landmarks yet)."""
        small, scale = _downscale(rgb, self.max_side)
        faces = self._run(self._short, small, scale, rgb.shape)
        h, w = rgb.shape[:2]
        if self._full is not None and all(f.coverage(w, h) < FULL_RANGE_BELOW for f in faces):
            extra = self._run(self._full, small, scale, rgb.shape)
            faces += [f for f in extra if all(iou(f.box, g.box) <= SAME_FACE_IOU for g in faces)]
        return faces

    @staticmethod
    def _run(detector, small: np.ndarray, scale: float, shape: tuple[int, ...]) -> list[DetectedFace]:
        import mediapipe as mp
        result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=small))
        h, w = shape[:2]
        faces = []
        for det in result.detections:
            bb = det.bounding_box
            box = (bb.origin_x / scale, bb.origin_y / scale,
                   (bb.origin_x + bb.width) / scale, (bb.origin_y + bb.height) / scale)
            box = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
            kps = np.array([[k.x * w, k.y * h] for k in det.keypoints], dtype=np.float32)
            score = float(det.categories[0].score) if det.categories else 0.0
            faces.append(DetectedFace(box=box, score=score, keypoints=kps))
        return faces

    def close(self) -> None:
        for det in (self._short, self._full):
            if det is not None:
                det.close()
        self._short = self._full = None
