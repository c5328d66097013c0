"""QualityGate: Serve deployment around `avatar.flow.stages.QualityGateStage` (face presence, likeness, content safety)."""

from ray import serve

from avatar.flow import assembly
from service.stage_replica import StageReplica


@serve.deployment(name="QualityGate", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class QualityGate(StageReplica):
    build = staticmethod(assembly.quality_gate_stage)
