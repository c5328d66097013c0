"""Alignment of the face to a canonical template: level eye line, standard scale and position in a square crop.

The canonical template (`data/canonical_face.npz`) is the 468-point face mesh of the frontal astronaut photo
(`skimage.data.astronaut()`, public domain) as the landmark model sees it, in 3D, made exactly left/right symmetric
(averaged with its mirror image through the mesh's own mirror pairs), rotated so the eye line runs along +x with no
yaw or roll, and normalised so the eye midpoint is the origin and the eye centres are 1 apart (x right, y down,
z away from the camera). `python -m avatar.vision.face.align` rebuilds it.

An eye centre is the mean of that eye's 16 contour landmarks; `Framing.eye_y` / `eye_distance` place the eye
midpoint and size the eye distance as shares of the crop side, so every platform crop is this template scaled.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from avatar.catalog.platforms import Framing
from avatar.types import AlignedFace

DATA_FILE = Path(__file__).with_name("data") / "canonical_face.npz"

# Subject's right eye (image left in a selfie) and left eye, as MediaPipe face-mesh contour indices.
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_BRIDGE = (168, 6, 197, 195, 5, 4)
JAW = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454)

# Least-squares weights: the eyes set the level line, nose bridge and jaw steady rotation and scale.
_W_EYE, _W_NOSE, _W_JAW = 8.0, 1.0, 0.5


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject's right eye centre, left eye centre) from 468 landmarks (2D or 3D)."""
    return points[list(RIGHT_EYE)].mean(axis=0), points[list(LEFT_EYE)].mean(axis=0)


def _load() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA_FILE) as data:
        return data["points"].astype(np.float64), data["mirror"].astype(np.int64)


CANONICAL_3D, MIRROR = _load()   # (468, 3) unit-eye-distance template and the left/right landmark pairing


def template_points(framing: Framing = Framing(), size: float = 1.0) -> np.ndarray:
    """The (468, 2) template placed per `framing` in a crop of side `size` (1.0 = unit-square coordinates)."""
    centre = np.array([0.5, framing.eye_y]) * size
    return CANONICAL_3D[:, :2] * (framing.eye_distance * size) + centre


TEMPLATE_LANDMARKS: np.ndarray = template_points(Framing(), 1.0)


def _fit_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points the similarity is fitted on (eye centres, nose bridge, jaw) and their weights."""
    right, left = eye_centres(points[:, :2])
    pts = np.vstack([right, left, points[list(NOSE_BRIDGE), :2], points[list(JAW), :2]])
    weights = np.concatenate([[_W_EYE] * 2, [_W_NOSE] * len(NOSE_BRIDGE), [_W_JAW] * len(JAW)])
    return pts, weights


def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares 2x3 similarity (rotation, uniform scale, translation) taking src onto dst (Umeyama)."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    cov = (d * w[:, None]).T @ s
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ fix @ vt
    scale = float(np.trace(np.diag(sig) @ fix) / (w @ (s ** 2).sum(axis=1)))
    linear = scale * rot
    return np.hstack([linear, (mu_d - linear @ mu_s)[:, None]])


def alignment_matrix(landmarks: np.ndarray, framing: Framing, size: int) -> np.ndarray:
    """Photo -> crop similarity: least-squares fit to the template, then the eye midpoint pinned to its target."""
    src, weights = _fit_points(landmarks)
    dst, _ = _fit_points(template_points(framing, size))
    matrix = similarity(src, dst, weights)
    mid = np.mean(eye_centres(landmarks[:, :2]), axis=0)
    matrix[:, 2] += np.array([0.5 * size, framing.eye_y * size]) - (matrix[:, :2] @ mid + matrix[:, 2])
    return matrix


def _prefilter(rgb: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop the region the output sees and, when shrinking a lot, downsample it with area averaging first.

    `warpAffine` samples bilinearly, which aliases (moire, jagged hair) when a big photo is reduced several times.
    """
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale >= 0.5:
        return rgb, matrix
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]
    h, w = rgb.shape[:2]
    x0, y0 = (int(max(0, math.floor(v) - 2)) for v in corners.min(axis=0))
    x1, y1 = int(min(w, math.ceil(corners[:, 0].max()) + 2)), int(min(h, math.ceil(corners[:, 1].max()) + 2))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return rgb, matrix
    factor = min(1.0, scale * 1.5)
    region = rgb[y0:y1, x0:x1]
    small = cv2.resize(region, (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor))),
                       interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)
    to_small = np.array([[fx, 0.0, -x0 * fx], [0.0, fy, -y0 * fy], [0.0, 0.0, 1.0]])
    return small, (np.vstack([matrix, [0.0, 0.0, 1.0]]) @ np.linalg.inv(to_small))[:2]


