"""The one table of stages and their configuration: each stage's `user_config` model and builder, by `Stage`, as the
stage modules declare them (`avatar.stages`).

The models forbid unknown keys, so a typo in `serve_config.yaml` fails start-up naming the field instead of being
ignored. Shared by the Serve replicas, the launcher's config check and the in-process pipeline.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from avatar.flow.names import Stage
from avatar.stages import DEFINITIONS, StageConfig, StageDefinition

STAGES: dict[Stage, StageDefinition] = {Stage(d.name): d for d in DEFINITIONS}


class ConfigError(ValueError):
    """A deployment's `user_config` does not validate; the message names the deployment and the field."""


def stage_config(stage: Stage, raw: dict[str, Any] | None) -> StageConfig:
    """`raw` validated as `stage`'s config; ConfigError names `<Deployment>.user_config.<field>` and the reason."""
    try:
        return STAGES[stage].config.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(describe_invalid(stage.deployment, exc)) from None


def describe_invalid(deployment: str, exc: ValidationError) -> str:
    problems = ["{}.user_config.{}: {}".format(deployment, ".".join(str(p) for p in err["loc"]) or "(root)",
                                               err["msg"]) for err in exc.errors()]
    return "invalid serve config: " + "; ".join(problems)


def build_stage(stage: Stage, raw: dict[str, Any] | StageConfig | None) -> Any:
    """The loaded stage for a raw or validated config."""
    cfg = raw if isinstance(raw, StageConfig) else stage_config(stage, raw)
    return STAGES[stage].build(cfg)
