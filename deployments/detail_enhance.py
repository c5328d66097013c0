"""DetailEnhance: brings the composed crop to the platform's output size with a face that holds up at that size
(Real-ESRGAN on the face)."""

from __future__ import annotations

from ray import serve

from avatar.flow.names import Stage
from deployments.stage import StageReplica


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.15},
                  max_ongoing_requests=4, max_queued_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2})
class DetailEnhance(StageReplica):
    stage_name = Stage.DETAIL_ENHANCE
