"""Data the pure core hands between its parts and, pickled, between Serve stages (encoded images, small arrays)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the image it was measured on


@dataclass
class DetectedFace:
    """One face in the (upright) input photo."""

    box: Box
    score: float
    keypoints: np.ndarray                 # (6, 2) detector keypoints: right eye, left eye, nose tip, mouth, ears
    landmarks: np.ndarray | None = None   # (468, 2) face-mesh landmarks in photo pixels
    yaw: float = 0.0                      # degrees, + = subject turned to their left
    pitch: float = 0.0                    # degrees, + = looking up
    roll: float = 0.0                     # degrees, eye-line tilt in the photo

    def coverage(self, width: int, height: int) -> float:
        """Face box width as a share of the frame's shorter side."""
        return (self.box[2] - self.box[0]) / float(min(width, height))


@dataclass
class AlignedFace:
    """The square crop with the head at the canonical template position (eye line level, standard scale)."""

    image: np.ndarray          # (S, S, 3) uint8
    landmarks: np.ndarray      # (468, 2) in crop pixels
    matrix: np.ndarray         # (2, 3) affine from photo pixels to crop pixels
    face_box: Box              # face box in crop pixels


@dataclass
class Warning:
    code: str
    message: str


@dataclass
class StyleSpec:
    """What StyleApply renders: a built-in style name or a custom token, and how strongly."""

    style: str
    intensity: float
    palette: str | None = None
    background: str | None = None
    token: dict | None = None   # a loaded custom style token (see `avatar.tokens`), if any
    platform: str | None = None # the target platform (engines may be routed by it)
    extras: dict = field(default_factory=dict)
