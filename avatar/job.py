"""The work item that travels through the stages: request parameters, encoded images and small measurements.

Images are `Pixels` (raw bytes + shape, see `avatar.vision.imageio`), dropped as soon as no later stage needs them;
the only arrays are the 468 landmarks and the 128-d identity reference.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from avatar.types import Box, StyleSpec, Warning
from avatar.vision.imageio import Pixels


@dataclass
class PhotoInput:
    """What LoadPhoto receives: the upload's bytes or a URL (exactly one)."""

    data: bytes | None = None
    url: str | None = None
    input_id: str | None = None     # a photo cached earlier (cache_input)
    cache: bool = False             # keep this photo for 24 h
    field: str = "image"


@dataclass
class AvatarJob:
    request_id: str
    style: str
    platform: str
    size: int
    intensity: float
    palette: str | None = None
    background: str | None = None
    account: str | None = None
    token: dict | None = None              # a loaded custom style token (custom styles only)
    match_lighting: bool = False           # team batches: the photo's light brought to the batch's (avatar.team)
    quality: str = "fast"                  # the request's matte quality: "fast" or "best" (GenerateRequest.quality)
    asynchronous: bool = False             # an async job or batch item: nobody waits on a connection for it
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    photo: Pixels | None = None             # upright RGB input
    input_id: str | None = None             # set when the photo was cached (cache_input)
    pending_input: bytes | None = None      # the normalised photo to cache once the face is accepted (cache_input)
    input_expires_at: int | None = None
    photo_size: tuple[int, int] = (0, 0)
    face_count: int = 0
    face_coverage: float = 0.0
    head_angle: float = 0.0
    input_quality_score: float = 0.0
    identity_ref: np.ndarray | None = None  # identity embedding of the input face

    aligned: Pixels | None = None           # aligned square crop
    work_size: int = 0                      # side of the aligned crop
    landmarks: np.ndarray | None = None     # (468, 2) in aligned-crop pixels
    face_box: Box | None = None             # face box in aligned-crop pixels
    mask: Pixels | None = None              # person matte (alpha) of the aligned crop (8-bit)
    matte_background: Pixels | None = None  # where that matte judged the crop to be old background (256 px, 0/255)
    matte_level: int = 0                    # matting strictness of this attempt (raised when old background shows)
    template: Any = None                    # avatar.engines.template.OutputTemplate: shape, border, transparency
    styled: Pixels | None = None
    composed: Pixels | None = None
    output: Pixels | None = None            # final image at `size`

    attempt: int = 1
    gate: Any = None                        # the quality gate's GateResult of the delivered attempt
    history: list[dict[str, Any]] = field(default_factory=list)   # one summary per attempt (intensity, checks)
    likeness_score: float = 0.0
    billable: bool = False
    warnings: list[Warning] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    avatar_key: str | None = None
    thumbnail_key: str | None = None

    @staticmethod
    def new_request_id() -> str:
        return "req_" + uuid.uuid4().hex[:20]

    def spec(self) -> StyleSpec:
        return StyleSpec(style=self.style, intensity=self.intensity, palette=self.palette,
                         background=self.background, token=self.token, platform=self.platform)

    def for_attempt(self, attempt: Any) -> "AvatarJob":
        """A copy that renders `attempt` (an `avatar.flow.attempts.Attempt`); the analysed input is shared, not
        changed, so every attempt starts from the same face."""
        return replace(self, attempt=attempt.number, intensity=attempt.intensity, background=attempt.background,
                       palette=attempt.palette, matte_level=getattr(attempt, "matte_level", 0),
                       warnings=list(self.warnings), timings=dict(self.timings), versions=dict(self.versions),
                       mask=None, matte_background=None, styled=None, composed=None, output=None)

    def warn(self, code: str, message: str) -> None:
        if all(w.code != code for w in self.warnings):
            self.warnings.append(Warning(code, message))

    def input_fields(self) -> dict[str, Any]:
        """`input_id` and its expiry when the photo was cached for re-use (cache_input); else nothing."""
        if not self.input_id:
            return {}
        expires = datetime.fromtimestamp(self.input_expires_at or 0, timezone.utc)
        return {"input_id": self.input_id, "input_expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def output_face_box(self) -> Box | None:
        """The face box scaled from the aligned crop to the output size."""
        if self.face_box is None or not self.work_size:
            return None
        s = self.size / float(self.work_size)
        return tuple(v * s for v in self.face_box)  # type: ignore[return-value]
