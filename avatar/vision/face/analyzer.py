"""The face stage's entry point: detection, 468 landmarks and head pose for every face in a photo."""

from __future__ import annotations

import math
import threading

import numpy as np

from avatar.errors import ModelUnavailable
from avatar.vision.face.detector import FaceDetector, Tiling
from avatar.vision.face.landmarks import LandmarkModel
from avatar.vision.face.pose import head_pose
from avatar.types import DetectedFace

# A detection whose crop the landmark model judges not to be a face (presence below this) is dropped: it screens out
# detector false positives on textures and face-like objects.
MIN_PRESENCE = 0.5
# Weight of centrality in the dominance order: a face at the frame's corner counts as this much smaller.
CENTRALITY_WEIGHT = 0.3


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A contiguous HxWx3 uint8 view of an RGB, RGBA or greyscale photo."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def dominance(face: DetectedFace, width: int, height: int) -> float:
    """Sort key: box width, discounted by the box centre's distance from the frame centre."""
    x0, y0, x1, y1 = face.box
    dist = math.hypot((x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2) / (0.5 * math.hypot(width, height))
    return (x1 - x0) * (1.0 - CENTRALITY_WEIGHT * min(1.0, dist))


def _optional_full_range() -> str | None:
    from avatar.store.models import resolve
    try:
        return str(resolve("face_detector_full"))
    except ModelUnavailable:
        return None


class FaceAnalyzer:
    """Detector + landmark network, loaded once per process; `detect` is safe to call from several threads."""

    def __init__(self, detector: FaceDetector, landmarks: LandmarkModel) -> None:
        self._detector = detector
        self._landmarks = landmarks
        self._lock = threading.Lock()

    @classmethod
    def load(cls, detector_path: str | None = None, landmarks_path: str | None = None, *,
             full_range_path: str | None = None, tiled: Tiling = True) -> "FaceAnalyzer":
        """Models from the given paths, else from the model cache (`avatar.store.models.resolve`).

        The full-range detector is optional: without it, only faces the short-range model finds are reported.
        `tiled=False` skips the tile pass (small faces): for confirming one large face where it is expected;
        `tiled="auto"` runs it only where the whole-frame passes leave doubt (`avatar.vision.face.detector`).
        """
        from avatar.store.models import resolve
        detector = FaceDetector(detector_path or str(resolve("face_detector")),
                                full_range_path or _optional_full_range(), tiled=tiled)
        return cls(detector, LandmarkModel(landmarks_path or str(resolve("face_landmarks"))))

    def detect(self, rgb: np.ndarray, exhaustive: bool | None = None) -> list[DetectedFace]:
        """All faces, dominant first (size, then centrality), with landmarks in photo pixels and head pose;
        `exhaustive=True` counts with the tile pass whatever the analyzer's `tiled` says."""
        rgb = _as_rgb(rgb)
        with self._lock:
            faces = [f for f in self._detector.detect(rgb, exhaustive) if self._add_mesh(rgb, f)]
        height, width = rgb.shape[:2]
        return sorted(faces, key=lambda f: dominance(f, width, height), reverse=True)

    def _add_mesh(self, rgb: np.ndarray, face: DetectedFace) -> bool:
        """Fill landmarks and pose; False when the landmark network says the crop holds no face."""
        points, presence = self._landmarks.run(rgb, face)
        if presence < MIN_PRESENCE:
            return False
        face.landmarks = points[:, :2].astype(np.float32)
        face.yaw, face.pitch, face.roll = head_pose(points)
        return True

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(faces: list[DetectedFace], shape: tuple[int, ...], photo_size: tuple[int, int]) -> list[dict]:
    """The faces (dominant first) as the check response lists them: boxes in pixels of the uploaded photo (`faces`
    were found on a copy of `shape`, possibly downscaled from `photo_size` = (width, height))."""
    height, width = shape[:2]
    scale = photo_size[0] / float(width) if photo_size[0] else 1.0
    short = min(width, height)
    return [{"box": tuple(round(v * scale, 1) for v in f.box), "score": round(float(f.score), 4),
             "coverage": round((f.box[2] - f.box[0]) / float(short), 4), "dominant": i == 0}
            for i, f in enumerate(faces)]
