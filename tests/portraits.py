"""Edges a photographer would look at, measured: the packaged public-domain portraits as taken and on a lit white wall,
and two measures of an avatar made on a solid backdrop.

Portraits: the astronaut (`skimage.data.astronaut()`, NASA) and Grace Hopper (US Navy; ships with matplotlib), both
public domain and short-haired; Hopper wears a dark uniform (shoulders against the wall). Each is cut out once with
pymatting's closed-form alpha on a trimap from the selfie model's mask (as `walls.astronaut_cutout`; methods neither
matte of the service uses), which gives the true alpha of the photo as taken and lets it be pasted on another wall:
`white_wall` is a brightly lit white wall with a chandelier's glowing lights beside the head (the full-length photo
where the fast matte kept a crescent of lit wall along the jaw down to the collar), `curtains` beige stage curtains
(where it left a soft smear above short hair). On these composites the true alpha is exact by construction.

Measures, on the delivered avatar with `background: solid` (the backdrop colour is known exactly):
- `ring_share`: share of the ring 8-40 px outside the person whose colour is more than 6 (CIE76) from the backdrop:
  smears above the hair, streaks off the shoulders. On composites the person is where the true alpha exceeds 0.05
  (any trace of the person: the reference's own soft edges, a half-transparent helmet rim, count as person); on the
  photos as taken the reference cut-out is not good enough (drawn from the selfie model's mask, it misses the top of the
  astronaut's helmet ring, which a good matte keeps), so there the avatar itself is segmented (`segment`: ISNet at
  1024 px on the delivered PNG; it takes a smear attached to the person for part of it, so it understates smears).
- `jaw_wall_share`: share of the true wall between the jaw and the collar (beside the neck, from a third of a face
  height above the chin to 0.6 below it, within 1.6 face widths of the centre) that is not backdrop in the avatar:
  old wall kept inside the silhouette, where a ring outside it cannot see it.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

import walls

NAMES = ("astronaut", "hopper")
DELTA_E = 6.0


def photo(name: str) -> np.ndarray:
    if name == "astronaut":
        from skimage import data
        return data.astronaut()
    if name == "hopper":
        from matplotlib import cbook
        from PIL import Image
        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.array(Image.open(fh).convert("RGB"))
    raise KeyError(name)


@lru_cache(maxsize=4)
def cutout(name: str) -> walls.Cutout:
    """The portrait's reference alpha and person colours (closed-form alpha, multilevel foreground)."""
    if name == "astronaut":
        return walls.astronaut_cutout()
    from pymatting import estimate_alpha_cf, estimate_foreground_ml

    from avatar.vision.segmentation import PersonSegmenter
    image = photo(name)
    with PersonSegmenter.load() as segmenter:
        person = (segmenter.confidence(image) > 0.5).astype(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    trimap = np.full(person.shape, 0.5)
    trimap[cv2.erode(person, disk) > 0] = 1.0
    trimap[cv2.erode(1 - person, disk) > 0] = 0.0
    rgb = image.astype(np.float64) / 255.0
    alpha = np.clip(estimate_alpha_cf(rgb, trimap), 0.0, 1.0)
    alpha[alpha < 0.02] = 0.0
    foreground = estimate_foreground_ml(rgb, alpha)
    return walls.Cutout(alpha=alpha.astype(np.float32), foreground=(np.clip(foreground, 0, 1) * 255).astype(np.float32))


def white_wall(shape: tuple[int, int], seed: int = 7) -> np.ndarray:
    """A white wall lit from above (235 -> 252 towards the top) with a chandelier: clusters of warm, glowing lights in
    the upper corners beside the head."""
    h, w = shape
    rows = np.linspace(252.0, 232.0, h, dtype=np.float32)[:, None, None]
    wall = np.broadcast_to(rows * np.array([1.0, 0.995, 0.98], np.float32), (h, w, 3)).copy()
    rng = np.random.default_rng(seed)
    lights = np.zeros((h, w), np.float32)
    for cx in (0.12 * w, 0.88 * w):
        for _ in range(7):
            x, y = cx + rng.normal(0, 0.05 * w), 0.12 * h + rng.normal(0, 0.05 * h)
            cv2.circle(lights, (int(x), int(y)), max(2, int(0.012 * w)), 1.0, -1, cv2.LINE_AA)
    glow = cv2.GaussianBlur(lights, (0, 0), 0.03 * w) * 6.0 + lights
    warm = np.array([255.0, 236.0, 190.0], np.float32)
    return np.clip(wall + glow[..., None] * (warm - wall) * 0.9, 0, 255)


def curtains(shape: tuple[int, int]) -> np.ndarray:
    """Beige stage curtains: vertical folds (light crests, dark troughs) of uneven width, lit from the top left."""
    h, w = shape
    x = np.arange(w, dtype=np.float32)
    phase = 2 * np.pi * x / (0.09 * w) + 1.5 * np.sin(2 * np.pi * x / (0.37 * w))
    folds = 0.5 + 0.5 * np.sin(phase)
    light = np.linspace(1.0, 0.8, h, dtype=np.float32)[:, None] * np.linspace(1.0, 0.85, w, dtype=np.float32)[None]
    base = np.array([196.0, 178.0, 150.0], np.float32)
    shade = (0.62 + 0.38 * folds[None, :]) * light
    return np.clip(base * shade[..., None], 0, 255)


BACKDROPS = {"white_wall": white_wall, "curtains": curtains}


def pasted(name: str, backdrop: str) -> walls.Composite:
    """The portrait's reference cut-out on `backdrop` (a BACKDROPS key): the true alpha is exact by construction."""
    cut = cutout(name)
    a = cut.alpha[..., None]
    wall = BACKDROPS[backdrop](cut.alpha.shape)
    image = np.clip(cut.foreground * a + wall * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
    return walls.Composite(name=f"{name}_{backdrop}", photo=image, alpha=cut.alpha, foreground=cut.foreground,
                           colours=())


def on_white_wall(name: str) -> walls.Composite:
    return pasted(name, "white_wall")


def as_taken(name: str) -> walls.Composite:
    cut = cutout(name)
    return walls.Composite(name=name, photo=photo(name), alpha=cut.alpha, foreground=cut.foreground, colours=())


def frame(comp: walls.Composite, analyzer, platform: str, size: int, work_size: int = 512
          ) -> tuple[np.ndarray, np.ndarray]:
    """(true alpha, 468 landmarks) in the frame of the avatar the service makes of `comp.photo`."""
    from avatar.catalog.platforms import PLATFORMS
    from avatar.vision.face.align import alignment_matrix
    face = analyzer.detect(comp.photo)[0]
    matrix = alignment_matrix(np.asarray(face.landmarks, np.float64), PLATFORMS[platform].framing, work_size)
    matrix = matrix * (size / float(work_size))
    alpha, _ = walls.warp(comp, matrix, size)
    return alpha, np.asarray(face.landmarks, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def off_backdrop(output: np.ndarray, backdrop: tuple[int, int, int]) -> np.ndarray:
    """Pixels more than `DELTA_E` (CIE76) from the backdrop colour."""
    def lab(rgb: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(np.asarray(rgb, np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    target = lab(np.asarray([[backdrop]], np.float32))[0, 0]
    return np.linalg.norm(lab(output[..., :3]) - target, axis=2) > DELTA_E


def ring(person: np.ndarray, inner: int = 8, outer: int = 40) -> np.ndarray:
    """The band `inner`..`outer` px outside `person` (bool), away from the frame's edge."""
    outside = (~person).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
    band = (dist > inner) & (dist <= outer)
    band[:2], band[-2:], band[:, :2], band[:, -2:] = False, False, False, False
    return band


def segment(output: np.ndarray, net=None) -> np.ndarray:
    """The person in a delivered avatar (bool): ISNet at 1024 px on the avatar, kept to the largest region."""
    from scipy import ndimage

    net = net or _isnet()
    alpha = cv2.resize(net.alpha(output, 1024), output.shape[1::-1], interpolation=cv2.INTER_AREA)
    labels, count = ndimage.label(alpha > 0.5)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


@lru_cache(maxsize=1)
def _isnet():
    from avatar.vision.isnet import IsNet
    return IsNet.load()


def ring_share(output: np.ndarray, backdrop: tuple[int, int, int], person: np.ndarray) -> float:
    """`person`: bool mask of the person in `output` (`segment`)."""
    band = ring(person)
    return float(off_backdrop(output, backdrop)[band].mean()) if band.any() else 0.0


def jaw_region(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, np.float64)
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    fw, fh, cx = x1 - x0, y1 - y0, (x0 + x1) / 2.0
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy > y1 - fh / 3.0) & (yy < y1 + 0.6 * fh) & (np.abs(xx - cx) < 1.6 * fw)


def jaw_wall_share(output: np.ndarray, backdrop: tuple[int, int, int], alpha_true: np.ndarray,
                   landmarks: np.ndarray) -> float:
    wall = jaw_region(output.shape[:2], landmarks) & (alpha_true < 0.02)
    return float(off_backdrop(output, backdrop)[wall].mean()) if wall.any() else 0.0
