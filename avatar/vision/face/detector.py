"""Face boxes and the six detector keypoints, from MediaPipe's BlazeFace models through the Tasks API.

Every photo goes through both models, and the full-range one also through a 2x2 grid of overlapping tiles; the
detections are merged by overlap. Measured on composites of the astronaut photo: the short-range model finds no face
narrower than ~15 % of its input and the full-range one none under ~6 %, so one whole-frame pass of either misses
faces: three heads side by side counted 1 when the short-range pass found one large face and the full-range pass
was skipped, a grid of six counted 2 to 4. Tiles two thirds of the photo wide bring faces down to ~4 % of the photo
into the full-range model's range, and a face narrower than a third of the photo lies wholly inside some tile.

The tile pass costs four more model runs (about half of detection). With `tiled="auto"` it runs only where the two
whole-frame passes leave doubt: unless both found exactly one face, the same one (a portrait, the common case), the
photo is tiled. Counting with tiles is for the pre-flight report and group photos; `detect(..., exhaustive=True)`
forces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from avatar.types import DetectedFace

# Photos are downscaled to this longest side before detection: the models see 128 or 192 px anyway, so a
# full-resolution copy would only cost time and memory.
DETECT_MAX_SIDE = 1024
# Boxes overlapping more than this (intersection over union), or one lying mostly inside the other (intersection over
# the smaller box), are the same face seen twice (two models, two tiles).
SAME_FACE_IOU = 0.3
SAME_FACE_INSIDE = 0.6
# Faces narrower than this share of the photo's shorter side are not reported: far below what a platform can use as
# an avatar (15 %) or would call a second person in the picture, and where the models' false detections live.
MIN_FACE_SHARE = 0.04
TILE_SHARE = 2.0 / 3.0          # tile side, as a share of the photo's sides (2x2 grid, overlapping by a third)
Tiling = bool | Literal["auto"]   # True: always, False: never, "auto": where the whole-frame passes leave doubt


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
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(a: tuple[float, ...]) -> float:
    return max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])


def _intersection(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih


def same_face(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    smaller = min(_area(a), _area(b))
    return iou(a, b) > SAME_FACE_IOU or (smaller > 0 and _intersection(a, b) / smaller > SAME_FACE_INSIDE)


def merge(faces: list[DetectedFace]) -> list[DetectedFace]:
    """Non-maximum suppression: the best-scored detection of each face, in score order."""
    kept: list[DetectedFace] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(not same_face(face.box, k.box) for k in kept):
            kept.append(face)
    return kept


@dataclass(frozen=True)
class Window:
    """A region of the (downscaled) photo a model looks at; `inner` edges are tile borders inside the photo."""

    x0: int
    y0: int
    x1: int
    y1: int
    inner: tuple[bool, bool, bool, bool] = (False, False, False, False)   # left, top, right, bottom


def tiles(width: int, height: int, share: float = TILE_SHARE) -> list[Window]:
    """A 2x2 grid of windows `share` of the photo's sides, overlapping in the middle."""
    tw, th = round(width * share), round(height * share)
    out = []
    for x0 in (0, width - tw):
        for y0 in (0, height - th):
            out.append(Window(x0, y0, x0 + tw, y0 + th, (x0 > 0, y0 > 0, x0 + tw < width, y0 + th < height)))
    return out


class FaceDetector:
    """BlazeFace short range and full range on the whole photo, the full-range model again on tiles; merged."""

    def __init__(self, short_range_path: str, full_range_path: str | None = None, min_score: float = 0.5,
                 max_side: int = DETECT_MAX_SIDE, tiled: Tiling = True, min_face_share: float = MIN_FACE_SHARE) -> None:
        self.max_side = max_side
        self.tiled = tiled
        self.min_face_share = min_face_share
        self._short = _create(short_range_path, min_score)
        self._full = _create(full_range_path, min_score) if full_range_path else None

    def detect(self, rgb: np.ndarray, exhaustive: bool | None = None) -> list[DetectedFace]:
        """All faces in photo pixels (score order, no landmarks yet), down to `min_face_share` of the shorter side.

        `exhaustive`: True tiles the photo whatever the whole-frame passes found, False never; None follows `tiled`.
        """
        small, scale = _downscale(rgb, self.max_side)
        h, w = small.shape[:2]
        whole = Window(0, 0, w, h)
        short = self._run(self._short, small, whole, scale)
        found = list(short)
        if self._full is not None:
            full = self._run(self._full, small, whole, scale)
            found += full
            if self._tile(short, full, exhaustive):
                for window in tiles(w, h):
                    found += self._run(self._full, small, window, scale)
        limit = self.min_face_share * min(rgb.shape[:2])
        return [f for f in merge(found) if f.box[2] - f.box[0] >= limit]

    def _tile(self, short: list[DetectedFace], full: list[DetectedFace], exhaustive: bool | None) -> bool:
        """Whether the tile pass runs: as asked, else per `tiled`; "auto" tiles unless both whole-frame passes saw
        exactly one face, the same one."""
        mode = self.tiled if exhaustive is None else exhaustive
        if mode != "auto":
            return bool(mode)
        one, other = merge(short), merge(full)
        return not (len(one) == 1 and len(other) == 1 and same_face(one[0].box, other[0].box))

    @staticmethod
    def _run(detector, small: np.ndarray, window: Window, scale: float) -> list[DetectedFace]:
        """Detections in `window` of the downscaled photo, in full-photo pixels; a face cut by an inner tile edge is
        dropped (another tile sees it whole)."""
        import mediapipe as mp
        crop = np.ascontiguousarray(small[window.y0:window.y1, window.x0:window.x1])
        result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
        ch, cw = crop.shape[:2]
        faces = []
        for det in result.detections:
            bb = det.bounding_box
            x0, y0, x1, y1 = bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height
            margin = 0.02 * max(cw, ch)
            cut = (x0 <= margin, y0 <= margin, x1 >= cw - margin, y1 >= ch - margin)
            if any(c and i for c, i in zip(cut, window.inner)):
                continue
            x0, x1 = max(0.0, x0), min(float(cw), x1)
            y0, y1 = max(0.0, y0), min(float(ch), y1)
            box = ((x0 + window.x0) / scale, (y0 + window.y0) / scale,
                   (x1 + window.x0) / scale, (y1 + window.y0) / scale)
            kps = np.array([[(k.x * cw + window.x0) / scale, (k.y * ch + window.y0) / scale]
                            for k in det.keypoints], dtype=np.float32)
            score = float(det.categories[0].score) if det.categories else 0.0
            faces.append(DetectedFace(box=box, score=score, keypoints=kps))
        return faces

    def close(self) -> None:
        for det in (self._short, self._full):
            if det is not None:
                det.close()
        self._short = self._full = None
