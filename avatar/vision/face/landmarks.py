"""468 face-mesh landmarks from MediaPipe's `face_landmark.tflite`, run through OpenCV's TFLite importer.

The model expects a 192x192 RGB crop (float 0..1, NCHW for cv2.dnn) centred on the detector box, 1.5x its size and
rotated so the detector's eye line is level, as MediaPipe's own face-mesh graph builds it. It answers 468 (x, y, z)
points in crop pixels (z is relative depth on the same scale as x, smaller = nearer the camera) and a face-presence
logit; both are mapped back to the photo here.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatar.types import DetectedFace

INPUT_SIZE = 192
NUM_LANDMARKS = 468
ROI_SCALE = 1.5


def roi_matrix(face: DetectedFace, size: int = INPUT_SIZE, roi_scale: float = ROI_SCALE) -> np.ndarray:
    """2x3 affine from photo pixels to the model's crop: box centre in the middle, eye line level."""
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = roi_scale * max(x1 - x0, y1 - y0, 1.0)
    right_eye, left_eye = face.keypoints[0], face.keypoints[1]
    angle = math.atan2(float(left_eye[1] - right_eye[1]), float(left_eye[0] - right_eye[0]))
    s = size / side
    c, si = math.cos(-angle) * s, math.sin(-angle) * s
    return np.array([[c, -si, size / 2.0 - (c * cx - si * cy)],
                     [si, c, size / 2.0 - (si * cx + c * cy)]], dtype=np.float64)


class LandmarkModel:
    """The face-mesh regression network; one forward pass per face (about 3 ms on a CPU core)."""

    def __init__(self, path: str) -> None:
        self._net = cv2.dnn.readNetFromTFLite(str(path))
        self._outputs = list(self._net.getUnconnectedOutLayersNames())

    def run(self, rgb: np.ndarray, face: DetectedFace) -> tuple[np.ndarray, float]:
        """(468, 3) landmarks in photo pixels (z scaled like x) and the face-presence probability."""
        matrix = roi_matrix(face)
        crop = cv2.warpAffine(rgb, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        blob = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        self._net.setInput(np.ascontiguousarray(blob))
        mesh, flag = self._split(self._net.forward(self._outputs))
        points = mesh.reshape(NUM_LANDMARKS, 3).astype(np.float64)
        inverse = cv2.invertAffineTransform(matrix)
        xy = points[:, :2] @ inverse[:, :2].T + inverse[:, 2]
        z = points[:, 2:] * math.sqrt(abs(np.linalg.det(inverse[:, :2])))
        presence = 1.0 / (1.0 + math.exp(-float(np.clip(flag, -50, 50))))
        return np.hstack([xy, z]), presence

    @staticmethod
    def _split(outputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
        """The 1404-value mesh and the presence logit, told apart by size (layer names vary across converters)."""
        mesh = next(o for o in outputs if o.size == NUM_LANDMARKS * 3)
        flag = next(o for o in outputs if o.size == 1)
        return mesh.ravel(), float(flag.ravel()[0])
