"""QualityGate: face present, likeness, content safety and old background of one attempt; answers a `Verdict`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from avatar.contracts import TRANSPARENT
from avatar.errors import StageFailed
from avatar.flow.attempts import Attempt, Verdict
from avatar.gate import GateConfig
from avatar.job import AvatarJob
from avatar.stages import ModelSources, Role, StageDefinition, timed
from avatar.vision.matting import alpha_at, over_grey

NAME = "quality_gate"


class QualityGateConfig(ModelSources):
    gate: GateConfig = GateConfig()
    identity_model: Literal["sface", "dlib"] = Field("sface", description="identity embedder of the output face; "
                                                     "the same one FaceDetect embeds the input with")


class QualityGateStage:
    """Face presence, likeness against the input face, content safety: decides retries and billing.

    Answers a small `Verdict`, not the job: the orchestrator decides on it while the rendered job stays where it is.
    """

    name = NAME

    def __init__(self, gate) -> None:
        self.gate = gate

    def run(self, job: AvatarJob) -> Verdict:
        from avatar.gate import BackgroundRef, IdentityRef, plan_retry
        with timed(job, self.name):
            self._same_identity_model(job)
            aligned = job.aligned.array()
            ref = IdentityRef(job.identity_ref, aligned=aligned)
            output, alpha = job.output.array(), job.mask.mask() if job.mask is not None else None
            if job.background == TRANSPARENT and alpha is not None:   # checked as seen: on a neutral backdrop
                output = over_grey(output, alpha_at(alpha, output.shape[0]))
            decided = job.matte_background.mask() > 0.5 if job.matte_background is not None else None
            background = BackgroundRef(aligned, alpha, job.landmarks, decided) if alpha is not None else None
            result = self.gate.evaluate(output, job.output_face_box(), ref, job.platform, job.style, background)
            retry = plan_retry(job.attempt, job.intensity, result, self.gate.config)
        attempt = Attempt(job.attempt, job.intensity, job.background, job.palette, job.matte_level)
        return Verdict(attempt, result, retry, dict(job.timings))

    def _same_identity_model(self, job: AvatarJob) -> None:
        """Embeddings of two different models cannot be compared: a configuration error, said plainly."""
        theirs, ours = job.versions.get("identity_model"), getattr(self.gate.identity, "name", None)
        if theirs and ours and theirs != ours:
            raise StageFailed(f"the input face was embedded with {theirs} but the quality gate measures with {ours}: "
                              "set the same identity_model on FaceDetect and QualityGate")


def quality_gate_stage(cfg: QualityGateConfig):
    from avatar.gate import QualityGate
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.identity import IdentityModel
    from avatar.vision.safety import SafetyClassifier
    gate = QualityGate(IdentityModel.load(cfg.identity_model, cfg.models),
                       SafetyClassifier.load(cfg.models.get("safety_classifier")),
                       FaceAnalyzer.load(cfg.models.get("face_detector"), cfg.models.get("face_landmarks"),
                                         tiled=False),   # one large face, where expected: tiles add only noise
                       cfg.gate)
    return QualityGateStage(gate)


STAGE = StageDefinition(NAME, Role.GATE, QualityGateConfig, quality_gate_stage)
