"""Accepting work for later: an asynchronous generate (`Prefer: respond-async`) and a team batch become a job in the
job store, answered 202 with the job's view; the runner does the rest.

Everything a caller can get wrong about the request itself is refused now, with the synchronous route's 4xx codes
(fields, style ownership, webhook URL and events, batch size, duplicate external ids); what can only be known by
looking at a photo (corrupt file, no face) fails that item later with the same codes, without failing the batch.
Uploaded photos are kept in storage only until their item is done.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import Header, Request
from starlette.responses import JSONResponse

from avatar.contracts import BatchRequest, GenerateRequest, WebhookFields, parse_request
from avatar.errors import AvatarError, InvalidRequest, Unauthorized
from avatar.settings import settings
from avatar.spec import AvatarSpec
from avatar.store.fetch import FetchPolicy
from avatar.store.jobs import BATCH, GENERATE, new_job_id
from avatar.vision.imageio import b64decode_image
from avatar.webhooks import check_events, check_webhook_url
from service import idempotency
from service.answers import job_view, status_url
from service.http import BodyReader, Payload

WEBHOOK_FIELDS = ("webhook_url", "webhook_events")
INPUTS_PREFIX = "job-inputs"


def upload_key(job_id: str, idx: int) -> str:
    """Where an uploaded photo waits for its item (the runner deletes it once the item is done)."""
    return f"{INPUTS_PREFIX}/{job_id}/{idx}"


Prefer = Annotated[list[str] | None, Header(
    alias="Prefer", description="`respond-async`: answer 202 with a job instead of waiting (API key required).")]
"""A route's `Prefer` request headers (RFC 7240: any number of them, each a list of preferences)."""


def wants_async(prefer: list[str] | None) -> bool:
    """`Prefer: respond-async`, alone or among other preferences."""
    prefs = ",".join(prefer or [])
    return any(p.split("=")[0].split(";")[0].strip().lower() == "respond-async" for p in prefs.split(","))


def require_account(account: str | None) -> str:
    if account is None:
        raise Unauthorized("jobs and batches belong to an account: send 'Authorization: Bearer <api key>'",
                           field="authorization", code="missing_api_key")
    return account


