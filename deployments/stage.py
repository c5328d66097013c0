"""The shared base of the stage deployments (`deployments/<stage>.py`): one pipeline stage in a Serve replica.

A replica builds its stage from `user_config` at start-up (models load here, never in a request), runs one job at a
time off the event loop (health checks and queueing stay responsive) and rebuilds in place when an operator changes
the config; a change of only `batch` reloads nothing. Each stage's deployment module subclasses `StageReplica`, names
its stage in `stage_name` and declares its own resources, autoscaling and batching; serve_config.yaml overrides them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from avatar.flow.assembly import build_stage, stage_config
from avatar.flow.names import Stage
from avatar.stages import BatchConfig, StageConfig, close_stage
from service import memory
from service.handles import replica_location


class StageReplica:
    """One pipeline stage in a Serve replica."""

    stage_name: ClassVar[Stage]   # the stage this deployment serves: set by each deployment class

    def __init__(self) -> None:
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


def _without_batch(config: StageConfig | None) -> dict[str, Any] | None:
    return None if config is None else config.model_dump(exclude={"batch"})


def _close(stage: Any) -> None:
    if stage is not None:
        try:
            close_stage(stage)
        except Exception:  # noqa: BLE001 - closing an old model must not break the new config
            pass
