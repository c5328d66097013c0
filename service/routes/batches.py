"""`/v1/batches`: a team's photos in one request, one look for all; answered 202 with a job (`/v1/jobs/{id}`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from avatar.contracts import BatchRequest, JobView
from service.dependencies import Ingress, RequiredAccount
from service.http import BodyOf, BodyReader
from service.idempotency import IdempotencyKey
from service.openapi import ERRORS
from service.submit import submit_batch

router = APIRouter(prefix="/v1/batches", tags=["batches"])

BATCH_BODY = BodyOf(BatchRequest, "images", "the photos", cap_field="images",
                    empty_hint="send a JSON object with 'items'")


@router.post("", status_code=202, response_model=JobView, responses=ERRORS,
             summary="Avatars for a whole team in one consistent look")
async def create_batch(request: Request, ingress: Ingress, account: RequiredAccount,
                       body: Annotated[BodyReader, Depends(BATCH_BODY)], key: IdempotencyKey = None) -> JSONResponse:
    """JSON `items` (each an `external_id` and one of `image`, `image_url`, `input_id`) or multipart `images` file
    parts (the file name, without extension, is the external id), plus one style, platform, palette and background
    for everyone. Progress, per-item results and the team's ZIP and contact sheet: `GET /v1/jobs/{job_id}`.
    Send `Idempotency-Key` to make a retry safe."""
    return await submit_batch(request, ingress, account, body, key)
