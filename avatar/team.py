"""One team look: every avatar of a batch as if from one studio session, and the numbers that show it.

What a batch already shares: the platform's framing (the aligned crop puts the eye line at the same height and the
eyes the same distance apart), one style, palette and background (the background is drawn from those choices alone,
so it is the same picture behind everyone). What differs between members' photos is the light they were taken in;
`lighting_gains` estimates it from the whole photo and `apply_gains` takes it out of the aligned face crop before
anything is rendered:

- white balance: the illuminant's colour by shades-of-grey (the Minkowski p=6 mean of each channel, a standard
  colour-constancy estimator that is robust to a large uniformly coloured area), neutralised by a von Kries
  (per-channel) gain in linear light;
- exposure: the scene's log-average luminance (Reinhard's "key") brought to one target for the whole batch.

Both are measured on the whole photo, not on the face, on purpose: the aim is to equalise the *light*, not people's
skin tones, which a face-driven correction would pull towards one value. Gains are clamped (at most one stop of
exposure, at most 1.6x per channel) so a photo of a red wall is not turned cyan.

`look_metrics` and `spread` measure a set of outputs: eye-line height, face width, mean background colour, and the
face region's luminance and colour (CIELAB), as used by the tests and `bench/team_look.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TARGET_FACE_Y = 0.36        # linear luminance (about L* 66) the batch's faces are exposed towards
EXPOSURE_STRENGTH = 0.75    # share of the log-exposure difference corrected (1.0 would flatten skin tones)
MAX_EXPOSURE_GAIN = 2.0     # one stop each way
MAX_CHANNEL_GAIN = 1.6      # white balance, per channel relative to the mean
MINKOWSKI_P = 6.0

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 -> linear float32 0..1."""
    x = rgb.astype(np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def to_srgb(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear, 0.0, 1.0)
    return np.clip(np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055) * 255 + 0.5, 0,
                   255).astype(np.uint8)


@dataclass(frozen=True)
class Gains:
    """Per-channel linear-light multipliers (white balance x exposure) and the two parts, for reporting."""

    rgb: tuple[float, float, float]
    exposure: float
    white_balance: tuple[float, float, float]


def lighting_gains(crop: np.ndarray, landmarks: np.ndarray, target_y: float = TARGET_FACE_Y,
                   strength: float = EXPOSURE_STRENGTH) -> Gains:
    """The gains that bring the aligned `crop`'s light to neutral white and the batch's exposure."""
    from avatar.vision.face_regions import FACE_OVAL, polygon_mask
    lin = to_linear(crop)
    flat = lin.reshape(-1, 3)
    usable = flat[(flat.max(axis=1) < 0.98) & (flat.max(axis=1) > 0.01)]   # clipped and black pixels: no colour
    face = polygon_mask(crop.shape[:2], landmarks, (FACE_OVAL,)) > 0.5
    if len(usable) < 64 or face.sum() < 64:
        return Gains((1.0, 1.0, 1.0), 1.0, (1.0, 1.0, 1.0))
    illum = np.power(np.mean(np.power(usable, MINKOWSKI_P), axis=0), 1.0 / MINKOWSKI_P)
    wb = np.clip(illum.mean() / np.maximum(illum, 1e-6), 1 / MAX_CHANNEL_GAIN, MAX_CHANNEL_GAIN)
    face_y = float(np.exp(np.mean(np.log((lin[face] * wb) @ _LUMA + 1e-4))))
    exposure = float(np.clip((target_y / max(face_y, 1e-6)) ** strength, 1 / MAX_EXPOSURE_GAIN, MAX_EXPOSURE_GAIN))
    total = wb * exposure
    return Gains(tuple(float(v) for v in total), exposure, tuple(float(v) for v in wb))  # type: ignore[arg-type]


def apply_gains(rgb: np.ndarray, gains: Gains) -> np.ndarray:
    """`rgb` with the gains applied in linear light; highlights roll off instead of clipping hard."""
    lin = to_linear(rgb) * np.asarray(gains.rgb, np.float32)
    lin = np.where(lin > 0.8, 0.8 + 0.2 * np.tanh((lin - 0.8) / 0.2), lin)   # soft shoulder above 0.8
    return to_srgb(lin)


def match_lighting(crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The aligned face `crop` under the batch's light (its 468 `landmarks` in crop pixels)."""
    return apply_gains(crop, lighting_gains(crop, landmarks))


def _downscale(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    s = side / float(max(h, w))
    return cv2.resize(rgb, (max(int(w * s), 1), max(int(h * s), 1)), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- measuring a team's look
@dataclass(frozen=True)
class Look:
    """One avatar's look, in shares of the image side and CIELAB (L* 0..100)."""

    eye_y: float                           # eye line height
    face_width: float                      # face oval width
    background: tuple[float, float, float]  # mean L*a*b* of the top corners (background in every framing)
    face_lightness: float                  # mean L* inside the face oval
    face_colour: tuple[float, float]       # mean a*, b* inside the face oval


def look_metrics(image: np.ndarray, landmarks: np.ndarray) -> Look:
    """`image` (an avatar, RGB uint8) with its 468 face landmarks in its own pixels."""
    from avatar.vision.face_regions import FACE_OVAL, LEFT_EYE, RIGHT_EYE, face_scale, polygon_mask
    side = float(image.shape[0])
    eyes = np.concatenate([landmarks[list(LEFT_EYE)], landmarks[list(RIGHT_EYE)]])
    lab = _lab(image)
    face = polygon_mask(image.shape[:2], landmarks, (FACE_OVAL,)) > 0.5
    c = max(int(side * 0.12), 1)
    corners = np.concatenate([lab[:c, :c].reshape(-1, 3), lab[:c, -c:].reshape(-1, 3)])
    skin = lab[face]
    return Look(eye_y=float(eyes[:, 1].mean() / side), face_width=face_scale(landmarks) / side,
                background=tuple(float(v) for v in corners.mean(axis=0)),  # type: ignore[arg-type]
                face_lightness=float(skin[:, 0].mean()),
                face_colour=(float(skin[:, 1].mean()), float(skin[:, 2].mean())))


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB with L* in 0..100 and a*, b* signed (OpenCV's float conversion of 0..1 RGB)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def spread(looks: list[Look]) -> dict[str, float]:
    """How far a batch's avatars are from looking alike: the range (max - min) of eye-line height and face width
    (shares of the side), the mean distance to the batch mean of the background colour and the face colour (CIELAB
    Delta E, a*b* only for the face), and the range of face lightness (L*)."""
    def rng(values: list[float]) -> float:
        return float(max(values) - min(values)) if values else 0.0

    def delta_e(vectors: list[tuple[float, ...]]) -> float:
        arr = np.asarray(vectors, np.float64)
        return float(np.linalg.norm(arr - arr.mean(axis=0), axis=1).mean()) if len(arr) else 0.0

    return {"eye_y_range": rng([lk.eye_y for lk in looks]),
            "face_width_range": rng([lk.face_width for lk in looks]),
            "background_delta_e": delta_e([lk.background for lk in looks]),
            "face_lightness_range": rng([lk.face_lightness for lk in looks]),
            "face_colour_delta_e": delta_e([lk.face_colour for lk in looks])}


def relit(rgb: np.ndarray, exposure: float = 1.0, cast: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """`rgb` as if taken under other light: a linear-light exposure change and a per-channel colour cast (the
    test and benchmark inputs of team matching)."""
    return to_srgb(to_linear(rgb) * exposure * np.asarray(cast, np.float32))
