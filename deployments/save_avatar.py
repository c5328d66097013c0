"""SaveAvatar: the chosen attempt as a PNG with metadata and a thumbnail, written to storage. CPU only."""

from __future__ import annotations

from ray import serve

from avatar.flow.names import Stage
from deployments.stage import StageReplica


@serve.deployment(ray_actor_options={"num_cpus": 0.25},
                  max_ongoing_requests=8, max_queued_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4})
class SaveAvatar(StageReplica):
    stage_name = Stage.SAVE_AVATAR
