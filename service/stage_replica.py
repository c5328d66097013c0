"""What every stage deployment shares: build the stage from `user_config` at start-up, run one job at a time off the
event loop (health checks and queueing stay responsive), rebuild in place when an operator changes the config."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from avatar.flow.stages import close_stage

DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_S = 0.02


class StageReplica:
    """Base of the stage deployments. Subclasses set `build`, a factory from config dict to a pure stage."""

    build: Callable[[dict[str, Any]], Any]

    def __init__(self) -> None:
        self.stage: Any = None
        self.config: dict[str, Any] | None = None
        self._lock = threading.Lock()   # model runtimes are not re-entrant; replicas give the parallelism

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Called by Serve at start-up and on every `user_config` change: models load here, never in a request."""
        config = dict(config or {})
        if _without_batch(config) != _without_batch(self.config) or self.stage is None:
            stage = type(self).build(config)
            with self._lock:
                old, self.stage, self.config = self.stage, stage, config
            _close(old)
        else:   # only the batching settings changed: no model reload
            self.config = config

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            return getattr(self.stage, method)(*args)

    async def call(self, method: str, *args: Any) -> Any:
        """Runs `stage.<method>(*args)` in a worker thread, one at a time per replica."""
        if self.stage is None:   # deployed without a user_config: build with defaults
            self.reconfigure({})
        return await asyncio.to_thread(self._call, method, *args)

    async def run(self, *args: Any) -> Any:
        return await self.call("run", *args)

    @staticmethod
    def configure_batching(handler: Any, config: dict[str, Any] | None) -> None:
        """Applies `user_config.batch` ({max_batch_size, wait_timeout_s}) to a `@serve.batch` method of a subclass."""
        size, wait = batch_settings(config)
        handler.set_max_batch_size(size)
        handler.set_batch_wait_timeout_s(wait)

    def engine_has(self, method: str) -> bool:
        """Whether the loaded stage's engine offers `method` (e.g. `apply_batch`): picks the batched request path."""
        return callable(getattr(getattr(self.stage, "engine", None), method, None))

    async def check_health(self) -> None:
        if self.stage is None and self.config is not None:
            raise RuntimeError("stage has no loaded components")


def batch_settings(config: dict[str, Any] | None) -> tuple[int, float]:
    """(max_batch_size, wait_timeout_s) from a `batch` block; defaults 4 and 0.02 s. Invalid values fail start-up."""
    batch = dict((config or {}).get("batch") or {})
    unknown = set(batch) - {"max_batch_size", "wait_timeout_s"}
    if unknown:
        raise ValueError(f"unknown batch settings: {', '.join(sorted(unknown))}; use max_batch_size, wait_timeout_s")
    size, wait = batch.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE), batch.get("wait_timeout_s", DEFAULT_BATCH_WAIT_S)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch.max_batch_size must be an integer >= 1, got {size!r}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
        raise ValueError(f"batch.wait_timeout_s must be a number >= 0, got {wait!r}")
    return size, float(wait)


def _without_batch(config: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if config is None else {k: v for k, v in config.items() if k != "batch"}


def _close(stage: Any) -> None:
    if stage is not None:
        try:
            close_stage(stage)
        except Exception:  # noqa: BLE001 - closing an old model must not break the new config
            pass
