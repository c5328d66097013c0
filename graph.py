"""The avatar app's graph (serve_config.yaml's `import_path: graph:app`): wiring only.

Every stage of the stage table is bound from its deployment module, `deployments/<stage>.py`, whose class is named
as serve_config.yaml names the deployment; the ingress and the job runner get one handle per stage, by stage name
(the runner sends jobs and batch items through the same stage replicas as synchronous requests).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from avatar.flow.names import Stage
from deployments.ingress import AvatarIngress
from deployments.job_runner import JobRunner


def stage_deployment(stage: Stage) -> Deployment:
    """`deployments.<stage>.<Deployment>`, e.g. `deployments.style_apply.StyleApply`."""
    return getattr(import_module(f"deployments.{stage.value}"), stage.deployment)


def build_app(options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The app; `options` maps deployment names to `.options(...)` overrides (how `avatar serve` applies the config)."""
    options = options or {}

    def bound(deployment: Deployment, *args: Any, **kwargs: Any) -> Application:
        return deployment.options(**options.get(deployment.name, {})).bind(*args, **kwargs)

    stages = {stage.value: bound(stage_deployment(stage)) for stage in Stage}
    return bound(AvatarIngress, job_runner=bound(JobRunner, **stages), **stages)


app = build_app()
