"""FaceDetect: finds the dominant face, aligns it to the platform's template and embeds the identity; also the
pre-flight `check`. A small GPU share (detection and landmarks)."""

from __future__ import annotations

from ray import serve

from avatar.flow.names import Stage
from deployments.stage import StageReplica


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.1},
                  max_ongoing_requests=4, max_queued_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2})
class FaceDetect(StageReplica):
    stage_name = Stage.FACE_DETECT
