"""FaceDetect: find the dominant face, score the input, align the head to the platform's template, embed the
identity; and the pre-flight report of `POST /v1/avatar/check`."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from avatar.catalog.platforms import PLATFORMS
from avatar.errors import InvalidRequest, NoFaceDetected
from avatar.job import AvatarJob
from avatar.stages import ModelSources, Role, StageDefinition, timed
from avatar.vision.imageio import Pixels

NAME = "face_detect"


class FaceDetectConfig(ModelSources):
    work_size: int = Field(512, ge=128, le=2048, description="aligned crop side the render stages work at")
    min_face_coverage: float = Field(0.15, gt=0, lt=1)
    face_count_tiles: Literal["auto", "always"] = Field(
        "auto", description="auto: the tile pass (small faces) only where the two whole-frame detectors leave doubt; "
                            "the pre-flight check always tiles")
    identity_model: Literal["sface", "dlib"] = Field("sface", description="identity embedder of the input face "
                                                     "(avatar.vision.identity); QualityGate must name the same one")


class FaceDetectStage:
    """Find the dominant face, score the input, align the head to the platform's template, embed the identity."""

    name = NAME

    def __init__(self, analyzer, identity, work_size: int = 512, min_coverage: float = 0.15) -> None:
        self.analyzer = analyzer
        self.identity = identity
        self.work_size = work_size
        self.min_coverage = min_coverage

    def inspect(self, rgb: np.ndarray, exhaustive: bool | None = None):
        """Faces (dominant first) and the quality report of the dominant one: the cheap pre-flight. `exhaustive`
        counts with the tile pass even where both whole-frame detectors agree on one face."""
        from avatar.vision.quality import assess_input
        faces = self.analyzer.detect(rgb, exhaustive)
        return faces, assess_input(rgb, faces[0] if faces else None)

    def check(self, job: AvatarJob) -> dict:
        """The pre-flight report of `POST /v1/avatar/check`: what generate would see, without generating."""
        from avatar.vision.face.analyzer import describe
        with timed(job, "check"):
            rgb = job.photo.array()
            faces, report = self.inspect(rgb, exhaustive=True)   # the report is about counting: every tile
        face = faces[0] if faces else None
        warnings = [{"code": w.code, "message": w.message} for w in report.warnings]
        if len(faces) > 1:
            warnings.append({"code": "multiple_faces",
                             "message": f"{len(faces)} faces found; the largest, most central one would be used"})
        coverage = float(report.face_coverage) if face else 0.0
        if face and coverage < self.min_coverage:
            warnings.append({"code": "face_too_small", "message": f"the face covers {coverage:.0%} of the frame's "
                                                                 f"shorter side; at least {self.min_coverage:.0%}"})
        return {"face_detected": face is not None, "face_count": len(faces), "face_coverage": round(coverage, 4),
                "min_face_coverage": self.min_coverage,
                "head_angle": {"yaw": round(face.yaw, 1), "pitch": round(face.pitch, 1), "roll": round(face.roll, 1)}
                if face else None,
                "input_quality_score": round(float(report.score), 4), "validation_warnings": warnings,
                "accepted": bool(face) and coverage >= self.min_coverage,
                "width": job.photo_size[0], "height": job.photo_size[1], **job.input_fields(),
                "faces": describe(faces, rgb.shape, job.photo_size)}

    def run(self, job: AvatarJob) -> AvatarJob:
        from avatar.vision.face.align import align_face
        with timed(job, self.name):
            rgb = job.photo.array()
            faces, report = self.inspect(rgb)
            job.face_count = len(faces)
            job.input_quality_score = round(float(report.score), 4)
            if not faces:
                raise NoFaceDetected("no face was found in the image", field="image",
                                     extra={"face_detected": False, "face_count": 0,
                                            "input_quality_score": job.input_quality_score})
            face = faces[0]
            job.face_coverage = round(float(report.face_coverage), 4)
            job.head_angle = round(float(report.head_angle), 2)
            if job.face_coverage < self.min_coverage:
                raise InvalidRequest(
                    f"the face covers {job.face_coverage:.0%} of the frame's shorter side; at least "
                    f"{self.min_coverage:.0%} is required (crop closer to the face)", field="image",
                    code="face_too_small", extra={"face_detected": True, "face_count": len(faces),
                                                  "face_coverage": job.face_coverage,
                                                  "input_quality_score": job.input_quality_score})
            for w in report.warnings:
                job.warn(w.code, w.message)
            if len(faces) > 1:
                job.warn("multiple_faces", f"{len(faces)} faces found; the largest, most central one was used")
            aligned = align_face(rgb, face, PLATFORMS[job.platform].framing, self.work_size)
            crop = aligned.image
            if job.match_lighting:   # one team look: every member under the same light
                from avatar.team import match_lighting
                crop = match_lighting(crop, aligned.landmarks)
            job.aligned = Pixels.of(crop)
            job.work_size = aligned.image.shape[0]
            job.landmarks = aligned.landmarks.astype(np.float32)
            job.face_box = tuple(float(v) for v in aligned.face_box)
            if self.identity is not None:
                job.identity_ref = self.identity.embed(rgb, face.box, face.landmarks)
                job.versions["identity_model"] = self.identity.name
            job.photo = None   # the photo is not needed past this point and is never stored
        return job


def face_detect_stage(cfg: FaceDetectConfig):
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.identity import IdentityModel
    analyzer = FaceAnalyzer.load(cfg.models.get("face_detector"), cfg.models.get("face_landmarks"),
                                 tiled="auto" if cfg.face_count_tiles == "auto" else True)
    identity = IdentityModel.load(cfg.identity_model, cfg.models)
    return FaceDetectStage(analyzer, identity, work_size=cfg.work_size, min_coverage=cfg.min_face_coverage)


STAGE = StageDefinition(NAME, Role.DETECT, FaceDetectConfig, face_detect_stage)
