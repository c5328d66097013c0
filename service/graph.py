"""Wires the avatar DAG: the ingress and the job runner over the six stages and the quality gate, bound by stage
name (the runner sends jobs and batch items through the same stage replicas as synchronous requests)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from avatar.flow.names import Stage
from service.ingress import AvatarIngress
from service.replicas import stage_deployment
from service.runner import JobRunner


def build_app(options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The app; `options` maps deployment names to `.options(...)` overrides (how `avatar serve` applies the config)."""
    options = options or {}

    def bound(deployment, *args, **kwargs):
        return deployment.options(**options.get(deployment.name, {})).bind(*args, **kwargs)

    stages = {stage.value: bound(stage_deployment(stage), stage) for stage in Stage}
    return bound(AvatarIngress, job_runner=bound(JobRunner, **stages), **stages)


app = build_app()
