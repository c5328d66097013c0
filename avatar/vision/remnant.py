"""Old background left in an avatar: the quality gate's background check, from the input crop, the matte and the output.

A pixel counts as old background still showing when
- the matte that composed the output decided it is background (`decided`: the matte's own judgement, handed on by
  BgGenerate; the checked person region of the fast matte, ISNet's figure for the learned one). The check judges with
  that matte instead of segmenting the crop again by colour: a second, colour-only opinion disagreed with the matte on
  surfaces of the wall's colour the matte rightly kept (a silver helmet ring in front of a light grey wall), and,
  sitting near its threshold there, refused a team member whose lighting-matched avatar differed from the same photo's
  by 2/255 while passing the photo alone. Without `decided` every pixel qualifies (the earlier, colour-only check);
- the input crop there has the old background's colours (the colour statistics of the crop's border where the matte
  is background, against the person's: face, hair cap, the body zone and deep interior of the matte;
  `avatar.vision.mask_checks`),
- the matte kept it (alpha > 0.25, so at least a quarter of what the output shows there came from the input), outside
  the face, and
- the output there still has old-background colours: the old background explains its colour better than both the
  person and the new background do (the output where the matte is 0). Colour decontamination of the edge takes them
  away; a wall patch kept as person keeps them, styled or not; an old grey wall behind a new grey backdrop is not
  visible and does not count.

The share of such pixels in the frame is the measurement; above `MAX_REMNANT` (0.3 %) the check fails and the gate
asks for a stricter matte.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from avatar.vision.mask_checks import DEEP, ColourModel, border_samples, log_ratio, person_prior, to_lab

MAX_REMNANT = 0.003
KEPT_ALPHA = 0.25
INPUT_RATIO = float(np.log(8.0))     # the input pixel is old background by at least 8:1
OUTPUT_RATIO = float(np.log(2.0))    # the output pixel still reads as old background (styles shift colours)
SIDE = 256


@dataclass(frozen=True)
class Remnant:
    share: float                    # share of the frame showing old background
    where: np.ndarray               # bool map at the measuring size

    @property
    def passed(self) -> bool:
        return self.share <= MAX_REMNANT


def measure(aligned: np.ndarray, alpha: np.ndarray, output: np.ndarray, landmarks: np.ndarray | None,
            side: int = SIDE, decided: np.ndarray | None = None) -> Remnant:
    """Old background still visible in `output` (any size, same framing as the `aligned` crop and its `alpha`);
    `decided` (bool, any size, same framing): where the matte that composed `output` judged the crop background."""
    scale = side / float(aligned.shape[0])
    crop = cv2.resize(aligned[..., :3], (side, side), interpolation=cv2.INTER_AREA)
    out = cv2.resize(np.ascontiguousarray(output[..., :3]), (side, side), interpolation=cv2.INTER_AREA)
    a = cv2.resize(alpha.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    nothing = Remnant(0.0, np.zeros((side, side), bool))
    background_where = border_samples(a)
    if background_where.mean() < 0.005:
        return nothing
    prior = person_prior((side, side), np.asarray(landmarks, np.float32)[:, :2] * scale) \
        if landmarks is not None and len(landmarks) else None
    person_where = ndimage.distance_transform_edt(a > 0.95) > DEEP * (prior.face_width if prior else 0.1 * side)
    if prior is not None:
        person_where |= (prior.samples & (a > 0.5)) | (prior.body & (a > 0.95))   # face, hair, clothing
    if person_where.sum() < 50:
        return nothing
    lab_in, lab_out = to_lab(crop), to_lab(out)
    background, person = ColourModel.fit(lab_in, background_where), ColourModel.fit(lab_in, person_where)
    typical = background.density(lab_in) > 1.0 / 4096
    seen = (a > KEPT_ALPHA) & typical & (log_ratio(lab_in, background, person) > INPUT_RATIO) \
        & (log_ratio(lab_out, background, person) > OUTPUT_RATIO)
    new_where = a < 0.02
    if new_where.sum() >= 50:
        seen &= log_ratio(lab_out, background, ColourModel.fit(lab_out, new_where)) > OUTPUT_RATIO
    if prior is not None:
        seen &= ~prior.face
    if decided is not None:
        seen &= cv2.resize(decided.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
    return Remnant(float(seen.mean()), seen)
