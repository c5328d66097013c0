"""BgGenerate: Serve deployment around `avatar.stages` (see `assembly.bg_generate_stage` for what it loads)."""

from ray import serve

from avatar import assembly
from deployments.stage_replica import StageReplica


@serve.deployment(name="BgGenerate", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class BgGenerate(StageReplica):
    build = staticmethod(assembly.bg_generate_stage)
