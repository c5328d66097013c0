"""AvatarIngress: the HTTP front door. Admission (parsing, validation, limits, timeouts) lives here; model work
happens in the stage deployments it composes through handles."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avatar.flow import orchestrator
from avatar.settings import ServiceSettings
from avatar.contracts import CheckRequest, GenerateRequest, parse_request
from avatar.errors import AvatarError, NotFound, StageFailed
from avatar.vision.imageio import b64decode_image
from avatar.job import AvatarJob, PhotoInput
from avatar.store.storage import Storage, UrlSigner
from service.http import error_response, openapi_document, parse_payload
from service.styles_api import StylesApi, style_apply_handle
from service.telemetry import Telemetry

log = logging.getLogger("avatar.ingress")

STAGE_NAMES = ("load_photo", "face_detect", "style_apply", "bg_generate", "detail_enhance", "quality_gate",
               "save_avatar")


@dataclass
class IngressConfig:
    request_timeout_s: float = 60.0
    max_body_bytes: int = 20 * 2**20
    public_url: str = ""
    require_api_key: bool = False        # built-in styles too need `Authorization: Bearer <api key>`
    styles: dict[str, Any] | None = None   # custom styles: training defaults, upload limit (docs/custom_styles.md)
    usage_flush_interval_s: float = 30.0


@serve.deployment(name="AvatarIngress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class AvatarIngress:
    def __init__(self, load_photo: DeploymentHandle, face_detect: DeploymentHandle, style_apply: DeploymentHandle,
                 bg_generate: DeploymentHandle, detail_enhance: DeploymentHandle,
                 quality_gate: DeploymentHandle | None, save_avatar: DeploymentHandle) -> None:
        handles = (load_photo, face_detect, style_apply, bg_generate, detail_enhance, quality_gate, save_avatar)
        self.handles = {n: h for n, h in zip(STAGE_NAMES, handles) if h is not None}
        self.settings = ServiceSettings()
        self.signer = UrlSigner(self.settings.signing_secret(), self.settings.url_ttl_s)
        self.storage = Storage(self.settings.resolved_storage_uri)
        self.styles = StylesApi(self.storage)
        self.config = IngressConfig(public_url=self.settings.public_url)
        self.telemetry = Telemetry(self.settings.resolved_usage_uri, self.config.usage_flush_interval_s)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = IngressConfig(**{**self.config.__dict__, **(config or {})})
        self.telemetry.flush_interval_s = self.config.usage_flush_interval_s

    def __del__(self) -> None:   # Serve calls this on graceful shutdown: buffered usage rows are written
        telemetry = getattr(self, "telemetry", None)
        if telemetry is not None:
            telemetry.close()

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        try:
            if path == "/v1/avatar/generate" and method == "POST":
                return await self.generate(request)
            if path == "/v1/styles" or path.startswith("/v1/styles/"):
                return await self.styles.handle(request, path, method, self.config)
            if path == "/v1/avatar/check" and method == "POST":
                return await self.check(request)
            if path.startswith("/v1/files/") and method in ("GET", "HEAD"):
                return self.serve_file(request, path.removeprefix("/v1/files/"))
            if path == "/v1/stats" and method == "GET":
                return JSONResponse(self.telemetry.summary())
            if path == "/healthz" and method == "GET":
                return JSONResponse({"status": "ok"})
            if path in ("/openapi.json", "/v1/openapi.json") and method == "GET":
                return JSONResponse(openapi_document())
            raise NotFound(f"no route {method} {path}", field=None)
        except AvatarError as exc:
            return error_response(exc)

    async def _call(self, name: str, *args: Any) -> AvatarJob:
        handle = self.handles[name]
        if name == "style_apply":   # custom style tokens go through model multiplexing
            handle = style_apply_handle(handle, args[0])
        return await handle.run.remote(*args)

    async def generate(self, request: Request) -> Response:
        started = time.perf_counter()
        account = await self.styles.authenticate(request, self.config)
        payload, upload = await parse_payload(request, self.config.max_body_bytes)
        req: GenerateRequest = parse_request(GenerateRequest, payload)
        source = _photo_input(req, upload)
        job = AvatarJob(request_id=AvatarJob.new_request_id(), style=req.resolved_style, platform=req.platform,
                        size=req.size, intensity=req.resolved_intensity, palette=req.palette,
                        background=req.background)
        await self.styles.authorize_style(account, job)   # a custom token must be the account's own
        try:
            done = await asyncio.wait_for(orchestrator.generate(job, source, self._call, "quality_gate" in self.handles),
                                          timeout=self.config.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - every failure answers JSON; the service stays up
            error = _as_avatar_error(exc, self.config.request_timeout_s)
            if error.status >= 500:
                log.error("request %s failed: %s", job.request_id, error.message)
            job.input_quality_score = float(error.extra.get("input_quality_score", 0.0))
            self.telemetry.refused(job, error.code, _ms(started))
            return error_response(error, job.request_id)
        body = self.response_body(request, done, started)
        self.telemetry.delivered(done, body["latency_ms"])
        return JSONResponse(body)

    async def check(self, request: Request) -> Response:
        """Pre-flight on an upload: face count, coverage, head angle, quality; no generation, nothing charged."""
        account = await self.styles.authenticate(request, self.config)
        payload, upload = await parse_payload(request, self.config.max_body_bytes)
        req: CheckRequest = parse_request(CheckRequest, payload)
        job = AvatarJob(request_id=AvatarJob.new_request_id(), style="", platform=req.platform, size=0, intensity=0,
                        account=account)
        try:
            job = await asyncio.wait_for(self._call("load_photo", job, _photo_input(req, upload)),
                                         timeout=self.config.request_timeout_s)
            report = await asyncio.wait_for(self.handles["face_detect"].call.remote("check", job),
                                            timeout=self.config.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - every failure answers JSON; the service stays up
            error = _as_avatar_error(exc, self.config.request_timeout_s)
            self.telemetry.checked(error.code)
            return error_response(error, job.request_id)
        self.telemetry.checked("accepted" if report["accepted"] else "not_accepted")
        return JSONResponse({**report, **_input_fields(job), "platform": req.platform, "request_id": job.request_id})

    def response_body(self, request: Request, job: AvatarJob, started: float) -> dict[str, Any]:
        base = self.config.public_url or str(request.base_url)
        avatar_url, expires = self.signer.sign(base, job.avatar_key)
        thumb_url, _ = self.signer.sign(base, job.thumbnail_key)
        gate = job.gate
        return {
            "avatar_url": avatar_url, "thumbnail_url": thumb_url,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            "face_detected": True, "face_count": job.face_count, "face_coverage": job.face_coverage,
            "input_quality_score": job.input_quality_score,
            "likeness_score": round(float(job.likeness_score), 4),
            "validation_warnings": [{"code": w.code, "message": w.message} for w in job.warnings],
            "style": job.style, "style_version": (job.token or {}).get("version"), "platform": job.platform,
            "width": job.size, "height": job.size, "request_id": job.request_id,
            "attempts": job.attempt, "attempt_history": job.history, "billable": job.billable, "checks": gate.checks if gate else {},
            "auto_accept": bool(gate and gate.auto_accept), "needs_review": bool(gate and gate.needs_review),
            "latency_ms": _ms(started), "stage_ms": job.timings,
            "created_at": job.created_at, **_input_fields(job),
        }

    def serve_file(self, request: Request, key: str) -> Response:
        self.signer.verify(key, request.query_params.get("expires"), request.query_params.get("signature"))
        data = self.storage.get(key)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def _photo_input(req: GenerateRequest | CheckRequest, upload: bytes | None) -> PhotoInput:
    if req.input_id is not None:
        return PhotoInput(input_id=req.input_id, field="input_id")
    if upload is not None:
        return PhotoInput(data=upload, field="image", cache=req.cache_input)
    if req.image is not None:
        return PhotoInput(data=b64decode_image(req.image), field="image", cache=req.cache_input)
    return PhotoInput(url=req.image_url, field="image_url", cache=req.cache_input)


def _input_fields(job: AvatarJob) -> dict[str, Any]:
    """`input_id` and its expiry when the photo was cached for re-use (cache_input)."""
    if not job.input_id:
        return {}
    return {"input_id": job.input_id,
            "input_expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.input_expires_at or 0))}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _as_avatar_error(exc: Exception, timeout_s: float) -> AvatarError:
    cause = getattr(exc, "cause", None)   # a stage's error arrives wrapped (RayTaskError): answer the original
    if isinstance(cause, AvatarError):
        return cause
    if isinstance(exc, AvatarError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return StageFailed(f"the request took longer than {timeout_s:.0f} s", code="timeout", status=504)
    return _stage_error(exc)


def _stage_error(exc: Exception) -> AvatarError:
    name = type(exc).__name__
    if "BackPressure" in name:
        return StageFailed("the service is at capacity; retry shortly", code="overloaded", status=503)
    if "Unavailable" in name or "ActorDied" in name or "ActorUnavailable" in name:
        return StageFailed("a pipeline stage is restarting; retry shortly", code="stage_unavailable", status=503)
    return StageFailed("the avatar could not be generated because a pipeline stage failed", code="stage_failed")
