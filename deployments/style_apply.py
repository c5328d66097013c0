"""StyleApply: renders one attempt's style; custom style tokens through model multiplexing, concurrent requests
batched for engines that render batches (diffusion). The largest GPU share of the graph."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from avatar.errors import NotFound
from avatar.flow.names import Stage
from avatar.job import AvatarJob
from avatar.settings import settings
from avatar.stages import BatchConfig
from avatar.store.storage import Storage
from avatar.tokens import load_token, token_version
from deployments.stage import StageReplica
from service.handles import model_id_for

MAX_TOKENS_PER_REPLICA = settings().max_tokens_per_replica   # a baked 33^3 LUT is ~0.4 MB: 64 cost ~30 MB


@serve.deployment(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.4},
                  max_ongoing_requests=4, max_queued_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2})
class StyleApply(StageReplica):
    """Custom style tokens arrive through Serve model multiplexing: the ingress sends a custom-style job with
    `multiplexed_model_id="<account>/<token_id>"`, Serve routes it to a replica that already holds that token when it
    can, and `get_token` loads it from storage otherwise (an LRU of `MAX_TOKENS_PER_REPLICA` per replica). The job
    leaves with a small `{id, version, params}` summary of the token, never its LUT."""

    stage_name = Stage.STYLE_APPLY

    def __init__(self) -> None:
        super().__init__()
        self._token_storage: Storage | None = None
        self.token_loads: list[str] = []      # model ids loaded from storage by this replica, in order

    def configure_batching(self, batch: BatchConfig) -> None:
        self.run_batched.set_max_batch_size(batch.max_batch_size)
        self.run_batched.set_batch_wait_timeout_s(batch.wait_timeout_s)

    async def run(self, job: AvatarJob, attempt: Any = None) -> AvatarJob:
        """Engines with `apply_batch` (diffusion) get concurrent requests batched; custom style tokens and the CPU
        engine run one job at a time."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            return await self.run_custom(job, attempt, model_id)
        if job.token is None and self.engine_has("apply_batch"):
            return await self.run_batched(job, attempt)
        return await self.call("run", job, attempt)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def run_batched(self, jobs: list[AvatarJob], attempts: list[Any]) -> list[AvatarJob]:
        return await self.call("run_batch", jobs, attempts)

    def _storage(self) -> Storage:
        if self._token_storage is None:
            uri = getattr(self.config, "token_storage_uri", "") or settings().resolved_storage_uri
            self._token_storage = Storage(uri)
        return self._token_storage

    @serve.multiplexed(max_num_models_per_replica=MAX_TOKENS_PER_REPLICA)
    async def get_token(self, model_id: str) -> dict[str, Any]:
        """Load `<account>/<token_id>` from storage (NotFound 404 when missing or another account's)."""
        account, _, token_id = model_id.partition("/")
        token = await asyncio.to_thread(load_token, self._storage(), account, token_id)
        self.token_loads.append(model_id)
        return token

    async def run_custom(self, job: AvatarJob, attempt: Any, model_id: str) -> AvatarJob:
        """Apply the multiplexed token; the job leaves with its id, version and params (no LUT)."""
        if not job.account or model_id != model_id_for(job.account, job.style):
            raise NotFound(f"no style {job.style!r}", field="style", code="style_not_found")
        started = time.perf_counter()
        job.token = await self.get_token(model_id)   # storage read + decode when cold, a lookup when warm
        load_ms = round((time.perf_counter() - started) * 1000, 3)
        job = await self.call("run", job, attempt)
        job.timings["style_token_load"] = load_ms
        manifest = job.token.get("manifest") or {}
        version = token_version(manifest) if manifest else str(job.token.get("version", ""))
        job.token = {"id": job.token.get("id"), "version": version, "params": dict(job.token.get("params") or {})}
        job.versions["style_token"] = version
        return job

    async def token_stats(self) -> dict[str, Any]:
        """What this replica loaded: every storage load in order (a warm token is not loaded again)."""
        return {"loads": list(self.token_loads), "max_tokens": MAX_TOKENS_PER_REPLICA}
