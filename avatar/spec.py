"""The resolved parameters of one avatar: what every entry point (synchronous generate, async job, team batch, a
directory batch row, the CLI) builds its `AvatarJob` from, and what the job store keeps for a job run later.

Written once here so a new request field is added in one place; the stored form is this model's JSON, and reading
it back is `AvatarSpec.model_validate`, which also reads params stored before this model existed (same keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from avatar.engines.template import OutputTemplate
from avatar.job import AvatarJob


class AvatarSpec(BaseModel):
    """A generate request with its defaults resolved (style from the platform, size from the resolution, ...)."""

    model_config = ConfigDict(frozen=True, extra="ignore")   # stored params also carry the job's billing terms

    style: str
    platform: str
    size: int
    intensity: float
    palette: str | None = None
    background: str | None = None
    template: OutputTemplate | None = None
    match_lighting: bool = False
    external_id: str | None = None
    quality: Literal["fast", "best"] = "fast"

    def job(self, request_id: str | None = None, account: str | None = None, asynchronous: bool = False
            ) -> AvatarJob:
        """The work item for this spec; a new request id unless the caller has one (a job's item). `asynchronous`:
        nobody waits on a connection for it (a job or batch item), which the learned matte's `use_for` reads."""
        return AvatarJob(request_id=request_id if request_id is not None else AvatarJob.new_request_id(),
                         style=self.style, platform=self.platform, size=self.size, intensity=self.intensity,
                         palette=self.palette, background=self.background, template=self.template,
                         account=account, match_lighting=self.match_lighting, quality=self.quality,
                         asynchronous=asynchronous)

    def params(self) -> dict[str, Any]:
        """The JSON the job store keeps (`model_validate` reads it back)."""
        return self.model_dump(mode="json")


__all__ = ["AvatarSpec"]
