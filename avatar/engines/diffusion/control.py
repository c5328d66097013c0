"""ControlNet conditioning images drawn from the aligned crop: a face-mesh sketch from the 468 landmarks, or edges.

The sketch keeps the geometry that carries identity (face outline, eyes, brows, nose, lips) while leaving texture and
colour free for the style. Contours use MediaPipe face-mesh indices, drawn in per-part colours the way the public
MediaPipe-face ControlNets were trained (white on black also works for line-art ControlNets).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109, 10)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185, 61)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191, 78)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246, 33)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466, 263)
RIGHT_BROW = ((46, 53, 52, 65, 55), (70, 63, 105, 66, 107))
LEFT_BROW = ((276, 283, 282, 295, 285), (300, 293, 334, 296, 336))
NOSE = ((168, 6, 197, 195, 5, 4, 1, 19, 94, 2), (98, 97, 2, 326, 327), (64, 48, 115, 220, 45, 4, 275, 440, 344, 278, 294))

# (polylines, RGB) per face part
PARTS: tuple[tuple[tuple[tuple[int, ...], ...], tuple[int, int, int]], ...] = (
    ((FACE_OVAL,), (255, 255, 255)),
    ((RIGHT_EYE,), (255, 48, 48)), ((LEFT_EYE,), (48, 255, 48)),
    (RIGHT_BROW, (255, 48, 255)), (LEFT_BROW, (48, 255, 255)),
    (NOSE, (255, 255, 48)),
    ((LIPS_OUTER, LIPS_INNER), (48, 48, 255)),
)


def landmark_sketch(landmarks: np.ndarray, size: int | tuple[int, int], *, colour: bool = True,
                    width: int | None = None) -> Image.Image:
    """An RGB sketch of the face-mesh contours, `size` pixels, from (468, 2) landmarks in the same pixel frame."""
    w, h = (size, size) if isinstance(size, int) else size
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 468 or pts.shape[1] < 2:
        raise ValueError(f"expected (468, 2) face-mesh landmarks, got shape {pts.shape}")
    line = width or max(1, round(min(w, h) / 256))
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    for polylines, rgb in PARTS:
        for poly in polylines:
            draw.line([(float(pts[i, 0]), float(pts[i, 1])) for i in poly], fill=rgb if colour else (255, 255, 255),
                      width=line, joint="curve")
    return canvas


def edge_map(image: np.ndarray, *, keep: float = 0.12) -> Image.Image:
    """A white-on-black edge map (Sobel magnitude, strongest `keep` share of pixels), usable with canny ControlNets."""
    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    padded = np.pad(grey, 1, mode="edge")
    gx = (padded[1:-1, 2:] - padded[1:-1, :-2]) * 2 + padded[:-2, 2:] - padded[:-2, :-2] + padded[2:, 2:] - padded[2:, :-2]
    gy = (padded[2:, 1:-1] - padded[:-2, 1:-1]) * 2 + padded[2:, :-2] - padded[:-2, :-2] + padded[2:, 2:] - padded[:-2, 2:]
    mag = np.hypot(gx, gy)
    threshold = np.quantile(mag, 1.0 - keep) if mag.max() > 0 else np.inf
    edges = np.where(mag >= max(threshold, 1e-6), 255, 0).astype(np.uint8)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2))


def conditioning_image(source: str, image: np.ndarray, landmarks: np.ndarray | None, size: int) -> Image.Image:
    """The ControlNet input for `source` ('landmarks' or 'edges') at `size` x `size`.

    Falls back to edges when landmarks are missing, so a request without a mesh still keeps its structure.
    """
    h, w = image.shape[:2]
    if source == "landmarks" and landmarks is not None and len(landmarks) >= 468:
        scaled = np.asarray(landmarks, dtype=np.float64)[:, :2] * (size / w, size / h)
        return landmark_sketch(scaled, size)
    return edge_map(np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)))
