"""Portraits on vivid walls with a known matte, and detectors of old-background colour the service does not use.

The astronaut (`skimage.data.astronaut()`, public domain) is cut out once with pymatting's closed-form alpha and
multilevel foreground estimate (methods the service does not use, so the reference is not its own output) and pasted
on uniform magenta, lime, orange and cyan walls and a red-and-white striped flag. The true matte and the true person
colours travel with each composite, and `in_output` brings them into an avatar's frame (the service's alignment is
deterministic, so the same detector and template give the same geometry).

Measures (on the delivered avatar, against `reference`, the same request made from the portrait on a grey wall, so
a colour the style or the new background brings anyway, an orange suit or a neon accent, never counts):
- `remnant_share`: share of the frame showing a wall colour (>= 50 % of it) where the person is not (true alpha
  < 0.98).
- `edge_fringe`: share of the silhouette's edge band (true alpha in 0.02..0.98, grown by 2 px) with a wall tint
  (>= 30 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

RGB = tuple[int, int, int]
WALLS: dict[str, tuple[RGB, ...]] = {
    "magenta": ((255, 0, 255),),
    "lime": ((50, 205, 50),),
    "orange": ((255, 140, 0),),
    "cyan": ((0, 255, 255),),
    "flag": ((200, 20, 40), (245, 245, 245)),     # red and white stripes; only the red is a measurable colour
}
GREY: RGB = (128, 128, 128)
STRIPE = 37                                        # stripe height in photo pixels


@dataclass(frozen=True)
class Cutout:
    alpha: np.ndarray          # (H, W) float32 0..1
    foreground: np.ndarray     # (H, W, 3) float32 0..255


@dataclass(frozen=True)
class Composite:
    name: str
    photo: np.ndarray          # (H, W, 3) uint8: the portrait on the wall
    alpha: np.ndarray          # true matte
    foreground: np.ndarray     # true person colours
    colours: tuple[RGB, ...]   # the wall's vivid colours (what must not survive)


@lru_cache(maxsize=1)
def astronaut_cutout() -> Cutout:
    """Closed-form alpha (trimap: the selfie model's mask, 5 px unknown band) and multilevel foreground colours."""
    from pymatting import estimate_alpha_cf, estimate_foreground_ml
    from skimage import data

    from avatar.vision.segmentation import PersonSegmenter
    photo = data.astronaut()
    with PersonSegmenter.load() as segmenter:
        person = (segmenter.confidence(photo) > 0.5).astype(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    trimap = np.full(person.shape, 0.5)
    trimap[cv2.erode(person, disk) > 0] = 1.0
    trimap[cv2.erode(1 - person, disk) > 0] = 0.0
    image = photo.astype(np.float64) / 255.0
    alpha = np.clip(estimate_alpha_cf(image, trimap), 0.0, 1.0)
    alpha[alpha < 0.02] = 0.0
    foreground = estimate_foreground_ml(image, alpha)
    return Cutout(alpha=alpha.astype(np.float32), foreground=(np.clip(foreground, 0, 1) * 255).astype(np.float32))


def wall(name: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 wall: uniform, or horizontal stripes for the flag."""
    colours = np.asarray(WALLS[name] if name in WALLS else (GREY,), np.float32)
    rows = (np.arange(shape[0]) // STRIPE) % len(colours)
    return np.broadcast_to(colours[rows][:, None, :], (*shape, 3)).astype(np.float32)


def composite(name: str) -> Composite:
    """The astronaut on wall `name` (a WALLS key, or "grey" for the reference)."""
    cut = astronaut_cutout()
    a = cut.alpha[..., None]
    photo = np.clip(cut.foreground * a + wall(name, cut.alpha.shape) * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
    return Composite(name=name, photo=photo, alpha=cut.alpha, foreground=cut.foreground,
                     colours=WALLS.get(name, ()))


def in_output(comp: Composite, analyzer, platform: str, size: int, work_size: int = 512
              ) -> tuple[np.ndarray, np.ndarray]:
    """(true alpha, true person colours) in the frame of the avatar the service makes of `comp.photo`."""
    from avatar.catalog.platforms import PLATFORMS
    from avatar.vision.face.align import alignment_matrix
    face = analyzer.detect(comp.photo)[0]
    matrix = alignment_matrix(np.asarray(face.landmarks, np.float64), PLATFORMS[platform].framing, work_size)
    return warp(comp, matrix * (size / float(work_size)), size)


def warp(comp: Composite, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(true alpha, true person colours) through the 2x3 photo -> frame `matrix`, in a `size` square."""
    options = dict(dsize=(size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.warpAffine(comp.alpha, matrix, **options), cv2.warpAffine(comp.foreground, matrix, **options)


# ------------------------------------------------------------------------------------------------ detectors
def _chroma(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return lab[..., 1:]


def wall_coloured(rgb: np.ndarray, colours: tuple[RGB, ...], tint: float = 0.5) -> np.ndarray:
    """Pixels whose Lab chroma is within (1 - tint) of a vivid wall colour's chroma of it: at least `tint` of the
    wall's colour mixed into a grey. Colours with chroma under 30 (white, grey) are not measurable and skipped."""
    chroma = _chroma(rgb)
    out = np.zeros(rgb.shape[:2], bool)
    for colour in colours:
        target = _chroma(np.asarray([[colour]], np.float32))[0, 0]
        strength = float(np.linalg.norm(target))
        if strength < 30:
            continue
        out |= np.linalg.norm(chroma - target, axis=2) < (1.0 - tint) * strength
    return out


def toward_wall(output: np.ndarray, reference: np.ndarray, colours: tuple[RGB, ...], tint: float) -> np.ndarray:
    """Pixels of `output` with at least `tint` of a wall colour that are also nearer that colour (in Lab chroma, by
    15 % of its strength) than the same pixel of `reference` (the same avatar made from the portrait on a grey wall):
    a colour the old wall brought, not one the style or the new background has anyway."""
    out, ref = _chroma(output[..., :3]), _chroma(reference[..., :3])
    found = np.zeros(output.shape[:2], bool)
    for colour in colours:
        target = _chroma(np.asarray([[colour]], np.float32))[0, 0]
        strength = float(np.linalg.norm(target))
        if strength < 30:
            continue
        d_out, d_ref = np.linalg.norm(out - target, axis=2), np.linalg.norm(ref - target, axis=2)
        found |= (d_out < (1.0 - tint) * strength) & (d_out < d_ref - 0.15 * strength)
    return found


def remnant_share(output: np.ndarray, reference: np.ndarray, alpha_true: np.ndarray,
                  colours: tuple[RGB, ...]) -> float:
    """Share of the frame where old-wall colour shows and the person is not (true alpha < 0.98)."""
    return float((toward_wall(output, reference, colours, 0.5) & (alpha_true < 0.98)).mean())


def edge_band(alpha_true: np.ndarray, grow: int = 2) -> np.ndarray:
    band = ((alpha_true > 0.02) & (alpha_true < 0.98)).astype(np.uint8)
    edge = cv2.morphologyEx((alpha_true > 0.5).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    return cv2.dilate(band | edge, np.ones((2 * grow + 1,) * 2, np.uint8)).astype(bool)


def edge_fringe(output: np.ndarray, reference: np.ndarray, alpha_true: np.ndarray,
                colours: tuple[RGB, ...]) -> float:
    """Share of the silhouette's edge band with an old-wall tint (>= 30 %)."""
    band = edge_band(alpha_true)
    return float(toward_wall(output, reference, colours, 0.3)[band].mean()) if band.any() else 0.0
