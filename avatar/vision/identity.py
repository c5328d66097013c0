"""Identity embedding: how much an output still looks like the person in the input.

Two models, chosen by configuration (`identity_model` of FaceDetect and QualityGate; both must name the same one):

- `sface` (default): SFace (OpenCV model zoo, Apache-2.0; int8 block-quantised, LFW 99.32% for the quantised build),
  a 128-d unit embedding of a 112x112 crop aligned on five points (eye centres, nose tip, mouth corners) taken from
  the 468-point face mesh. Distance = 1 - cosine similarity (0 = identical, 2 = opposite); the zoo's accept line is
  cosine 0.363, distance 0.637. ~15 ms per face on one core (mesh 3 ms + network 11-12 ms).
- `dlib`: dlib's ResNet face descriptor (128-d, public-domain weights) with its 5-point shape predictor; Euclidean
  distance, accept line 0.6. ~75 ms per face.

The box comes from our face detector (or from the aligned geometry): dlib's own HOG detector is slow and misses faces
our detector finds, and SFace needs no detector of its own. Each model has its own likeness calibration
(`avatar.vision.calibration`), so the 0..1 likeness score and the thresholds documented on it mean the same whichever
model measures them (docs/likeness.md).
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from avatar.store.models import resolve
from avatar.types import Box, DetectedFace
from avatar.vision.calibration import LikenessCurve, calibration_path, likeness_from_distance, load_curve

EMBEDDING_SIZE = 128
_MIN_SIDE = 8.0   # a box smaller than this has no identity left to measure
IDENTITY_MODELS = ("sface", "dlib")
DEFAULT_IDENTITY_MODEL = "sface"


class IdentityModel:
    """A loaded identity embedder: `embed` a face, `distance` between two embeddings, `likeness` (0..1) between them.

    `IdentityModel.load(kind)` builds the configured model; `name` goes into the job's metadata, so the score a
    delivered avatar carries names the model that measured it.
    """

    name: str = ""
    kind: str = ""

    @classmethod
    def load(cls, kind: str | None = None, sources: Mapping[str, str] | None = None) -> IdentityModel:
        """The `kind` model ("sface" or "dlib"; default sface), its files from `sources` (component -> path or URL,
        a deployment's `models`) or the model cache. Called on a subclass, its own kind is the default."""
        kind = kind or cls.kind or DEFAULT_IDENTITY_MODEL
        sources = sources or {}
        if kind == "sface":
            return SFaceIdentity.from_files(sources.get("identity_sface"), sources.get("face_landmarks"))
        if kind == "dlib":
            return DlibIdentity.from_files(sources.get("identity_encoder"), sources.get("identity_shape"))
        raise ValueError(f"unknown identity model {kind!r}; known: {', '.join(IDENTITY_MODELS)}")

    def embed(self, rgb: np.ndarray, box: Box, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        """The (128,) float32 embedding of the face in `box` (x0, y0, x1, y1 pixels; `landmarks`: its 468-point mesh
        when already measured); None if it can't be measured."""
        raise NotImplementedError

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        raise NotImplementedError

    @cached_property
    def curve(self) -> LikenessCurve:
        """This model's calibrated distance -> likeness curve."""
        return load_curve(calibration_path(self.kind))

    def likeness(self, distance: float | None) -> float:
        return likeness_from_distance(distance, self.curve)

    def close(self) -> None:
        """Nothing to release (kept for `close_stage`)."""


class DlibIdentity(IdentityModel):
    """dlib shape predictor + face recognition net; `embed` is ~75-110 ms per face on one CPU core."""

    name, kind = "dlib_face_recognition_resnet_model_v1", "dlib"

    def __init__(self, encoder: object, shape: object) -> None:
        self.encoder = encoder
        self.shape = shape

    @classmethod
    def from_files(cls, encoder_path: str | Path | None = None, shape_path: str | Path | None = None) -> DlibIdentity:
        import dlib  # imported here: the default model needs no dlib

        encoder = dlib.face_recognition_model_v1(str(resolve("identity_encoder", _source(encoder_path))))
        shape = dlib.shape_predictor(str(resolve("identity_shape", _source(shape_path))))
        return cls(encoder=encoder, shape=shape)

    def embed(self, rgb: np.ndarray, box: Box, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        """dlib's descriptor; `landmarks` is not used (its own 5-point predictor places the face in the box)."""
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
        return _finite(np.asarray(descriptor, dtype=np.float32))

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance between two descriptors (the metric dlib's 0.6 accept line is defined on)."""
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


# The five points SFace (like ArcFace) was trained on, in its 112x112 input: the subject's right eye (image left),
# left eye, nose tip, right and left mouth corners (OpenCV's FaceRecognizerSF::alignCrop).
SFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                           [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
SFACE_INPUT = 112
# Face-mesh indices of those points: eye contours (their means), the nose tip, the mouth corners.
_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
_NOSE_TIP, _MOUTH_RIGHT, _MOUTH_LEFT = 1, 61, 291


class SFaceIdentity(IdentityModel):
    """SFace on a crop aligned by five face-mesh points; `embed` is ~15 ms per face on one CPU core.

    Given only a box (the quality gate's expected box on an output), the face mesh is measured inside it first (one
    landmark-network pass, ~3 ms), as dlib's shape predictor does for its descriptor; when that network sees no face
    there (presence below the analyzer's 0.5: a face blurred away or cut into shuffled blocks measures 0.004-0.05,
    photos and styled faces 1.0), the face cannot be measured (None, likeness 0). Not thread-safe (one cv2.dnn
    network; Serve replicas call it from one thread).
    """

    name, kind = "face_recognition_sface_2021dec_int8bq", "sface"

    def __init__(self, net: cv2.dnn.Net, landmarks_path: str | Path) -> None:
        self.net = net
        self.landmarks_path = landmarks_path

    @classmethod
    def from_files(cls, model_path: str | Path | None = None, landmarks_path: str | Path | None = None
                   ) -> SFaceIdentity:
        net = cv2.dnn.readNet(str(resolve("identity_sface", _source(model_path))))
        model = cls(net, resolve("face_landmarks", _source(landmarks_path)))
        model._forward(np.zeros((SFACE_INPUT, SFACE_INPUT, 3), np.uint8))   # warm-up: first pass prepares layers
        return model

    @cached_property
    def mesh(self):
        """The landmark network, loaded on the first box-only embedding (FaceDetect passes the mesh it has)."""
        from avatar.vision.face.landmarks import LandmarkModel
        return LandmarkModel(str(self.landmarks_path))

    def embed(self, rgb: np.ndarray, box: Box, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        image = _as_rgb_u8(rgb)
        if image is None or not _box_usable(box, image.shape):
            return None
        if landmarks is None:
            landmarks = self._mesh(image, box)
            if landmarks is None:
                return None
        crop = aligned_crop(image, np.asarray(landmarks, np.float32))
        return None if crop is None else _finite(self._forward(crop))

    def _mesh(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """The face mesh inside `box`, with the box taken as upright (outputs and detector boxes are); None when the
        landmark network sees no face there."""
        from avatar.vision.face.analyzer import MIN_PRESENCE
        x0, y0, x1, y1 = box
        cy = (y0 + y1) / 2.0
        level_eyes = np.array([[x0, cy], [x1, cy]], np.float32)   # only their angle is used: 0
        points, presence = self.mesh.run(image, DetectedFace(box=tuple(box), score=1.0, keypoints=level_eyes))
        return points[:, :2] if presence >= MIN_PRESENCE else None

    def _forward(self, crop: np.ndarray) -> np.ndarray:
        """Unit-length embedding of a 112x112 RGB crop (the network takes RGB 0..255, NCHW)."""
        self.net.setInput(cv2.dnn.blobFromImage(crop, 1.0, (SFACE_INPUT, SFACE_INPUT), (0, 0, 0), swapRB=False),
                          "data")
        out = self.net.forward().reshape(-1).astype(np.float32)
        norm = float(np.linalg.norm(out))
        return out / norm if norm > 0 else out

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """1 - cosine similarity (the zoo's accept line, cosine 0.363, is distance 0.637)."""
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        return 1.0 - float(a @ b) / denom if denom > 0 else 2.0


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) SFace alignment points from a (468, 2+) face mesh."""
    lm = np.asarray(landmarks, np.float32)[:, :2]
    return np.stack([lm[list(_RIGHT_EYE)].mean(axis=0), lm[list(_LEFT_EYE)].mean(axis=0), lm[_NOSE_TIP],
                     lm[_MOUTH_RIGHT], lm[_MOUTH_LEFT]])


def aligned_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """The 112x112 crop SFace expects: a similarity transform of the five points onto its template."""
    if landmarks.ndim != 2 or landmarks.shape[0] < 468 or not np.all(np.isfinite(landmarks[:, :2])):
        return None
    matrix = similarity(five_points(landmarks), SFACE_TEMPLATE)
    if matrix is None:
        return None
    return cv2.warpAffine(image, matrix, (SFACE_INPUT, SFACE_INPUT), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares similarity (rotation, uniform scale, shift) taking `src` points onto `dst` (Umeyama), as a 2x3
    matrix; None for degenerate points. OpenCV's own SFace alignment solves the same problem."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var = float((s ** 2).sum()) / len(src)
    if not math.isfinite(var) or var < 1e-6:
        return None
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip)) / var
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def _source(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _finite(out: np.ndarray) -> np.ndarray | None:
    return out if out.shape == (EMBEDDING_SIZE,) and np.all(np.isfinite(out)) else None


def _as_rgb_u8(rgb: np.ndarray) -> np.ndarray | None:
    """A C-contiguous (H, W, 3) uint8 array; grey images are widened, anything else is refused."""
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
