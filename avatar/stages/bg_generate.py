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
    """Mattes the person (the fast matte, or the learned one where `choose_matter` picks it) and composites them on
    the generated background."""

    name = NAME

    def __init__(self, segmenter, engine, learned=None) -> None:
        self.segmenter = segmenter      # the fast matte (avatar.vision.matting.PersonMatter)
        self.engine = engine
        self.learned = learned          # the learned matte (avatar.vision.learned_matte.LearnedMatter), opt-in

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
        """The matted person of this attempt (`avatar.vision.matting`); its alpha travels on as `job.mask`, and
        where it judged the crop to be old background as `job.matte_background` (what the gate checks with)."""
        matter = choose_matter(self.segmenter, self.learned, job)
        layer = person_layer(matter, job.aligned.array(), job.styled.array(), job.landmarks, job.matte_level)
        job.mask = Pixels.of_mask(layer.alpha)
        if layer.matte is not None:
            job.matte_background = Pixels.of((~layer.matte.check.person).astype(np.uint8) * 255)
        job.versions["matte"] = matte_version(matter)
        return layer

    def _finish(self, job: AvatarJob, composed: np.ndarray) -> None:
        job.composed, job.styled = Pixels.of(composed), None
        engine = engine_used(self.engine, job)
        job.versions["background_engine"] = f"{engine.name}/{engine.version}"


def choose_matter(fast, learned, job: AvatarJob):
    """The matte of `job`: the learned one when loaded and its `use_for` covers the job (all requests; asynchronous
    jobs and batch items; or only requests asking `quality: best`, which every setting honours; `auto` is all on a
    GPU and asynchronous work on CPU, where it costs about a second a avatar), else the fast one."""
    if learned is None:
        return fast
    use = learned.config.use_for
    if use == "auto":
        use = "all" if learned.on_gpu else "async"
    wanted = job.quality == "best" or use == "all" or (use == "async" and job.asynchronous)
    return learned if wanted else fast


def matte_version(matter) -> str:
    """What the PNG metadata and the reply's versions name: `fast/guided`, `learned/isnet@512`, ..."""
    version = getattr(matter, "version", None) or getattr(getattr(matter, "config", None), "method", "mask")
    return f"{getattr(matter, 'name', 'fast')}/{version}"


def bg_generate_stage(cfg: BgGenerateConfig):
    from avatar.engines.registry import create_background_engine
    from avatar.vision.matting import PersonMatter
    matter = PersonMatter.load(cfg.models.get("person_segmenter"), cfg.matting)
    learned = None
    if cfg.matting.learned.enabled:   # opt-in (licence: docs/matting.md); a missing file fails start-up with why
        from avatar.vision.learned_matte import LearnedMatter
        learned = LearnedMatter.load(cfg.matting.learned, cfg.models.get("person_matte"))
    return BgGenerateStage(matter, create_background_engine(cfg.engine.name, cfg.engine.options), learned)


STAGE = StageDefinition(NAME, Role.RENDER, BgGenerateConfig, bg_generate_stage, order=20)
