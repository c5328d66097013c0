"""The quality gate: does an output still show the requester's face, look like them, and stay safe for work?

Platforms decide from the result whether to auto-accept, review or fall back, and pay only for outputs that pass, so
each check is measured, reported with its value, and documented (docs/likeness.md):

- face_present: the face detector finds a face where the aligned geometry put it: the bounding box of the found
  face's 468-point mesh overlaps `expected_box` (the same kind of box, from the input's mesh) by IoU >= 0.6
  (measured on avatars of three photos, three styles, two framings and two intensities: 0.89-0.99; a face scrambled
  into 4x4 blocks that the detector still fired on: 0.46). A detection without a mesh falls back to its own box
  (IoU >= 0.4; detector boxes are tighter than mesh boxes: 0.70-0.90 on the same avatars). Stylised outputs (anime)
  can defeat a photo detector, so for styles that are not photo-real (the catalogue's flag) the
  gate also accepts the face when its structure survived: the edge map of the output's face region correlates
  >= 0.5 with the unstyled aligned face's (measured: styles at full intensity 0.70-0.99; heavy blur 0.43; scrambled
  face blocks 0.05; another person's face 0.14). Without a reference crop the fallback is the identity model's
  accept line.
- likeness: calibrated likeness (avatar.vision.calibration) of the output's face vs the input's, at least the platform's
  minimum (tier default: professional 0.85, social 0.75, gaming 0.60; per-platform overrides).
- background (when the flow passes the input crop and its matte): old background still visible in the output covers
  at most `max_background_remnant` of the frame (0.3 %; `avatar.vision.remnant`), judged with the matte that composed
  the output: what that matte decided is background must not show. A failure asks the retry for a stricter matte.
- content_safety: open_nsfw P(nsfw) below `nsfw_threshold` (0.2: Yahoo's guidance reads < 0.2 as safe; portraits
  score 0.002-0.03, so the margin is wide, and a false pass costs far more on a profile picture than a retry).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from avatar.vision.calibration import likeness_from_distance
from avatar.catalog.platforms import PLATFORMS, TIER_LIKENESS_MIN
from avatar.catalog.styles import is_photoreal
from avatar.types import Box, DetectedFace, Warning

DETECTOR_MIN_IOU = 0.4
MESH_MIN_IOU = 0.6
STRUCTURE_MIN_CORR = 0.5
NO_REFERENCE_MIN_LIKENESS = 0.6   # the identity model's accept line: without a reference crop, identity stands in
_EDGE_SIDE = 96


class _Identity(Protocol):
    def embed(self, rgb: np.ndarray, box: Box) -> np.ndarray | None: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float: ...


class _Safety(Protocol):
    def nsfw_probability(self, rgb: np.ndarray) -> float: ...


class _Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[DetectedFace]: ...


class GateConfig(BaseModel):
    """Thresholds of the gate (serve_config `QualityGate.user_config.gate`); `likeness_minimums` maps platform ->
    minimum, overriding the tier default."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    likeness_overrides: dict[str, float] = Field(default_factory=dict, alias="likeness_minimums")
    nsfw_threshold: float = Field(0.2, gt=0, le=1)
    nsfw_review_at: float = Field(0.1, ge=0, le=1)
    auto_accept_at: float = Field(0.9, ge=0, le=1)
    review_below: float = Field(0.75, ge=0, le=1)
    max_retries: int = Field(2, ge=0, le=5)
    retry_intensity_factor: float = Field(0.6, gt=0, le=1)
    min_intensity: float = Field(0.1, ge=0, le=1)
    max_background_remnant: float = Field(0.003, ge=0, le=1)

    def likeness_min(self, platform: str) -> float:
        """The platform's override, else its tier default (unknown platforms get the strictest tier)."""
        if platform in self.likeness_overrides:
            return float(self.likeness_overrides[platform])
        profile = PLATFORMS.get(platform)
        return TIER_LIKENESS_MIN[profile.tier] if profile else max(TIER_LIKENESS_MIN.values())


@dataclass
class IdentityRef:
    """What the pipeline knows about the input face: its descriptor, and the unstyled aligned crop (optional)."""

    embedding: np.ndarray | None
    aligned: np.ndarray | None = None   # (S, S, 3) crop on the same template as the output, before styling


