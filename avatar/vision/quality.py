"""Input quality: is this photo a good source for an avatar? One 0..1 score plus the reasons it is not.

Each factor is measured on the dominant face, the part of the photo that ends up in the avatar:
- sharpness: variance of the Laplacian of the face's luminance (divided by its mean, so lighting does not count as
  detail), at the face's native size capped at 160 px wide, mapped to 0..1;
- exposure: mean face luminance against a comfortable band, minus the share of clipped pixels;
- face coverage: face box width / the photo's shorter side (the service requires >= 0.15);
- head angle: how far the face turns from the camera (yaw and pitch; roll is undone by alignment).
The score is a weighted geometric mean, so one bad factor pulls it down however good the others are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from avatar.vision.face.pose import off_axis_angle
from avatar.types import DetectedFace, Warning

MIN_COVERAGE = 0.15
SHARPNESS_SCALE = 0.008        # normalised Laplacian variance at which sharpness reaches 1 - 1/e
BLURRY_BELOW = 0.3
DARK_MEAN, BRIGHT_MEAN = 0.22, 0.82
DARK_CLIP, BRIGHT_CLIP = 0.25, 0.10
MAX_HEAD_ANGLE = 45.0
ANALYSIS_WIDTH = 160
WEIGHTS = {"sharpness": 0.35, "exposure": 0.25, "coverage": 0.2, "angle": 0.2}


@dataclass
class QualityReport:
    """The input score (0..1, 0 without a face) and its parts; `warnings` say what the user could improve."""

    score: float
    sharpness: float        # 0..1
    exposure: float         # 0..1
    face_coverage: float    # face box width / shorter side
    head_angle: float       # degrees off the camera axis
    warnings: list[Warning] = field(default_factory=list)


def _gray_region(rgb: np.ndarray, box: tuple[float, float, float, float], inset: float = 0.0) -> np.ndarray:
    """Luminance of `box` (shrunk by `inset` of its size on each side), clipped to the photo."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * inset, (y1 - y0) * inset
    xa, ya = max(0, int(x0 + dx)), max(0, int(y0 + dy))
    xb, yb = min(w, int(math.ceil(x1 - dx))), min(h, int(math.ceil(y1 - dy)))
    if xb - xa < 3 or yb - ya < 3:
        xa, ya, xb, yb = 0, 0, w, h
    return cv2.cvtColor(np.ascontiguousarray(rgb[ya:yb, xa:xb, :3]), cv2.COLOR_RGB2GRAY)


def sharpness_of(gray: np.ndarray) -> float:
    """0..1 detail score: Laplacian variance of the mean-normalised patch, never upsampled (that invents blur)."""
    if gray.shape[1] > ANALYSIS_WIDTH:
        height = max(3, round(gray.shape[0] * ANALYSIS_WIDTH / gray.shape[1]))
        gray = cv2.resize(gray, (ANALYSIS_WIDTH, height), interpolation=cv2.INTER_AREA)
    norm = gray.astype(np.float32) / np.float32(max(float(gray.mean()), 20.0))
    variance = float(cv2.Laplacian(norm, cv2.CV_32F).var())
    return 1.0 - math.exp(-variance / SHARPNESS_SCALE)


def exposure_of(gray: np.ndarray) -> tuple[float, float, float, float]:
    """(0..1 exposure score, mean luminance 0..1, dark-clipped share, bright-clipped share)."""
    mean = float(gray.mean()) / 255.0
    dark, bright = float((gray <= 8).mean()), float((gray >= 247).mean())
    if mean < 0.35:
        band = max(0.0, (mean - 0.08) / (0.35 - 0.08))
    elif mean > 0.72:
        band = max(0.0, (0.95 - mean) / (0.95 - 0.72))
    else:
        band = 1.0
    return max(0.0, band - 1.5 * (dark + bright)), mean, dark, bright


def _coverage_score(coverage: float) -> float:
    return float(np.clip((coverage - 0.05) / (0.30 - 0.05), 0.0, 1.0))


def _angle_score(angle: float) -> float:
    return float(np.clip(1.0 - (angle - 10.0) / 50.0, 0.0, 1.0))


def _combine(parts: dict[str, float]) -> float:
    """Weighted geometric mean with a small floor, so a zero factor yields a low score rather than exactly 0."""
    total = sum(WEIGHTS.values())
    return float(math.exp(sum(WEIGHTS[k] * math.log(max(v, 0.02)) for k, v in parts.items()) / total))


def _warnings(sharp: float, mean: float, dark: float, bright: float, coverage: float, angle: float) -> list[Warning]:
    out = []
    if sharp < BLURRY_BELOW:
        out.append(Warning("blurry_input", "the face looks blurry or low-resolution; a sharper photo gives a better "
                                           "likeness"))
    if mean < DARK_MEAN or dark > DARK_CLIP:
        out.append(Warning("underexposed", "the face is too dark; use a brighter photo"))
    if mean > BRIGHT_MEAN or bright > BRIGHT_CLIP:
        out.append(Warning("overexposed", "the face is washed out by bright light; use a photo with softer light"))
    if coverage < MIN_COVERAGE:
        out.append(Warning("face_too_small", f"the face covers {coverage:.0%} of the frame's shorter side; "
                                             f"at least {MIN_COVERAGE:.0%} is needed"))
    if angle > MAX_HEAD_ANGLE:
        out.append(Warning("head_angle", f"the head is turned {angle:.0f} degrees from the camera; "
                                         "a photo facing the camera works best"))
    return out


def assess_input(rgb: np.ndarray, face: DetectedFace | None) -> QualityReport:
    """Score the photo as an avatar source around `face` (the dominant face), or report `no_face` when None."""
    h, w = rgb.shape[:2]
    if face is None:
        gray = _gray_region(rgb, (0.0, 0.0, float(w), float(h)))
        return QualityReport(score=0.0, sharpness=sharpness_of(gray), exposure=exposure_of(gray)[0],
                             face_coverage=0.0, head_angle=0.0,
                             warnings=[Warning("no_face", "no face was found in the photo")])
    sharp = sharpness_of(_gray_region(rgb, face.box))
    expo, mean, dark, bright = exposure_of(_gray_region(rgb, face.box, inset=0.2))
    coverage = face.coverage(w, h)
    angle = off_axis_angle(face.yaw, face.pitch)
    parts = {"sharpness": sharp, "exposure": expo, "coverage": _coverage_score(coverage), "angle": _angle_score(angle)}
    return QualityReport(score=_combine(parts), sharpness=sharp, exposure=expo, face_coverage=coverage,
                         head_angle=angle, warnings=_warnings(sharp, mean, dark, bright, coverage, angle))
