"""The whole flow in one process, for the CLI, tests and benchmarks: same stages and orchestration as the Serve app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from avatar.flow import orchestrator
from avatar.flow.assembly import STAGE_BUILDERS
from avatar.contracts import GenerateRequest
from avatar.job import AvatarJob, PhotoInput
from avatar.flow.stages import close_stage


@dataclass
class LocalPipeline:
    """Builds every stage from `configs` (deployment user_config dicts keyed by stage name) and runs them in-process."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    gate: bool = True

    def __post_init__(self) -> None:
        names = [n for n in STAGE_BUILDERS if self.gate or n != "quality_gate"]
        self.stages = {n: STAGE_BUILDERS[n](self.configs.get(n, {})) for n in names}

    async def _call(self, name: str, *args: Any) -> AvatarJob:
        return self.stages[name].run(*args)

    def close(self) -> None:
        """Release model runtimes (MediaPipe objects must be closed before interpreter exit)."""
        for stage in self.stages.values():
            close_stage(stage)

    def __enter__(self) -> "LocalPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, request: GenerateRequest, source: PhotoInput) -> AvatarJob:
        job = AvatarJob(request_id=AvatarJob.new_request_id(), style=request.resolved_style,
                        platform=request.platform, size=request.size, intensity=request.resolved_intensity,
                        palette=request.palette, background=request.background)
        return asyncio.run(orchestrator.generate(job, source, self._call, self.gate))
