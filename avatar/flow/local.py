"""The whole flow in one process, for the CLI, tests and benchmarks: same stages and orchestration as the Serve app."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any

from avatar.contracts import GenerateRequest
from avatar.flow import orchestrator
from avatar.flow.assembly import STAGES, build_stage
from avatar.flow.names import Stage
from avatar.job import AvatarJob, PhotoInput
from avatar.stages import close_stage


@dataclass
class LocalPipeline:
    """Builds every stage from `configs` (deployment user_config dicts keyed by stage name) and runs them in-process."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    gate: bool = True

    def __post_init__(self) -> None:
        names = [s for s in STAGES if self.gate or s != Stage.QUALITY_GATE]
        self.stages = {s.value: build_stage(s, self.configs.get(s.value)) for s in names}

    def _call(self, stage: Stage, *args: Any, method: str = "run") -> asyncio.Future:
        """Starts the stage once its arguments (earlier results) are ready, like a Serve handle call."""
        async def run() -> Any:
            ready = [await a if inspect.isawaitable(a) else a for a in args]
            return getattr(self.stages[stage], method)(*ready)
        return asyncio.ensure_future(run())

    def close(self) -> None:
        """Release model runtimes (MediaPipe objects must be closed before interpreter exit)."""
        for stage in self.stages.values():
            close_stage(stage)

    def __enter__(self) -> "LocalPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, request: GenerateRequest, source: PhotoInput) -> AvatarJob:
        return self.run(request.spec().job(), source)

    def run(self, job: AvatarJob, source: PhotoInput) -> AvatarJob:
        """The flow for a job built by the caller (batches set team options on it)."""
        return asyncio.run(orchestrator.generate(job, source, self._call, self.gate))
