"""BgGenerate: the person matted from the styled crop, over a generated background (or transparent)."""

from __future__ import annotations

import numpy as np

from avatar.contracts import TRANSPARENT
from avatar.job import AvatarJob
from avatar.stages import BatchConfig, EngineChoice, ModelSources, Role, StageDefinition, engine_used, timed
from avatar.vision.imageio import Pixels
from avatar.vision.matting import MattingConfig, PersonLayer, fill_hidden, person_layer

NAME = "bg_generate"


class BgGenerateConfig(ModelSources):
    engine: EngineChoice = EngineChoice()
    batch: BatchConfig = BatchConfig()
    matting: MattingConfig = MattingConfig()


class BgGenerateStage:
    name = NAME

    def __init__(self, segmenter, engine) -> None:
        self.segmenter = segmenter
        self.engine = engine

    def run(self, job: AvatarJob) -> AvatarJob:
        with timed(job, self.name):
            layer = self._layer(job)
            self._finish(job, fill_hidden(layer.rgb, layer.alpha) if job.background == TRANSPARENT
                         else self.engine.render(layer.rgb, layer.alpha, job.landmarks, job.spec()))
        return job

    def run_batch(self, jobs: list[AvatarJob]) -> list[AvatarJob]:
        """Many jobs in one engine call (`render_batch`); engines without it render them one by one."""
        render_batch = getattr(self.engine, "render_batch", None)
        if render_batch is None or not jobs or any(j.background == TRANSPARENT for j in jobs):
            return [self.run(job) for job in jobs]
        with timed(jobs, self.name):
            layers = [self._layer(job) for job in jobs]
            out = render_batch([x.rgb for x in layers], [x.alpha for x in layers],
                               [j.landmarks for j in jobs], [j.spec() for j in jobs])
            for job, image in zip(jobs, out):
                self._finish(job, image)
        return jobs

    def _layer(self, job: AvatarJob) -> PersonLayer:
        """The matted person of this attempt (`avatar.vision.matting`); its alpha travels on as `job.mask`."""
        layer = person_layer(self.segmenter, job.aligned.array(), job.styled.array(), job.landmarks,
                             job.matte_level)
        job.mask = Pixels.of_mask(layer.alpha)
        return layer

    def _finish(self, job: AvatarJob, composed: np.ndarray) -> None:
        job.composed, job.styled = Pixels.of(composed), None
        engine = engine_used(self.engine, job)
        job.versions["background_engine"] = f"{engine.name}/{engine.version}"


def bg_generate_stage(cfg: BgGenerateConfig):
    from avatar.engines.registry import create_background_engine
    from avatar.vision.matting import PersonMatter
    matter = PersonMatter.load(cfg.models.get("person_segmenter"), cfg.matting)
    return BgGenerateStage(matter, create_background_engine(cfg.engine.name, cfg.engine.options))


STAGE = StageDefinition(NAME, Role.RENDER, BgGenerateConfig, bg_generate_stage, order=20)
