"""BgGenerate: Serve deployment around `avatar.flow.stages` (see `assembly.bg_generate_stage` for what it loads)."""

from typing import Any

from ray import serve

from avatar.flow import assembly
from avatar.job import AvatarJob
from service.stage_replica import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE, StageReplica


@serve.deployment(name="BgGenerate", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class BgGenerate(StageReplica):
    build = staticmethod(assembly.bg_generate_stage)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.configure_batching(self.run_batched, config)   # `batch: {max_batch_size, wait_timeout_s}`
        super().reconfigure(config)

    async def run(self, job: AvatarJob) -> AvatarJob:
        """Engines with `render_batch` (diffusion) get concurrent requests batched; the CPU engine runs one by one."""
        if self.engine_has("render_batch"):
            return await self.run_batched(job)
        return await super().run(job)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def run_batched(self, jobs: list[AvatarJob]) -> list[AvatarJob]:
        return await self.call("run_batch", jobs)
