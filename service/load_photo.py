"""LoadPhoto: Serve deployment around `avatar.flow.stages` (see `assembly.load_photo_stage` for what it loads)."""

from ray import serve

from avatar.flow import assembly
from service.stage_replica import StageReplica


@serve.deployment(name="LoadPhoto", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class LoadPhoto(StageReplica):
    build = staticmethod(assembly.load_photo_stage)
