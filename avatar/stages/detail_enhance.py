"""DetailEnhance: the composed crop brought to the platform's output size with a face that holds up at that size."""

from __future__ import annotations

from pydantic import Field

from avatar.job import AvatarJob
from avatar.stages import ModelSources, Role, StageDefinition, timed
from avatar.vision.imageio import Pixels

NAME = "detail_enhance"


class DetailEnhanceConfig(ModelSources):
    esr_max_input: int = Field(80, ge=32, le=512, description="longest side of the face region fed to Real-ESRGAN: "
                                                               "its time grows with the square (96 px: ~1.4x of 80)")


class DetailEnhanceStage:
    name = NAME

    def __init__(self, enhancer) -> None:
        self.enhancer = enhancer

    def run(self, job: AvatarJob) -> AvatarJob:
        with timed(job, self.name):
            result = self.enhancer.enhance(job.composed.array(), job.landmarks, job.size, job.style)
            image = getattr(result, "image", result)
            job.output, job.composed = Pixels.of(image), None
            used = getattr(result, "upscaler_used", None)
            if used:
                job.versions["upscaler"] = str(used) if isinstance(used, str) else "realesr-animevideov3-x4"
        return job


def detail_enhance_stage(cfg: DetailEnhanceConfig):
    from avatar.engines.enhance import DetailEnhancer
    return DetailEnhanceStage(DetailEnhancer.load(cfg.models.get("upscaler"), esr_max_input=cfg.esr_max_input))


STAGE = StageDefinition(NAME, Role.RENDER, DetailEnhanceConfig, detail_enhance_stage, order=30)