async def webhook_of(fields: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The webhook URL (checked against the delivery policy now) and event filter of a request's fields."""
    events = fields.get("webhook_events")
    if isinstance(events, str):   # a form field: comma-separated or a JSON list
        try:
            events = json.loads(events) if events.strip().startswith("[") else \
                [e.strip() for e in events.split(",") if e.strip()]
        except ValueError:
            raise InvalidRequest("webhook_events must be a JSON list or comma-separated names",
                                 field="webhook_events", code="invalid_webhook_events") from None
    spec = parse_request(WebhookFields, {"webhook_url": fields.get("webhook_url") or None,
                                         "webhook_events": events})
    filt = check_events(spec.webhook_events)
    if spec.webhook_url:
        env = settings()
        policy = FetchPolicy(timeout_s=env.webhook_timeout_s, allow_private=env.webhook_allow_private)
        await asyncio.to_thread(check_webhook_url, spec.webhook_url, policy)
    return spec.webhook_url, filt


async def _authorize(ingress: Any, account: str, spec: AvatarSpec) -> None:
    await ingress.auth.authorize_style(account, spec.job(request_id=""))


def _accepted(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=202, headers={"Location": body["status_url"],
                                                        "Preference-Applied": "respond-async"})


# ---------------------------------------------------------------- asynchronous generate
async def submit_generate(request: Request, ingress: Any, account: str | None, body: BodyReader,
                          payload: dict[str, Any], upload: bytes | None, key: str | None) -> JSONResponse:
    """The generate request as a job: 202 with its view; `GET status_url` answers the synchronous body when done."""
    account = require_account(account)
    hold, replay = await idempotency.begin(key, lambda: ingress.jobs, account, "generate_async",
                                           idempotency.fingerprint(payload, upload))
    if replay is not None:
        return replay
    async with hold.guard():
        fields = {k: v for k, v in payload.items() if k not in WEBHOOK_FIELDS}
        req: GenerateRequest = body.parse(fields)
        webhook_url, events = await webhook_of(payload)
        spec = req.spec()
        await _authorize(ingress, account, spec)
        job_id = new_job_id()
        source: dict[str, Any] = {"cache": req.cache_input}
        data = upload if upload is not None else (b64decode_image(req.image) if req.image is not None else None)
        if data is not None:
            source["upload"] = upload_key(job_id, 0)
            await asyncio.to_thread(ingress.storage.put, source["upload"], data)
        elif req.image_url is not None:
            source["url"] = req.image_url
        else:
            source = {"input_id": req.input_id}
        params = spec.params()
        terms = await ingress.billing.job_terms(account, spec.style, spec.platform, [spec.external_id])
        if terms:
            params["billing"] = {**terms, "external_id": req.external_id}
        job = await asyncio.to_thread(ingress.jobs.create_job, account, GENERATE, params,
                                      [(None, source)], ingress.base_url(request), webhook_url, events,
                                      settings().job_ttl_s, job_id)
        ingress.wake_runner()
        body = job_view(job)
        await hold.save(202, body)
    return _accepted(body)


# ---------------------------------------------------------------- team batches
async def submit_batch(request: Request, ingress: Any, account: str, body: BodyReader,
                       key: str | None) -> JSONResponse:
    """A team batch: JSON items (image, image_url or input_id each) or multipart `images` files."""
    limits = ingress.config.batches
    read = await body.read(limits.max_upload_bytes, max_files=limits.max_items + 1)
    payload, uploads = _batch_form(read) if read.multipart else (read.fields, {})
    items = payload.get("items")
    if isinstance(items, list) and len(items) > limits.max_items:
        raise InvalidRequest(f"a batch takes at most {limits.max_items} items; this one has {len(items)}",
                             field="items", code="too_many_items")
    hold, replay = await idempotency.begin(key, lambda: ingress.jobs, account, "batch",
                                           idempotency.fingerprint(payload, *uploads.values()))
    if replay is not None:
        return replay
    async with hold.guard():
        batch: BatchRequest = body.parse(payload)
        spec = batch.spec()
        webhook_url, events = await webhook_of(payload)
        await _authorize(ingress, account, spec)
        params = spec.params()
        terms = await ingress.billing.job_terms(account, spec.style, spec.platform,
                                                [item.external_id for item in batch.items])
        if terms:
            params["billing"] = terms
        job_id = new_job_id()
        sources = await asyncio.to_thread(_store_sources, ingress.storage, job_id, batch, uploads)
        job = await asyncio.to_thread(ingress.jobs.create_job, account, BATCH, params,
                                      sources, ingress.base_url(request), webhook_url, events,
                                      settings().job_ttl_s, job_id)
        ingress.wake_runner()
        body = job_view(job)
        await hold.save(202, body)
    return _accepted(body)


def _store_sources(storage: Any, job_id: str, batch: BatchRequest,
                   uploads: dict[int, bytes]) -> list[tuple[str | None, dict[str, Any]]]:
    """Each member's photo source; photos sent in the request are stored until their item runs. A photo that is
    not even base64 fails its own item, not the batch."""
    sources: list[tuple[str | None, dict[str, Any]]] = []
    for i, item in enumerate(batch.items):
        source: dict[str, Any] = {"cache": item.cache_input}
        data = uploads.get(i)
        if data is None and item.image is not None:
            try:
                data = b64decode_image(item.image, field=f"items[{i}].image")
            except AvatarError as exc:
                sources.append((item.external_id, {"error": exc.to_body()}))
                continue
        if data is not None:
            source["upload"] = upload_key(job_id, i)
            storage.put(source["upload"], data)
        elif item.image_url is not None:
            source["url"] = item.image_url
        else:
            source = {"input_id": item.input_id}
        sources.append((item.external_id, source))
    return sources


def _batch_form(read: Payload) -> tuple[dict[str, Any], dict[int, bytes]]:
    """Multipart: `images` file parts (each member's external id is the file name without its extension, or the
    `external_ids` field's JSON list, in order) and the shared fields."""
    fields = dict(read.fields)
    uploads = {i: data for i, (_, data) in enumerate(read.files)}
    names = [PurePath(name or f"item_{i}").stem or f"item_{i}" for i, (name, _) in enumerate(read.files)]
    if not names:
        raise InvalidRequest("no 'images' file parts in the upload", field="images", code="missing_images")
    if "external_ids" in fields:
        try:
            ids = json.loads(fields.pop("external_ids"))
        except ValueError:
            ids = None
        if not isinstance(ids, list) or len(ids) != len(names) or not all(isinstance(i, str) for i in ids):
            raise InvalidRequest("external_ids must be a JSON list of strings, one per 'images' file part",
                                 field="external_ids")
        names = ids
    fields = {k: v for k, v in fields.items() if v != ""}   # an empty form field means "not given"
    for key in ("match_lighting",):
        if key in fields:
            fields[key] = str(fields[key]).strip().lower() in ("1", "true", "yes", "on")
    if "style_intensity" in fields and fields["style_intensity"] != "":
        try:
            fields["style_intensity"] = float(fields["style_intensity"])
        except ValueError:
            raise InvalidRequest("style_intensity must be a number from 0 to 1", field="style_intensity") from None
    fields["items"] = [{"external_id": name, "image": ""} for name in names]
    return fields, uploads


__all__ = ["Prefer", "require_account", "status_url", "submit_batch", "submit_generate", "wants_async"]
