"""`/v1/jobs`: asynchronous generations and team batches of the caller's account: state, progress, output, webhook
deliveries; per-item results; cancel. Another account's job answers 404, exactly like a missing or expired one."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from avatar.contracts import BatchItemsList, JobsList, JobView
from avatar.errors import NotFound
from avatar.store.jobs import CANCELED, JobRecord
from service.answers import item_view, job_view
from service.delivery import emit
from service.dependencies import Ingress, RequiredAccount
from service.openapi import ERRORS

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Past any batch's size, and inside the 64-bit integers both databases take (a larger offset was a 500, not a 422).
MAX_OFFSET = 2**31 - 1


@router.get("", response_model=JobsList, responses=ERRORS, summary="The account's jobs and batches, newest first")
async def list_jobs(ingress: Ingress, account: RequiredAccount,
                    kind: str | None = Query(None, pattern="^(generate|batch)$"),
                    limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    jobs = await asyncio.to_thread(ingress.jobs.list_jobs, account, limit, kind)
    return {"jobs": [job_view(j) for j in jobs]}


@router.get("/{job_id}", response_model=JobView, responses=ERRORS,
            summary="A job's state, progress, output (the synchronous answer when done) and webhook attempts")
async def get_job(job_id: str, ingress: Ingress, account: RequiredAccount) -> dict[str, Any]:
    job = await _job(ingress, account, job_id)
    deliveries = await asyncio.to_thread(ingress.jobs.deliveries, job_id) if job.webhook_url else []
    return job_view(job, deliveries)


@router.get("/{job_id}/items", response_model=BatchItemsList, responses=ERRORS,
            summary="Per-item results: each member's answer or error (failed items are not billed)")
async def job_items(job_id: str, ingress: Ingress, account: RequiredAccount,
                    offset: int = Query(0, ge=0, le=MAX_OFFSET),
                    limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    job = await _job(ingress, account, job_id)
    items = await asyncio.to_thread(ingress.jobs.items, account, job_id, offset, limit)
    return {"items": [item_view(i) for i in items], "offset": offset, "total": job.total}


@router.post("/{job_id}/cancel", response_model=JobView, responses=ERRORS,
             summary="Cancel a queued or running job (items already finished keep their results)")
async def cancel_job(job_id: str, ingress: Ingress, account: RequiredAccount) -> dict[str, Any]:
    before = await _job(ingress, account, job_id)
    job = await asyncio.to_thread(ingress.jobs.cancel, account, job_id)
    if job is None:
        raise _missing(job_id)
    if before.state != CANCELED and job.state == CANCELED:
        await asyncio.to_thread(emit, ingress.jobs, job, "canceled", job_view(job))
        ingress.wake_runner()
    deliveries = await asyncio.to_thread(ingress.jobs.deliveries, job_id) if job.webhook_url else []
    return job_view(job, deliveries)


async def _job(ingress: Any, account: str, job_id: str) -> JobRecord:
    job = await asyncio.to_thread(ingress.jobs.get_job, account, job_id) if job_id.startswith("job_") else None
    if job is None:
        raise _missing(job_id)
    return job


def _missing(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id[:80]!r} (unknown, expired or another account's)", field="job_id",
                    code="job_not_found")
