"""StyleApply: Serve deployment around `avatar.flow.stages` (see `assembly.style_apply_stage` for what it loads).

Custom style tokens arrive through Serve model multiplexing: the ingress sends a custom-style job with
`multiplexed_model_id="<account>/<token_id>"`, Serve routes it to a replica that already holds that token when it
can, and `get_token` loads it from storage otherwise (an LRU of `MAX_TOKENS_PER_REPLICA` tokens per replica), so
thousands of tokens never sit in memory at once. The loaded token (LUT included) stays in the replica: the job leaves
with a small `{id, version, params}` summary that names the token in the response and the PNG metadata.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ray import serve

from avatar.flow import assembly
from avatar.settings import ServiceSettings
from avatar.errors import NotFound
from avatar.job import AvatarJob
from avatar.store.storage import Storage
from avatar.tokens import load_token
from service.stage_replica import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE, StageReplica

# A baked 33^3 LUT is ~0.4 MB, so 64 tokens cost ~30 MB per replica.
MAX_TOKENS_PER_REPLICA = int(os.environ.get("AVATAR_MAX_TOKENS_PER_REPLICA", "64"))


def model_id_for(account: str, token_id: str) -> str:
    return f"{account}/{token_id}"


def token_version(manifest: dict[str, Any]) -> str:
    """`<token_id>@<format version>-<first 8 hex of the token file's SHA-256>`: names the token and its exact content."""
    digest = str(manifest.get("sha256") or "")[:8]
    version = f"{manifest.get('token_id')}@{manifest.get('version', 1)}"
    return f"{version}-{digest}" if digest else version


@serve.deployment(name="StyleApply", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class StyleApply(StageReplica):
    build = staticmethod(assembly.style_apply_stage)

    def __init__(self) -> None:
        super().__init__()
        self._token_storage: Storage | None = None
        self.token_loads: list[str] = []      # model ids loaded from storage by this replica, in order

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.configure_batching(self.run_batched, config)   # `batch: {max_batch_size, wait_timeout_s}`
        super().reconfigure(config)

    async def run(self, job: AvatarJob) -> AvatarJob:
        """Engines with `apply_batch` (diffusion) get concurrent requests batched; custom style tokens and the CPU
        engine run one job at a time."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            return await self.run_custom(job, model_id)
        if job.token is None and self.engine_has("apply_batch"):
            return await self.run_batched(job)
        return await super().run(job)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def run_batched(self, jobs: list[AvatarJob]) -> list[AvatarJob]:
        return await self.call("run_batch", jobs)

    # ------------------------------------------------------------ custom style tokens (model multiplexing)
    def _storage(self) -> Storage:
        if self._token_storage is None:
            self._token_storage = Storage((self.config or {}).get("token_storage_uri")
                                          or ServiceSettings().resolved_storage_uri)
        return self._token_storage

    @serve.multiplexed(max_num_models_per_replica=MAX_TOKENS_PER_REPLICA)
    async def get_token(self, model_id: str) -> dict[str, Any]:
        """Load `<account>/<token_id>` from storage (NotFound 404 when missing or another account's)."""
        account, _, token_id = model_id.partition("/")
        token = await asyncio.to_thread(load_token, self._storage(), account, token_id)
        self.token_loads.append(model_id)
        return token

    async def run_custom(self, job: AvatarJob, model_id: str) -> AvatarJob:
        """Apply the multiplexed token; the job leaves with its id, version and params (no LUT)."""
        if not job.account or model_id != model_id_for(job.account, job.style):
            raise NotFound(f"no style {job.style!r}", field="style", code="style_not_found")
        started = time.perf_counter()
        job.token = await self.get_token(model_id)   # storage read + decode when cold, a lookup when warm
        job.timings["style_token_load"] = round((time.perf_counter() - started) * 1000, 3)
        job = await self.call("run", job)
        manifest = job.token.get("manifest") or {}
        version = token_version(manifest) if manifest else str(job.token.get("version", ""))
        job.token = {"id": job.token.get("id"), "version": version, "params": dict(job.token.get("params") or {})}
        job.versions["style_token"] = version
        return job

    async def token_stats(self) -> dict[str, Any]:
        """What this replica loaded: every storage load in order (a warm token is not loaded again)."""
        return {"loads": list(self.token_loads), "max_tokens": MAX_TOKENS_PER_REPLICA}