@dataclass
class BackgroundRef:
    """What the background check compares: the unstyled aligned crop, the matte that composed the output (its alpha,
    and where it judged the crop to be old background: bool, any size), the landmarks (crop pixels)."""

    aligned: np.ndarray
    alpha: np.ndarray
    landmarks: np.ndarray | None = None
    decided: np.ndarray | None = None


@dataclass
class GateResult:
    passed: bool
    checks: dict[str, bool]
    likeness: float
    nsfw: float
    face_score: float
    warnings: list[Warning] = field(default_factory=list)
    auto_accept: bool = False
    needs_review: bool = False
    face_source: str = "none"          # "detector", "structure", "identity" or "none"
    likeness_min: float = 0.0
    background_remnant: float = 0.0    # share of the frame still showing old background (0 when not measured)


@dataclass
class RetryPlan:
    attempt: int                       # number of the attempt this plan makes (1 = first try)
    intensity: float
    safer_background: bool = False
    stricter_mask: bool = False        # old background showed: matte the next attempt more strictly


class QualityGate:
    """Runs the three checks on one output; models are shared and loaded once per process."""

    def __init__(self, identity: _Identity, safety: _Safety, analyzer: _Detector | None = None,
                 config: GateConfig | None = None) -> None:
        self.identity = identity
        self.safety = safety
        self.analyzer = analyzer
        self.config = config or GateConfig()
        # the safety network (onnxruntime, ~22 ms, releases the GIL) runs beside the face checks: the other core
        # takes it when the machine is not saturated (-20 ms per attempt), nothing changes when it is
        self._beside = ThreadPoolExecutor(1, thread_name_prefix="gate-safety")

    def close(self) -> None:
        self._beside.shutdown(wait=True)
        for part in (self.analyzer, self.identity, self.safety):
            close = getattr(part, "close", None)
            if callable(close):
                close()

    def evaluate(self, output_rgb: np.ndarray, expected_box: Box, identity_ref: IdentityRef | np.ndarray | None,
                 platform: str, style: str, background: "BackgroundRef | None" = None) -> GateResult:
        ref = identity_ref if isinstance(identity_ref, IdentityRef) else IdentityRef(identity_ref)
        safety = self._beside.submit(self.safety.nsfw_probability, output_rgb)
        likeness = self._likeness(output_rgb, expected_box, ref)
        source, face_score = self._face(output_rgb, expected_box, ref, style, likeness)
        nsfw = float(safety.result())
        minimum = self.config.likeness_min(platform)
        checks = {"face_present": source != "none", "likeness": likeness >= minimum,
                  "content_safety": nsfw < self.config.nsfw_threshold}
        remnant = 0.0
        if background is not None:
            from avatar.vision.remnant import measure
            remnant = measure(background.aligned, background.alpha, output_rgb, background.landmarks,
                              decided=background.decided).share
            checks["background"] = remnant <= self.config.max_background_remnant
        result = self._result(checks, likeness, nsfw, face_score, source, minimum, style)
        result.background_remnant = round(remnant, 5)
        if not checks.get("background", True):
            result.warnings.append(Warning("old_background_visible", f"{remnant:.1%} of the frame still shows the "
                                                                     "photo's original background"))
        return result

    def _likeness(self, rgb: np.ndarray, box: Box, ref: IdentityRef) -> float:
        if ref.embedding is None:
            return 0.0
        emb = self.identity.embed(rgb, box)
        curve = getattr(self.identity, "curve", None)   # each identity model has its own calibration
        return likeness_from_distance(None if emb is None else self.identity.distance(ref.embedding, emb), curve)

    def _face(self, rgb: np.ndarray, box: Box, ref: IdentityRef, style: str, likeness: float) -> tuple[str, float]:
        """(how the face was confirmed, its score): detector first, then the stylised-output fallback."""
        if self.analyzer is not None:
            hits = [f for f in self.analyzer.detect(rgb) if _where_expected(f, box)]
            if hits:
                return "detector", float(max(f.score for f in hits))
            if is_photoreal(style):
                return "none", 0.0
        if ref.aligned is not None:
            corr = structure_correlation(rgb, ref.aligned, box)
            return ("structure", corr) if corr >= STRUCTURE_MIN_CORR else ("none", max(corr, 0.0))
        return ("identity", likeness) if likeness >= NO_REFERENCE_MIN_LIKENESS else ("none", likeness)

    def _result(self, checks: dict[str, bool], likeness: float, nsfw: float, face_score: float, source: str,
                minimum: float, style: str) -> GateResult:
        cfg = self.config
        passed = all(checks.values())
        result = GateResult(passed=passed, checks=checks, likeness=round(likeness, 4), nsfw=round(nsfw, 4),
                            face_score=round(face_score, 4), face_source=source, likeness_min=minimum,
                            warnings=_warnings(checks, likeness, nsfw, face_score, minimum, cfg.nsfw_threshold, style))
        result.auto_accept = passed and likeness >= cfg.auto_accept_at and nsfw < cfg.nsfw_review_at
        result.needs_review = passed and not result.auto_accept and (
            likeness < cfg.review_below or nsfw >= cfg.nsfw_review_at)
        return result


