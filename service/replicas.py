"""The stage deployments: each wraps one pure stage (`avatar.flow.assembly.STAGES`), one resource profile each.

A replica builds its stage from `user_config` at start-up (models load here, never in a request), runs one job at a
time off the event loop (health checks and queueing stay responsive) and rebuilds in place when an operator changes
the config; a change of only `batch` reloads nothing. StyleApply adds custom style tokens (model multiplexing) and,
like BgGenerate, batches concurrent requests for engines that render batches (diffusion).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ray import serve

from avatar.errors import NotFound
from avatar.flow.assembly import BatchConfig, StageConfig, build_stage, stage_config
from avatar.flow.names import Stage
from avatar.flow.stages import close_stage
from avatar.job import AvatarJob, PhotoInput
from avatar.store.fetch import fetch_image_async
from avatar.settings import settings
from avatar.store.storage import Storage
from avatar.tokens import load_token, token_version
from service import memory

MAX_TOKENS_PER_REPLICA = settings().max_tokens_per_replica   # a baked 33^3 LUT is ~0.4 MB: 64 cost ~30 MB


class StageReplica:
    """One pipeline stage in a Serve replica."""

    def __init__(self, stage: Stage) -> None:
        self.stage_name = Stage(stage)
        self.stage: Any = None
        self.config: StageConfig | None = None
        self._lock = threading.Lock()   # model runtimes are not re-entrant; replicas give the parallelism
        # one worker thread for the stage: jobs run one at a time anyway, and model runtimes keep per-thread buffers
        # that a pool of threads would multiply
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"stage-{self.stage_name.value}")

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Called by Serve at start-up and on every `user_config` change; an invalid config fails naming its field."""
        config = stage_config(self.stage_name, user_config)
        batch = getattr(config, "batch", None)
        if isinstance(batch, BatchConfig):
            self.configure_batching(batch)
        if self.stage is None or _without_batch(config) != _without_batch(self.config):
            stage = build_stage(self.stage_name, config)
            with self._lock:
                old, self.stage = self.stage, stage
            _close(old)
        self.config = config

    def configure_batching(self, batch: BatchConfig) -> None:
        """Deployments with a `@serve.batch` method apply `user_config.batch` to it."""

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            try:
                return getattr(self.stage, method)(*args)
            finally:
                memory.release()   # large inputs must not leave the replica at its peak RSS

    async def call(self, method: str, *args: Any) -> Any:
        """Runs `stage.<method>(*args)` in a worker thread, one at a time per replica."""
        if self.stage is None:   # deployed without a user_config: build with defaults
            self.reconfigure({})
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._call, method, *args)

    async def run(self, *args: Any) -> Any:
        return await self.call("run", *args)

    async def check(self, *args: Any) -> Any:
        return await self.call("check", *args)

    def engine_has(self, method: str) -> bool:
        """Whether the loaded stage's engine offers `method` (e.g. `apply_batch`): picks the batched request path."""
        return callable(getattr(getattr(self.stage, "engine", None), method, None))

    async def where(self) -> dict[str, str]:
        """The node and replica serving this stage (operations: where did the scheduler put it)."""
        return replica_location()

    async def check_health(self) -> None:
        if self.stage is None and self.config is not None:
            raise RuntimeError("stage has no loaded components")


def replica_location() -> dict[str, str]:
    import ray
    context = serve.get_replica_context()
    return {"node_id": ray.get_runtime_context().get_node_id(), "replica": context.replica_tag}


def _without_batch(config: StageConfig | None) -> dict[str, Any] | None:
    return None if config is None else config.model_dump(exclude={"batch"})


def _close(stage: Any) -> None:
    if stage is not None:
        try:
            close_stage(stage)
        except Exception:  # noqa: BLE001 - closing an old model must not break the new config
            pass


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class StageDeployment(StageReplica):
    """FaceDetect, DetailEnhance, QualityGate and SaveAvatar: the stage named at bind time."""


# ---------------------------------------------------------------- LoadPhoto
MAX_CONCURRENT_FETCHES = 16


@serve.deployment(name="LoadPhoto", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class LoadPhoto(StageReplica):
    """URL inputs are fetched before the stage's lock is taken, concurrently and under the fetch policy's one
    deadline, so a slow URL never holds the replica's one-at-a-time decode; only the decode runs under the lock."""

    def __init__(self, stage: Stage = Stage.LOAD_PHOTO) -> None:
        super().__init__(stage)
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


# ---------------------------------------------------------------- StyleApply
def model_id_for(account: str, token_id: str) -> str:
    return f"{account}/{token_id}"


def stage_call(stages: dict[Stage, Any], job: AvatarJob) -> Any:
    """The orchestrator's `call` for `job` over stage handles: a handle call per stage, a custom style through
    model multiplexing. Shared by the ingress (synchronous requests) and the job runner (jobs and batches)."""
    from avatar.contracts import is_style_token
    model_id = model_id_for(job.account, job.style) if job.account and is_style_token(job.style) else None

    def call(stage: Stage, *args: Any, method: str = "run") -> Any:
        handle = stages[stage]
        if stage is Stage.STYLE_APPLY and model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        return getattr(handle, method).remote(*args)

    return call


@serve.deployment(name="StyleApply", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class StyleApply(StageReplica):
    """Custom style tokens arrive through Serve model multiplexing: the ingress sends a custom-style job with
    `multiplexed_model_id="<account>/<token_id>"`, Serve routes it to a replica that already holds that token when it
    can, and `get_token` loads it from storage otherwise (an LRU of `MAX_TOKENS_PER_REPLICA` per replica). The job
    leaves with a small `{id, version, params}` summary of the token, never its LUT."""

    def __init__(self, stage: Stage = Stage.STYLE_APPLY) -> None:
        super().__init__(stage)
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


# ---------------------------------------------------------------- BgGenerate
@serve.deployment(name="BgGenerate", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4)
class BgGenerate(StageReplica):
    def __init__(self, stage: Stage = Stage.BG_GENERATE) -> None:
        super().__init__(stage)

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


DEPLOYMENTS = {Stage.LOAD_PHOTO: LoadPhoto, Stage.STYLE_APPLY: StyleApply, Stage.BG_GENERATE: BgGenerate}


def stage_deployment(stage: Stage):
    """The Serve deployment of `stage`, named as serve_config.yaml names it."""
    if stage in DEPLOYMENTS:
        return DEPLOYMENTS[stage]
    return StageDeployment.options(name=stage.deployment)
