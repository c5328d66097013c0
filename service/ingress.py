"""AvatarIngress: the HTTP front door (FastAPI through `@serve.ingress`). Admission (parsing, validation, limits,
timeouts, auth) happens here; model work happens in the stage deployments, which hand their results to each other
directly: the ingress sees only the gate's verdicts and the final, image-free job."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from avatar.contracts import GenerateResponse, ValidationWarning, is_style_token
from avatar.flow.names import Stage
from avatar.flow.orchestrator import StageCall
from avatar.job import AvatarJob
from avatar.settings import settings
from avatar.store.storage import Storage, UrlSigner
from service.app import app
from service.auth import Authenticator
from service.billing import Billing
from service.config import INGRESS, IngressConfig, ingress_config
from service.replicas import model_id_for, replica_location
from service.telemetry import Telemetry


class Ingress:
    """What the routes use: stage handles, configuration, auth, signer, storage and telemetry of this replica.
    Plain Python, so the HTTP layer can be tested with stand-in handles and no cluster."""

    def __init__(self, **stages: DeploymentHandle | None) -> None:
        """`stages`: one handle per pipeline stage, by stage name (`quality_gate` may be left out)."""
        self.stages = {Stage(name): handle for name, handle in stages.items() if handle is not None}
        env = settings()
        self.public_url = env.public_url
        self.signer = UrlSigner(env.url_signing_key(), env.url_ttl_s)
        self.storage = Storage(env.resolved_storage_uri)
        self.auth = Authenticator(env.resolved_database_url)
        self.config = IngressConfig()
        self.billing = Billing(env.resolved_database_url, self.config.accounts,
                               plan_of=lambda account: self.auth.store.get_account(account))
        self.usage_uri = env.resolved_usage_uri
        self.telemetry = Telemetry(self.usage_uri, self.config.usage_flush_interval_s)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.config = ingress_config(user_config)
        self.billing.config = self.config.accounts
        self.billing.stale_after_s = max(600.0, 3 * self.config.request_timeout_s)
        self.telemetry.flush_interval_s = self.config.usage_flush_interval_s

    def __del__(self) -> None:   # Serve calls this on graceful shutdown: buffered usage rows are written
        telemetry = getattr(self, "telemetry", None)
        if telemetry is not None:
            telemetry.close()

    # ------------------------------------------------------------ the pipeline
    @property
    def gated(self) -> bool:
        return Stage.QUALITY_GATE in self.stages

    def stage_call(self, job: AvatarJob) -> StageCall:
        """The orchestrator's `call` for `job`: a handle call per stage, its custom style through multiplexing."""
        model_id = model_id_for(job.account, job.style) if job.account and is_style_token(job.style) else None

        def call(stage: Stage, *args: Any, method: str = "run") -> Any:
            handle = self.stages[stage]
            if stage is Stage.STYLE_APPLY and model_id:
                handle = handle.options(multiplexed_model_id=model_id)
            return getattr(handle, method).remote(*args)

        return call

    def location(self) -> dict[str, str] | None:
        """The node and replica answering (None outside Serve: tests with stand-in handles)."""
        try:
            return replica_location()
        except Exception:  # noqa: BLE001 - no replica context
            return None

    def style_jobs(self):
        from training.jobs import StyleJobs
        return StyleJobs(self.storage.uri, self.auth.uri, **self.config.styles.training)

    # ------------------------------------------------------------ answers
    def response(self, request: Request, job: AvatarJob, latency_ms: float) -> GenerateResponse:
        base = self.config.public_url or self.public_url or str(request.base_url)
        avatar_url, expires = self.signer.sign(base, job.avatar_key)
        thumb_url, _ = self.signer.sign(base, job.thumbnail_key)
        gate = job.gate
        return GenerateResponse(
            avatar_url=avatar_url, thumbnail_url=thumb_url,
            expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            face_detected=True, face_count=job.face_count, face_coverage=job.face_coverage,
            input_quality_score=job.input_quality_score, likeness_score=round(float(job.likeness_score), 4),
            validation_warnings=[ValidationWarning(code=w.code, message=w.message) for w in job.warnings],
            style=job.style, style_version=(job.token or {}).get("version"), platform=job.platform,
            width=job.size, height=job.size, request_id=job.request_id, attempts=job.attempt,
            attempt_history=job.history, billable=job.billable, checks=gate.checks if gate else {},
            auto_accept=bool(gate and gate.auto_accept), needs_review=bool(gate and gate.needs_review),
            latency_ms=latency_ms, stage_ms=job.timings, created_at=job.created_at, **job.input_fields())




AvatarIngress = serve.deployment(name=INGRESS, ray_actor_options={"num_cpus": 0.25},
                                 max_ongoing_requests=64)(serve.ingress(app)(Ingress))
