"""DetailEnhance: Serve deployment around `avatar.flow.stages` (see `assembly.detail_enhance_stage` for what it loads)."""

from ray import serve

from avatar.flow import assembly
from service.stage_replica import StageReplica


@serve.deployment(name="DetailEnhance", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class DetailEnhance(StageReplica):
    build = staticmethod(assembly.detail_enhance_stage)
