"""BgGenerate: the person matted from the styled crop over a generated background; concurrent requests batched for
engines that render batches (diffusion)."""

from __future__ import annotations

from ray import serve

from avatar.flow.names import Stage
from avatar.job import AvatarJob
from avatar.stages import BatchConfig
from deployments.stage import StageReplica


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.25},
                  max_ongoing_requests=4, max_queued_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2})
class BgGenerate(StageReplica):
    stage_name = Stage.BG_GENERATE

    def configure_batching(self, batch: BatchConfig) -> None:
        self.run_batched.set_max_batch_size(batch.max_batch_size)
        self.run_batched.set_batch_wait_timeout_s(batch.wait_timeout_s)

    async def run(self, job: AvatarJob) -> AvatarJob:
        """Engines with `render_batch` (diffusion) get concurrent requests batched; the CPU engine runs one by one."""
        if self.engine_has("render_batch"):
            return await self.run_batched(job)
        return await self.call("run", job)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def run_batched(self, jobs: list[AvatarJob]) -> list[AvatarJob]:
        return await self.call("run_batch", jobs)
