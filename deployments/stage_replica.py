"""What every stage deployment shares: build the stage from `user_config` at start-up, run one job at a time off the
event loop (health checks and queueing stay responsive), rebuild in place when an operator changes the config."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from avatar.stages import close_stage


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
        if config != self.config or self.stage is None:
            stage = type(self).build(config)
            with self._lock:
                old, self.stage, self.config = self.stage, stage, config
            _close(old)

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

    async def check_health(self) -> None:
        if self.stage is None and self.config is not None:
            raise RuntimeError("stage has no loaded components")


def _close(stage: Any) -> None:
    if stage is not None:
        try:
            close_stage(stage)
        except Exception:  # noqa: BLE001 - closing an old model must not break the new config
            pass
