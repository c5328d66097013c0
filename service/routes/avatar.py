"""`/v1/avatar`: generate an avatar from a photo, or check a photo before generating."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from avatar.contracts import CheckRequest, CheckResponse, GenerateRequest, GenerateResponse, JobView
from avatar.errors import AvatarError, InsufficientCredits
from avatar.flow import orchestrator
from avatar.job import AvatarJob, PhotoInput
from avatar.vision.imageio import b64decode_image
from service import memory
from service.account_headers import note_credits
from service.dependencies import Account, Ingress
from service.errors import as_avatar_error, error_response
from service import idempotency
from service.http import BodyOf, BodyReader, read_photo_payload
from service.idempotency import IdempotencyKey
from service.openapi import ERRORS
from service.submit import Prefer, submit_generate, wants_async

log = logging.getLogger("avatar.routes")

router = APIRouter(prefix="/v1/avatar", tags=["avatar"])

_PHOTO_HINT = "send a JSON object with 'image' or 'image_url'"
GENERATE_BODY = BodyOf(GenerateRequest, "image", "the photo", empty_hint=_PHOTO_HINT)
CHECK_BODY = BodyOf(CheckRequest, "image", "the photo", empty_hint=_PHOTO_HINT)


@router.post("/generate", response_model=GenerateResponse,
             responses={**ERRORS, 202: {"model": JobView, "description": "Accepted as a job (Prefer: respond-async)"},
                        409: ERRORS[400] | {"description": "The same Idempotency-Key is still in progress"}},
             summary="Turn a photo into a platform-ready avatar")
async def generate(request: Request, ingress: Ingress, account: Account,
                   body: Annotated[BodyReader, Depends(GENERATE_BODY)], prefer: Prefer = None,
                   key: IdempotencyKey = None) -> GenerateResponse | JSONResponse:
    """JSON with `image` (base64), `image_url` or `input_id`, or a multipart form with an `image` file part.

    `Prefer: respond-async` makes it a job: 202 with the job's status URL (API key required; `webhook_url` and
    `webhook_events` fields subscribe to its events), and `GET /v1/jobs/{job_id}` answers this same body when done.
    `Idempotency-Key` makes a retry safe: the same key and body answer the original response, with no new charge."""
    started = time.perf_counter()
    if wants_async(prefer):   # queued in the job store; the runner paces the pipeline
        payload, upload = await read_photo_payload(body, ingress.config.max_body_bytes)
        return await submit_generate(request, ingress, account, body, payload, upload, key)
    async with admitted(ingress, account, started, "generate") as refusal:
        if refusal is not None:
            return refusal
        payload, upload = await read_photo_payload(body, ingress.config.max_body_bytes)
        hold, replay = await idempotency.begin(key, lambda: ingress.jobs, account, "generate",
                                               idempotency.fingerprint(payload, upload))
        if replay is not None:
            return replay
        async with hold.guard():
            answer = await _generate(request, ingress, account, body.parse(payload), upload, started)
            await hold.finish(answer)
    memory.release()   # a large body must not leave the ingress at its peak RSS
    return answer


async def _generate(request: Request, ingress, account: str | None, req: GenerateRequest, upload: bytes | None,
                    started: float) -> GenerateResponse | JSONResponse:
    job = req.spec().job(account=account)
    await ingress.auth.authorize_style(account, job)   # a custom token must be the account's own
    credits_shown = ingress.billing.config.credits   # 402 below, before any work
    try:
        charge = note_credits(request, credits_shown, await ingress.billing.hold(account, job, req.external_id))
    except InsufficientCredits as refused:
        await asyncio.to_thread(ingress.telemetry.refused, job, refused.code, _ms(started),
                                external_id=req.external_id)
        raise
    timeout = ingress.config.request_timeout_s
    try:
        done = await asyncio.wait_for(
            orchestrator.generate(job, photo_input(req, upload), ingress.stage_call(job), ingress.gated),
            _left(timeout, started))
    except Exception as exc:  # noqa: BLE001 - every failure answers JSON; the service stays up
        error = as_avatar_error(exc, timeout)
        if error.status >= 500:
            log.error("request %s failed: %s (%s)", job.request_id, error.message, type(exc).__name__)
        note_credits(request, credits_shown, await ingress.billing.release(charge))   # a refusal costs nothing
        job.input_quality_score = float(error.extra.get("input_quality_score", 0.0))
        await asyncio.to_thread(ingress.telemetry.refused, job, error.code, _ms(started),   # durable first
                                external_id=req.external_id)
        return error_response(error, job.request_id)
    body = ingress.response(request, done, _ms(started))
    charge = note_credits(request, credits_shown, await ingress.billing.settle(charge, done.billable))
    await asyncio.to_thread(ingress.telemetry.delivered, done, body.latency_ms,   # on disk before the answer
                            credits=charge.charged if charge else 0, external_id=req.external_id)
    return body



@router.post("/check", response_model=CheckResponse, responses=ERRORS,
             summary="Pre-flight checks of a photo (no generation, no charge)")
async def check(ingress: Ingress, account: Account,
                body: Annotated[BodyReader, Depends(CHECK_BODY)]) -> CheckResponse | JSONResponse:
    """Face count, coverage, head angle and quality, as generate would see them."""
    started = time.perf_counter()
    async with admitted(ingress, account, started, "check") as refusal:
        if refusal is not None:
            return refusal
        payload, upload = await read_photo_payload(body, ingress.config.max_body_bytes)
        req: CheckRequest = body.parse(payload)
        job = AvatarJob(request_id=AvatarJob.new_request_id(), style="", platform=req.platform, size=0, intensity=0,
                        account=account)
        timeout = ingress.config.request_timeout_s
        try:
            report = await asyncio.wait_for(orchestrator.check(job, photo_input(req, upload), ingress.stage_call(job)),
                                            _left(timeout, started))
        except Exception as exc:  # noqa: BLE001 - every failure answers JSON; the service stays up
            error = as_avatar_error(exc, timeout)
            ingress.telemetry.checked(error.code)
            return error_response(error, job.request_id)
        ingress.telemetry.checked("accepted" if report["accepted"] else "not_accepted")
    memory.release()
    return CheckResponse(**report, platform=req.platform, request_id=job.request_id)


@asynccontextmanager
async def admitted(ingress, account: str | None, started: float, route: str) -> AsyncIterator[JSONResponse | None]:
    """A pipeline turn for the request (yields None), or its refusal (yields the 503/429 answer, recorded like any
    other request). The turn is taken before the body is read or parsed, so a refusal costs almost nothing."""
    error: AvatarError | None = None
    try:
        await ingress.admission.acquire(account)
    except AvatarError as refused:
        error = refused
    if error is not None:
        request_id = AvatarJob.new_request_id()
        if route == "generate":
            job = AvatarJob(request_id=request_id, style="", platform="", size=0, intensity=0, account=account)
            await asyncio.to_thread(ingress.telemetry.refused, job, error.code, _ms(started))
        else:
            ingress.telemetry.checked(error.code)
        yield error_response(error, request_id)
        return
    try:
        yield None
    finally:
        ingress.admission.release(account)


def _left(timeout: float, started: float) -> float:
    """What remains of the request's deadline (the wait for a turn counts)."""
    return max(timeout - (time.perf_counter() - started), 0.001)


def photo_input(req: GenerateRequest | CheckRequest, upload: bytes | None) -> PhotoInput:
    if req.input_id is not None:
        return PhotoInput(input_id=req.input_id, field="input_id")
    if upload is not None:
        return PhotoInput(data=upload, field="image", cache=req.cache_input)
    if req.image is not None:
        return PhotoInput(data=b64decode_image(req.image), field="image", cache=req.cache_input)
    return PhotoInput(url=req.image_url, field="image_url", cache=req.cache_input)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
