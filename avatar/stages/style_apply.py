"""StyleApply: the first render stage, so it takes the attempt: renders the analysed job's style with the attempt's
parameters (an engine chosen by configuration; custom style tokens arrive on the job)."""

from __future__ import annotations

import numpy as np

from avatar.flow.attempts import Attempt
from avatar.job import AvatarJob
from avatar.stages import BatchConfig, EngineChoice, Role, StageConfig, StageDefinition, engine_used, timed
from avatar.vision.imageio import Pixels

NAME = "style_apply"


class StyleApplyConfig(StageConfig):
    engine: EngineChoice = EngineChoice()
    batch: BatchConfig = BatchConfig()
    token_storage_uri: str = ""


class StyleApplyStage:
    """Renders one attempt: the analysed job (shared by every attempt) is copied with the attempt's parameters."""

    name = NAME

    def __init__(self, engine) -> None:
        self.engine = engine

    def run(self, job: AvatarJob, attempt: Attempt | None = None) -> AvatarJob:
        job = job.for_attempt(attempt) if attempt is not None else job
        with timed(job, self.name):
            styled = self.engine.apply(job.aligned.array(), job.landmarks, job.spec())
            self._finish(job, styled)
        return job

    def run_batch(self, jobs: list[AvatarJob], attempts: list[Attempt | None] | None = None) -> list[AvatarJob]:
        """Many jobs in one engine call (`apply_batch`); engines without it style them one by one."""
        attempts = attempts or [None] * len(jobs)
        jobs = [j.for_attempt(a) if a is not None else j for j, a in zip(jobs, attempts)]
        apply_batch = getattr(self.engine, "apply_batch", None)
        if apply_batch is None or not jobs:
            return [self.run(job) for job in jobs]
        with timed(jobs, self.name):
            styled = apply_batch([j.aligned.array() for j in jobs], [j.landmarks for j in jobs],
                                 [j.spec() for j in jobs])
            for job, image in zip(jobs, styled):
                self._finish(job, image)
        return jobs

    def _finish(self, job: AvatarJob, styled: np.ndarray) -> None:
        job.styled = Pixels.of(styled)
        engine = engine_used(self.engine, job)
        job.versions["style_engine"] = f"{engine.name}/{engine.version}"
        model_ids = getattr(engine, "model_ids", None)   # per style when the engine loads several models
        model = (model_ids or {}).get(job.style) or getattr(engine, "model_id", None)
        if model:
            job.versions["style_model"] = str(model)


def style_apply_stage(cfg: StyleApplyConfig):
    from avatar.engines.registry import create_style_engine
    return StyleApplyStage(create_style_engine(cfg.engine.name, cfg.engine.options))


STAGE = StageDefinition(NAME, Role.RENDER, StyleApplyConfig, style_apply_stage, order=10)