def _warnings(checks: dict[str, bool], likeness: float, nsfw: float, face_score: float, minimum: float,
              nsfw_threshold: float, style: str) -> list[Warning]:
    out = []
    if not checks["face_present"]:
        out.append(Warning("no_face_in_output", f"no face found where the {style} output should have one "
                                                f"(face score {face_score:.2f})"))
    if not checks["likeness"]:
        out.append(Warning("low_likeness", f"likeness {likeness:.2f} is below this platform's minimum {minimum:.2f}"))
    if not checks["content_safety"]:
        out.append(Warning("content_unsafe", f"content safety score {nsfw:.2f} is at or above {nsfw_threshold:.2f}"))
    return out


def plan_retry(attempt: int, intensity: float, result: GateResult, config: GateConfig) -> RetryPlan | None:
    """The next attempt after a failed one (`attempt` counts from 1), or None when it passed or retries are spent.

    Face or likeness failures lower the style intensity (strong styles are what costs likeness); a content-safety
    failure alone keeps the intensity and asks for a plain, safer background instead; old background still showing
    asks for a stricter matte.
    """
    if result.passed or attempt > config.max_retries:
        return None
    identity_failed = not (result.checks.get("face_present", True) and result.checks.get("likeness", True))
    unsafe = not result.checks.get("content_safety", True)
    if identity_failed:
        intensity = max(config.min_intensity, intensity * config.retry_intensity_factor)
    return RetryPlan(attempt=attempt + 1, intensity=round(intensity, 4), safer_background=unsafe,
                     stricter_mask=not result.checks.get("background", True))


def pick_best(results: Sequence[GateResult]) -> int:
    """Index of the attempt to return: a passing one if any, else safe over unsafe, face over none, then likeness,
    then the least old background."""
    if not results:
        raise ValueError("pick_best needs at least one result")

    def rank(i: int) -> tuple:
        r = results[i]
        return (r.passed, r.checks.get("content_safety", False), r.checks.get("face_present", False),
                r.checks.get("background", True), r.likeness, -r.background_remnant, -r.nsfw, -i)

    return max(range(len(results)), key=rank)


def _where_expected(face: DetectedFace, box: Box) -> bool:
    """The found face lies where the expected one is: mesh box against mesh box, else detector box."""
    if face.landmarks is not None and len(face.landmarks):
        mesh = np.asarray(face.landmarks, np.float64)[:, :2]
        return box_iou((*mesh.min(axis=0), *mesh.max(axis=0)), box) >= MESH_MIN_IOU
    return box_iou(face.box, box) >= DETECTOR_MIN_IOU


def box_iou(a: Box, b: Box) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def structure_correlation(output: np.ndarray, aligned: np.ndarray, box: Box) -> float:
    """Correlation of gradient-magnitude maps of the face region in the output and in the unstyled aligned crop.

    Styles change colour, texture and line weight but keep where the eyes, nose, mouth and jaw edges are; blur,
    scrambling or a different face move or erase them. `box` is in output pixels; the reference is rescaled to the
    output's size first (same template, possibly a different resolution).
    """
    h, w = output.shape[:2]
    if aligned.shape[:2] != (h, w):
        aligned = cv2.resize(aligned, (w, h), interpolation=cv2.INTER_AREA)
    a, b = _edge_map(output, box), _edge_map(aligned, box)
    if a is None or b is None:
        return 0.0
    value = float(np.mean(a * b))
    return value if math.isfinite(value) else 0.0


def _edge_map(rgb: np.ndarray, box: Box) -> np.ndarray | None:
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1, :3]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey = cv2.GaussianBlur(cv2.resize(grey, (_EDGE_SIDE, _EDGE_SIDE), interpolation=cv2.INTER_AREA), (0, 0), 1.5)
    mag = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    return (mag - mag.mean()) / (mag.std() + 1e-6)