def align_face(rgb: np.ndarray, face, framing: Framing = Framing(), size: int = 512) -> AlignedFace:
    """The `size` x `size` crop of `face` (a DetectedFace with landmarks) placed on the canonical template.

    Areas outside the photo are filled by replicating its border, never black, so later stages see no hard edge.
    """
    if face.landmarks is None:
        raise ValueError("align_face needs a face with landmarks (use FaceAnalyzer.detect)")
    landmarks = np.asarray(face.landmarks, dtype=np.float64)[:, :2]
    matrix = alignment_matrix(landmarks, framing, size)
    source, warp = _prefilter(rgb, matrix, size)
    upscaling = math.sqrt(abs(np.linalg.det(warp[:, :2]))) > 1.0
    image = cv2.warpAffine(source, warp, (size, size), flags=cv2.INTER_CUBIC if upscaling else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    crop_points = landmarks @ matrix[:, :2].T + matrix[:, 2]
    lo, hi = np.clip(crop_points.min(axis=0), 0, size), np.clip(crop_points.max(axis=0), 0, size)
    return AlignedFace(image=image, landmarks=crop_points.astype(np.float32), matrix=matrix.astype(np.float64),
                       face_box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))


# ------------------------------------------------------------------------------------------------ template building
def mirror_pairs(points: np.ndarray, flipped_points: np.ndarray, width: int) -> np.ndarray:
    """Landmark i's left/right partner, from the mesh of a photo and of its horizontal flip (flip undone)."""
    from scipy.optimize import linear_sum_assignment
    unflipped = flipped_points[:, :2].copy()
    unflipped[:, 0] = width - unflipped[:, 0]
    cost = np.linalg.norm(unflipped[:, None] - points[None, :, :2], axis=2)
    _, partner = linear_sum_assignment((cost + cost.T) / 2.0)   # symmetric cost -> an involution
    return partner


def build_canonical(points: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """A symmetric, level, unit-eye-distance (468, 3) template from one near-frontal 3D mesh."""
    reflected = points[mirror] * np.array([-1.0, 1.0, 1.0])
    mu_p, mu_r = points.mean(axis=0), reflected.mean(axis=0)
    u, _, vt = np.linalg.svd((points - mu_p).T @ (reflected - mu_r))
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    sym = (points + (reflected - mu_r) @ rot.T + mu_p) / 2.0
    right, left = eye_centres(sym)
    axis = (left - right) / np.linalg.norm(left - right)
    sym = (sym - (left + right) / 2.0) @ _rotation_onto(axis, np.array([1.0, 0.0, 0.0])).T
    return sym / np.linalg.norm(left - right)


def _rotation_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b (Rodrigues)."""
    v, c = np.cross(a, b), float(a @ b)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def _rebuild() -> None:
    from skimage import data

    from avatar.vision.face.detector import FaceDetector
    from avatar.vision.face.landmarks import LandmarkModel
    from avatar.store.models import resolve
    photo = data.astronaut()
    flipped = np.ascontiguousarray(photo[:, ::-1])
    detector = FaceDetector(str(resolve("face_detector")))
    model = LandmarkModel(str(resolve("face_landmarks")))
    try:
        points = model.run(photo, detector.detect(photo)[0])[0]
        flipped_points = model.run(flipped, detector.detect(flipped)[0])[0]
    finally:
        detector.close()
    mirror = mirror_pairs(points, flipped_points, photo.shape[1])
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA_FILE, points=build_canonical(points, mirror).astype(np.float32),
                        mirror=mirror.astype(np.int16))
    print(f"wrote {DATA_FILE}")


if __name__ == "__main__":
    _rebuild()
