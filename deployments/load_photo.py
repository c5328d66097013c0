"""LoadPhoto: fetch (URL) and decode untrusted bytes; keeps accepted photos for re-use (`cache_input`). CPU only."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from ray import serve

from avatar.flow.names import Stage
from avatar.job import AvatarJob, PhotoInput
from avatar.store.fetch import fetch_image_async
from deployments.stage import StageReplica

MAX_CONCURRENT_FETCHES = 16


@serve.deployment(ray_actor_options={"num_cpus": 0.25},
                  max_ongoing_requests=8, max_queued_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4})
class LoadPhoto(StageReplica):
    """URL inputs are fetched before the stage's lock is taken, concurrently and under the fetch policy's one
    deadline, so a slow URL never holds the replica's one-at-a-time decode; only the decode runs under the lock."""

    stage_name = Stage.LOAD_PHOTO

    def __init__(self) -> None:
        super().__init__()
        self._fetches = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

    async def run(self, job: AvatarJob, source: PhotoInput) -> AvatarJob:
        if source.url is not None and source.data is None:
            if self.stage is None:
                self.reconfigure({})
            started = time.perf_counter()
            async with self._fetches:
                data = await fetch_image_async(source.url, self.stage.fetch_policy)
            job.timings["fetch"] = round((time.perf_counter() - started) * 1000, 2)
            source = replace(source, data=data, url=None, field="image_url")
        return await self.call("run", job, source)

    async def keep(self, job: AvatarJob) -> AvatarJob:
        return await self.call("keep", job)
