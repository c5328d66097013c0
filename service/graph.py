"""Wires the avatar DAG: the ingress over the six stages and the quality gate, bound by stage name."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from avatar.flow.names import Stage
from service.ingress import AvatarIngress
from service.replicas import stage_deployment


def build_app(options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The app; `options` maps deployment names to `.options(...)` overrides (how `avatar serve` applies the config)."""
    options = options or {}

    def bound(deployment, *args, **kwargs):
        return deployment.options(**options.get(deployment.name, {})).bind(*args, **kwargs)

    return bound(AvatarIngress, **{stage.value: bound(stage_deployment(stage), stage) for stage in Stage})


app = build_app()
