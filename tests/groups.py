"""Group photos composed from the packaged portraits: faces of different sizes and head angles, with known counts.

`skimage.data.astronaut()` (NASA, public domain) and `skimage.data.camera()` (the cameraman, greyscale) are the
faces; copies are flipped, rotated in the image plane and rescaled, and pasted onto a mid-grey canvas without
overlapping. Each entry knows how many faces it holds and where the largest one is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


@dataclass(frozen=True)
class Group:
    name: str
    image: np.ndarray
    count: int
    boxes: tuple[tuple[int, int, int, int], ...]     # pasted tiles (x0, y0, x1, y1), one face each


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@lru_cache(maxsize=1)
def _portraits() -> dict[str, np.ndarray]:
    from skimage import data
    astronaut = data.astronaut()
    camera = np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))
    return {"astronaut": astronaut, "head": np.ascontiguousarray(astronaut[0:300, 80:380]),
            "camera": np.ascontiguousarray(camera[40:360, 120:440])}


def _face(kind: str, flip: bool = False, degrees: float = 0.0) -> np.ndarray:
    image = _portraits()[kind]
    if flip:
        image = np.ascontiguousarray(image[:, ::-1])
    return _rotate(image, degrees) if degrees else image


def compose(name: str, canvas: tuple[int, int], parts: list[tuple[np.ndarray, int, int, int]]) -> Group:
    """`parts`: (face image, side, x, y) pasted as side x side squares onto a grey canvas (height, width)."""
    out = np.full((*canvas, 3), 128, np.uint8)
    boxes = []
    for image, side, x, y in parts:
        out[y:y + side, x:x + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        boxes.append((x, y, x + side, y + side))
    return Group(name, out, len(parts), tuple(boxes))


@lru_cache(maxsize=1)
def groups() -> tuple[Group, ...]:
    """Two, three and six faces at several sizes and head angles, plus single-face controls."""
    f = _face
    return (
        compose("one_astronaut", (512, 512), [(f("astronaut"), 512, 0, 0)]),
        compose("one_cameraman", (480, 480), [(f("camera"), 400, 40, 40)]),
        compose("two_side_by_side", (400, 800), [(f("head"), 400, 0, 0), (f("head", flip=True), 400, 400, 0)]),
        compose("two_sizes", (600, 1000), [(f("astronaut"), 560, 20, 20), (f("head", True, 12), 260, 680, 180)]),
        compose("three_in_a_row", (300, 900), [(f("head"), 300, 0, 0), (f("head", True), 300, 300, 0),
                                               (f("head", degrees=-15), 300, 600, 0)]),
        compose("three_mixed", (640, 960), [(f("head"), 420, 20, 110), (f("camera"), 300, 480, 20),
                                            (f("head", True, 20), 220, 600, 400)]),
        compose("six_grid", (600, 900), [(f("head", i % 2 == 1, d), 300, 300 * (i % 3), 300 * (i // 3))
                                         for i, d in enumerate((0, 0, 12, -12, 0, 18))]),
        compose("six_sizes", (700, 1200), [(f("head"), 300, 10, 10), (f("head", True, -10), 260, 360, 40),
                                           (f("camera"), 380, 660, 10), (f("head", degrees=15), 220, 60, 420),
                                           (f("head", True), 200, 420, 440), (f("head", degrees=-20), 180, 900, 480)]),
    )
