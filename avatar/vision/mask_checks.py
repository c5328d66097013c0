"""Consistency checks on the coarse person mask, with the face as a prior, so a wall never becomes "person".

The selfie segmentation model keeps patches of a saturated wall as person (a magenta wall: ~4 % of the aligned crop,
confidence 1.0 on most of those pixels, so its confidence cannot tell them apart). Two checks the model does not make:

- shape: the person is one head-and-shoulders figure around the detected face. Mask pixels outside a generous head
  ellipse and body zone drawn from the landmarks, and mask islands not connected to the face, are background.
- colour: regions kept as person, attached to the mask's outside or enclosed by it (a gap between hair and neck),
  whose colours the frame's border (where the background is) explains better than the person does (the face, the hair just above it, the torso and the mask's
  deep interior) are background. A likelihood ratio, not a colour match: clothing of the wall's colour that makes up
  much of the body keeps a low ratio and stays; a wall patch is a small share of the person's pixels and does not.

All maps here are at the matting solve size (256 px): the histograms and distance transforms cost a few ms there.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

_SHIFT = 4                      # Lab uint8 >> 4: 16 bins per channel
_BINS = 256 >> _SHIFT
_EPS = 1e-5


@dataclass(frozen=True)
class Strictness:
    """How readily colour evidence turns mask pixels into background (level 0 default, higher on retries)."""

    log_ratio: float            # background-vs-person log likelihood ratio above which a colour is background-like
    band: float                 # unknown band half-width for matting, share of the face width


STRICTNESS: tuple[Strictness, ...] = (
    Strictness(log_ratio=float(np.log(4.0)), band=0.06),
    Strictness(log_ratio=float(np.log(2.0)), band=0.1),
    Strictness(log_ratio=float(np.log(1.25)), band=0.14),
)
DEEP = 0.25                     # mask pixels this far (face widths) from its edge are person colours (clothing)


def strictness(level: int) -> Strictness:
    return STRICTNESS[int(np.clip(level, 0, len(STRICTNESS) - 1))]


# ------------------------------------------------------------------------------------------------ colour statistics
class ColourModel:
    """A smoothed 16x16x16 Lab histogram of some pixels: how typical a colour is of them (a density, sums to 1)."""

    def __init__(self, hist: np.ndarray, samples: int) -> None:
        self.hist = hist
        self.samples = samples

    @classmethod
    def fit(cls, lab: np.ndarray, where: np.ndarray) -> "ColourModel":
        idx = (lab[where] >> _SHIFT).astype(np.intp)
        hist = np.zeros((_BINS,) * 3, np.float32)
        np.add.at(hist, (idx[:, 0], idx[:, 1], idx[:, 2]), 1.0)
        hist = ndimage.gaussian_filter(hist, 0.8, mode="constant")
        return cls(hist / max(float(hist.sum()), 1.0), int(len(idx)))

    def density(self, lab: np.ndarray) -> np.ndarray:
        idx = (lab >> _SHIFT).astype(np.intp)
        return self.hist[idx[..., 0], idx[..., 1], idx[..., 2]]


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 Lab (OpenCV's 8-bit scaling)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), cv2.COLOR_RGB2LAB)


def log_ratio(lab: np.ndarray, background: ColourModel, person: ColourModel) -> np.ndarray:
    """log p(colour | background) - log p(colour | person) per pixel."""
    return np.log(background.density(lab) + _EPS) - np.log(person.density(lab) + _EPS)


# ------------------------------------------------------------------------------------------------ face prior
@dataclass(frozen=True)
class PersonPrior:
    """Boolean maps drawn from the face landmarks: where a person can be, and where they surely are."""

    allowed: np.ndarray         # generous head ellipse + body zone below the chin
    body: np.ndarray            # the body zone: from the mouth down, widening (collars, shoulders)
    face: np.ndarray            # the landmarks' convex hull, eroded (the hull reaches past the jaw under the ears)
    samples: np.ndarray         # face (eroded), a hair cap above the forehead, the neck and the upper torso
    face_width: float
    face_height: float
    centre_x: float
    chin_y: float


def person_prior(shape: tuple[int, int], landmarks: np.ndarray) -> PersonPrior:
    """A head ellipse two face widths wide reaching 0.7 face heights above the forehead, and from the mouth down a body
    zone two face widths wide that widens 3 px per px down (collars, shoulders). Generous on purpose: it only rules out
    what no head-and-shoulders shot contains (wall beside and above the head)."""
    h, w = shape
    lm = np.asarray(landmarks, np.float32)[:, :2]
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    fw, fh = max(float(x1 - x0), 1.0), max(float(y1 - y0), 1.0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    head = ((xx - cx) / fw) ** 2 + ((yy - (cy - 0.2 * fh)) / fh) ** 2 <= 1.0
    top = cy + 0.1 * fh
    body = (yy > top) & (np.abs(xx - cx) < fw + 3.0 * (yy - top))
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(lm).astype(np.int32)), 1)
    k = max(1, int(round(0.08 * fw)))
    face = cv2.erode(hull, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))).astype(bool)
    cap = (yy > y0 - 0.25 * fh) & (yy < y0 + 0.05 * fh) & (np.abs(xx - cx) < 0.45 * fw) & ~hull.astype(bool)
    torso = ((yy > y1 + 0.3 * fh) & (np.abs(xx - cx) < 0.6 * fw)) | ((yy > y1) & (np.abs(xx - cx) < 0.25 * fw))
    return PersonPrior(allowed=head | body, body=body, face=face, samples=face | cap | torso, face_width=fw,
                       face_height=fh, centre_x=float(cx), chin_y=float(y1))


# ------------------------------------------------------------------------------------------------ the check
@dataclass(frozen=True)
class MaskCheck:
    """The checked person mask and the evidence behind it (all at the size the check ran at)."""

    person: np.ndarray          # bool: person after the checks
    prior: PersonPrior | None
    background_like: np.ndarray  # bool: colours typical of the border and not of the person
    removed: float              # share of the frame the checks took away from the coarse mask


def border_samples(conf: np.ndarray, ring: float = 0.06) -> np.ndarray:
    """Background pixels to learn the background's colours from: the frame's border ring where the mask says
    background, else (a person filling the border) every confident background pixel."""
    h, w = conf.shape
    b = max(2, int(round(ring * max(h, w))))
    edge = np.zeros((h, w), bool)
    edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
    where = edge & (conf < 0.3)
    return where if where.mean() >= 0.01 else conf < 0.1


def check_mask(rgb: np.ndarray, conf: np.ndarray, landmarks: np.ndarray | None, level: int = 0) -> MaskCheck:
    """Apply the shape and colour checks to a coarse confidence map (`conf`, same size as `rgb`)."""
    rule = strictness(level)
    person0 = conf > 0.5
    lab = to_lab(rgb)
    prior = person_prior(conf.shape, landmarks) if landmarks is not None and len(landmarks) else None
    person = person0 & prior.allowed if prior is not None else person0.copy()
    bg_like = _background_like(lab, conf, person0, prior, rule)
    if bg_like is not None:
        fw = prior.face_width if prior is not None else 0.1 * max(conf.shape)
        person &= ~_background_regions(bg_like & person & ~(prior.face if prior is not None else False), person, fw,
                                       prior)
    else:
        bg_like = np.zeros_like(person0)
    person = _connected_to_face(person, prior)
    removed = float((person0 & ~person).mean())
    return MaskCheck(person=person, prior=prior, background_like=bg_like, removed=removed)


def _background_like(lab: np.ndarray, conf: np.ndarray, person0: np.ndarray, prior: PersonPrior | None,
                     rule: Strictness) -> np.ndarray | None:
    """Pixels whose colour the border's background explains better (by `rule.log_ratio`) than the person's colours
    (face, hair cap, torso and the mask's deep interior), and that are common in the background at all."""
    bg_where = border_samples(conf)
    if bg_where.mean() < 0.005:
        return None                                   # no background visible: nothing to compare with
    fw = prior.face_width if prior is not None else 0.1 * max(conf.shape)
    seeds = ndimage.distance_transform_edt(person0) > DEEP * fw
    if prior is not None:
        seeds |= prior.samples & person0
    if seeds.sum() < 50:
        return None
    background = ColourModel.fit(lab, bg_where)
    typical = background.density(lab) > 1.0 / _BINS ** 3     # at least as common as a uniform spread
    return (log_ratio(lab, background, ColourModel.fit(lab, seeds)) > rule.log_ratio) & typical


def _background_regions(candidates: np.ndarray, person: np.ndarray, face_width: float,
                        prior: PersonPrior | None = None) -> np.ndarray:
    """The candidate regions that touch the mask's outside (background attached to the person), or that are large
    enough (a tenth of a face width across) to be background seen through a gap rather than a detail of clothing.

    An enclosed region counts as a gap only beside the neck, between hair and shoulders: enclosed regions under the
    chin or lower in the torso are shadows and dark clothing (a chin shadow on a dark backdrop matches the border's
    colours, yet it is the person)."""
    labels, count = ndimage.label(candidates)
    if count == 0:
        return np.zeros_like(candidates)
    outside = ndimage.binary_dilation(~person, iterations=1)
    chosen = np.bincount(labels.ravel(), minlength=count + 1) >= (0.1 * face_width) ** 2
    if prior is not None and count:
        centres = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, np.arange(1, count + 1)))
        beside_neck = (centres[:, 0] < prior.chin_y + 0.3 * prior.face_height) & \
            (np.abs(centres[:, 1] - prior.centre_x) > 0.3 * prior.face_width)
        chosen[1:] &= beside_neck
    chosen[np.unique(labels[outside & candidates])] = True
    chosen[0] = False
    return chosen[labels]


def _connected_to_face(person: np.ndarray, prior: PersonPrior | None) -> np.ndarray:
    """Only mask regions connected to the face (or, without a face, the largest region) are the person."""
    labels, count = ndimage.label(person)
    if count <= 1:
        return person
    if prior is not None:
        ids = np.unique(labels[prior.face & person])
        ids = ids[ids > 0]
        if len(ids):
            return np.isin(labels, ids)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())
