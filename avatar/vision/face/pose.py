"""Head pose from the 3D face mesh: a scaled rigid fit of the canonical template onto the observed landmarks.

The landmark model gives depth on the same scale as x and y, so the rotation comes straight from a 3D Umeyama fit,
with no camera intrinsics to guess. Camera axes: x right, y down, z away from the camera.

Sign conventions (degrees):
- yaw   + = the subject turned to their own left (the nose moves toward image right);
- pitch + = the subject looking up (the nose moves up in the image);
- roll  + = the eye line tilted clockwise in the photo (the subject's left eye, image right, lower).
Zero on all three is the canonical template: the frontal astronaut photo with its eye line level.
"""

from __future__ import annotations

import math

import numpy as np

from avatar.vision.face.align import CANONICAL_3D, eye_centres


def fit_rotation(points3d: np.ndarray, template: np.ndarray = CANONICAL_3D) -> np.ndarray:
    """3x3 rotation taking the template's orientation to the observed mesh (least squares, scale free)."""
    src = template - template.mean(axis=0)
    dst = points3d - points3d.mean(axis=0)
    u, _, vt = np.linalg.svd(dst.T @ src)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0]) @ vt


def angles_from_rotation(rot: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) of the face's forward direction (template -z, out of the nose toward the camera)."""
    forward = -rot[:, 2]
    yaw = math.degrees(math.atan2(float(forward[0]), float(-forward[2])))
    pitch = math.degrees(math.atan2(float(-forward[1]), math.hypot(float(forward[0]), float(forward[2]))))
    return yaw, pitch


def eye_roll(landmarks: np.ndarray) -> float:
    """Eye-line angle in the photo, clockwise positive (image y points down)."""
    right, left = eye_centres(landmarks[:, :2])
    return math.degrees(math.atan2(float(left[1] - right[1]), float(left[0] - right[0])))


def head_pose(points3d: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from (468, 3) landmarks (x, y in pixels, z on the same scale)."""
    yaw, pitch = angles_from_rotation(fit_rotation(np.asarray(points3d, dtype=np.float64)))
    return yaw, pitch, eye_roll(points3d)


def off_axis_angle(yaw: float, pitch: float) -> float:
    """Angle in degrees between the face's forward direction and the camera axis (roll plays no part)."""
    c = math.cos(math.radians(yaw)) * math.cos(math.radians(pitch))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))
