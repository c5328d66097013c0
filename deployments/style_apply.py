"""StyleApply: Serve deployment around `avatar.stages` (see `assembly.style_apply_stage` for what it loads)."""

from ray import serve

from avatar import assembly
from deployments.stage_replica import StageReplica


@serve.deployment(name="StyleApply", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class StyleApply(StageReplica):
    build = staticmethod(assembly.style_apply_stage)
