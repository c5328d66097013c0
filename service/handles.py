"""Calling the stage deployments through Serve handles, and where this replica runs.

Shared by the ingress (synchronous requests) and the job runner (jobs and batches); the stage deployments themselves
live in `deployments/`, which the HTTP layer never imports: it only holds handles to them.
"""

from __future__ import annotations

from typing import Any

from avatar.flow.names import Stage
from avatar.job import AvatarJob


def model_id_for(account: str, token_id: str) -> str:
    return f"{account}/{token_id}"


def stage_call(stages: dict[Stage, Any], job: AvatarJob) -> Any:
    """The orchestrator's `call` for `job` over stage handles: a handle call per stage, a custom style through
    model multiplexing. Shared by the ingress (synchronous requests) and the job runner (jobs and batches)."""
    from avatar.contracts import is_style_token
    model_id = model_id_for(job.account, job.style) if job.account and is_style_token(job.style) else None

    def call(stage: Stage, *args: Any, method: str = "run") -> Any:
        handle = stages[stage]
        if stage is Stage.STYLE_APPLY and model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        return getattr(handle, method).remote(*args)

    return call


def replica_location() -> dict[str, str]:
    import ray
    from ray import serve
    context = serve.get_replica_context()
    return {"node_id": ray.get_runtime_context().get_node_id(), "replica": context.replica_tag}
