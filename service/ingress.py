"""The HTTP front door's state (`deployments/ingress.py` serves it as `AvatarIngress` through `@serve.ingress`).
Admission (parsing, validation, limits, timeouts, auth) happens here; model work happens in the stage deployments,
which hand their results to each other directly: the ingress sees only the gate's verdicts and the final, image-free
job."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from ray.serve.handle import DeploymentHandle

from avatar.contracts import GenerateResponse
from avatar.flow.names import Stage
from avatar.flow.orchestrator import StageCall
from avatar.job import AvatarJob
from avatar.settings import settings
from avatar.store.jobs import JobStore, open_job_store
from avatar.store.storage import Storage, UrlSigner
from service.answers import generate_response
from service.admission import Admission
from service.auth import Authenticator
from service.billing import Billing
from service.config import IngressConfig, ingress_config
from service.handles import replica_location, stage_call
from service.telemetry import Telemetry


class Ingress:
    """What the routes use: stage handles, configuration, auth, signer, storage and telemetry of this replica.
    Plain Python, so the HTTP layer can be tested with stand-in handles and no cluster."""

    def __init__(self, job_runner: DeploymentHandle | None = None, **stages: DeploymentHandle | None) -> None:
        """`stages`: one handle per pipeline stage, by stage name (`quality_gate` may be left out); `job_runner`:
        the deployment that runs asynchronous jobs and batches."""
        self.stages = {Stage(name): handle for name, handle in stages.items() if handle is not None}
        self.job_runner = job_runner
        self._jobs: JobStore | None = None
        env = settings()
        self.public_url = env.public_url
        self.signer = UrlSigner(env.url_signing_key(), env.url_ttl_s)
        self.storage = Storage(env.resolved_storage_uri)
        self.auth = Authenticator(env.resolved_database_url)
        self.config = IngressConfig()
        self.billing = Billing(env.resolved_database_url, self.config.accounts,
                               plan_of=lambda account: self.auth.store.get_account(account))
        self.admission = Admission(self.config.admission)
        self.operator_key = env.operator_key.get_secret_value().encode() if env.operator_key else b""
        self.usage_uri = env.resolved_usage_uri
        self.telemetry = Telemetry(self.usage_uri, self.config.usage_flush_interval_s, env.resolved_usage_journal_dir)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.config = ingress_config(user_config)
        self.admission.config = self.config.admission
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
        return stage_call(self.stages, job)

    def location(self) -> dict[str, str] | None:
        """The node and replica answering (None outside Serve: tests with stand-in handles)."""
        try:
            return replica_location()
        except Exception:  # noqa: BLE001 - no replica context
            return None

    def style_jobs(self):
        from training.jobs import JobLimits, StyleJobs
        styles = self.config.styles
        return StyleJobs(self.storage.uri, self.auth.uri, JobLimits(styles.max_running_jobs, styles.max_queued_jobs),
                         **styles.training)

    # ------------------------------------------------------------ answers
    def base_url(self, request: Request) -> str:
        """Where signed URLs point: the configured public URL; else, behind a proxy the operator trusts, its
        X-Forwarded-Proto/-Host; else the address the request arrived on. Never the client's Host header, which would
        let a caller hand out links to a host of its choosing."""
        if self.config.public_url or self.public_url:
            return self.config.public_url or self.public_url
        if self.config.trusted_proxy_headers and request.headers.get("x-forwarded-host"):
            proto = request.headers.get("x-forwarded-proto", "https").split(",")[0].strip()
            host = request.headers["x-forwarded-host"].split(",")[0].strip()
            return f"{proto}://{host}{request.scope.get('root_path', '')}"
        host, port = request.scope.get("server") or ("127.0.0.1", 8000)
        scheme = request.scope.get("scheme", "http")
        default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}{'' if default else f':{port}'}{request.scope.get('root_path', '')}"

    def response(self, request: Request, job: AvatarJob, latency_ms: float) -> GenerateResponse:
        return generate_response(self.signer, self.base_url(request), job, latency_ms)

    # ------------------------------------------------------------ jobs
    @property
    def jobs(self) -> JobStore:
        """The job store (opened on first use): jobs, batches, idempotency records, webhook secrets."""
        if self._jobs is None:
            self._jobs = open_job_store(settings().resolved_jobs_uri)
        return self._jobs

    def wake_runner(self) -> None:
        """Tell the job runner new work is queued (it also polls the store, so a lost wake-up only delays)."""
        if self.job_runner is not None:
            self.job_runner.wake.remote()

