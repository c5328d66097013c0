"""The bodies the API answers with, built in one place so a synchronous generate, an asynchronous job's output and a
batch member's result are the same JSON: the generate answer, a job's view and a batch item's view."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from avatar.contracts import GenerateResponse, ValidationWarning
from avatar.job import AvatarJob
from avatar.store.jobs import RUNNING, DeliveryRecord, ItemRecord, JobRecord
from avatar.store.storage import UrlSigner


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_response(signer: UrlSigner, base_url: str, job: AvatarJob, latency_ms: float) -> GenerateResponse:
    """The answer of a generate request for a finished `job`, its URLs signed under `base_url`."""
    avatar_url, expires = signer.sign(base_url, job.avatar_key)
    thumb_url, _ = signer.sign(base_url, job.thumbnail_key)
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


def status_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def job_view(job: JobRecord, deliveries: list[DeliveryRecord] | None = None,
             now: float | None = None) -> dict[str, Any]:
    """A job's state, progress, output and webhook deliveries (every attempt), as `GET /v1/jobs/{id}` answers."""
    counts = job.counts
    done = job.settled
    body: dict[str, Any] = {
        "job_id": job.job_id, "kind": job.kind, "state": job.state, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at), "expires_at": iso(job.expires_at),
        "status_url": status_url(job.job_id),
        "progress": {"total": job.total, "done": done, "succeeded": counts.get("succeeded", 0),
                     "failed": counts.get("failed", 0), "canceled": counts.get("canceled", 0),
                     "running": counts.get("running", 0), "queued": counts.get("queued", 0),
                     "eta_s": _eta(job, done, now)},
        "output": job.output, "error": job.error, "webhook": None}
    if job.webhook_url:
        body["webhook"] = {"url": job.webhook_url, "events": job.webhook_events,
                           "deliveries": [_delivery(d) for d in deliveries or []]}
    return body


def _eta(job: JobRecord, done: int, now: float | None) -> float | None:
    """Time left at the pace of the items finished so far (None before the first one, 0 once finished)."""
    if job.state != RUNNING:
        return 0.0 if job.finished_at else None
    if not done or job.started_at is None:
        return None
    elapsed = (now or time.time()) - job.started_at
    return round(elapsed / done * (job.total - done), 1)


def _delivery(d: DeliveryRecord) -> dict[str, Any]:
    return {"id": d.delivery_id, "event": d.event, "state": d.state,
            "next_attempt_at": iso(d.next_at) if d.state == "pending" else None,
            "attempts": [{**a, "at": iso(a["at"])} for a in d.attempts]}


def item_view(item: ItemRecord) -> dict[str, Any]:
    return {"index": item.idx, "external_id": item.external_id, "state": item.state, "billable": item.billable,
            "result": item.result, "error": item.error}
