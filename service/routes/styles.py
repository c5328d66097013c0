"""`/v1/styles`: an account's custom styles, trained from its example images (docs/custom_styles.md).

Every route needs the account's API key; another account's ids answer 404 exactly like missing ones. Training runs on
the same Ray cluster (`training.jobs.StyleJobs` starts a detached actor); every blocking call (account store,
storage, example validation) runs in a worker thread so the ingress event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from avatar.catalog.platforms import BUILTIN_STYLES
from avatar.contracts import StyleJobRequest, StyleView, StylesList, is_style_token
from avatar.errors import InvalidRequest, NotFound
from avatar.store.accounts import StyleRecord
from avatar.store.storage import Storage
from avatar.tokens import delete_token
from service.auth import style_not_found
from service.dependencies import Ingress, RequiredAccount
from service.http import BodyOf, BodyReader, Payload
from service import idempotency
from service.idempotency import IdempotencyKey
from service.openapi import ERRORS
from avatar.tokens import token_version

log = logging.getLogger("avatar.styles")

router = APIRouter(prefix="/v1/styles", tags=["styles"])

MAX_EPOCHS = 50
MAX_NAME = 200
STYLE_BODY = BodyOf(StyleJobRequest, "images", "the examples", cap_field="images")


@router.post("", status_code=202, response_model=StyleView, responses=ERRORS,
             summary="Train a custom style from 50-200 example images")
async def create_style(request: Request, ingress: Ingress, account: RequiredAccount,
                       body: Annotated[BodyReader, Depends(STYLE_BODY)], key: IdempotencyKey = None) -> JSONResponse:
    """Multipart `images` file parts, or JSON `images_uri` in a location the operator opened. Answers 202 with the
    job id, the token id it will produce and a status URL."""
    styles = ingress.config.styles
    jobs = ingress.style_jobs()
    read = await body.read(styles.max_upload_bytes, max_files=1000, json_max_bytes=2**20)
    if read.multipart:
        files, fields = _examples(read), read.fields
        print_ = idempotency.fingerprint({**fields, "files": sorted(files)}, *files.values())
    else:
        fields, files = read.fields, {}
        print_ = idempotency.fingerprint(fields)
    hold, replay = await idempotency.begin(key, lambda: ingress.jobs, account, "styles", print_)
    if replay is not None:
        return replay
    async with hold.guard():
        response = await _submit(ingress, jobs, account, files, fields, styles.images_uri_prefixes)
        await hold.finish(response)
    return response


async def _submit(ingress: Any, jobs: Any, account: str, files: dict[str, bytes], fields: dict[str, Any],
                  prefixes: list[str]) -> JSONResponse:
    if files:
        options, name = _options(fields)
        status = await asyncio.to_thread(jobs.submit_upload, account, files, **options)
    else:
        images_uri = fields.get("images_uri")
        if not isinstance(images_uri, str) or not images_uri.strip():
            raise InvalidRequest("send the examples as multipart 'images' files, or JSON with 'images_uri'",
                                 field="images_uri", code="missing_images")
        _check_images_uri(images_uri.strip(), account, prefixes)
        options, name = _options(fields)
        status = await asyncio.to_thread(jobs.submit, account, images_uri.strip(), **options)
    if name:
        await asyncio.to_thread(_put_name, ingress.storage, account, status.token_id, name, status.job_id)
    log.info("style job %s started for account %s (%s examples)", status.job_id, account, status.examples)
    body = _view(status.to_dict(), None, name)
    body["status_url"] = f"/v1/styles/{status.job_id}"
    return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})


@router.get("", response_model=StylesList, responses=ERRORS, summary="The account's styles and unfinished jobs")
async def list_styles(ingress: Ingress, account: RequiredAccount) -> dict[str, Any]:
    return await asyncio.to_thread(_list, ingress, account)


@router.get("/{ident}", response_model=StyleView, responses=ERRORS,
            summary="Status and progress of a job or style (state, epoch, loss, ETA)")
async def get_style(ident: str, ingress: Ingress, account: RequiredAccount) -> dict[str, Any]:
    """`ident` is a job id (job_...) or a style token (sty_...)."""
    return await asyncio.to_thread(_get, ingress, account, ident)


@router.delete("/{ident}", status_code=204, response_class=Response, responses=ERRORS,
               summary="Remove a style (and cancel its job)")
async def delete_style(ident: str, ingress: Ingress, account: RequiredAccount) -> Response:
    await asyncio.to_thread(_delete, ingress, account, ident)
    return Response(status_code=204)


# ---------------------------------------------------------------- blocking parts (worker threads)
def _name(storage: Storage, account: str, token_id: str | None) -> str | None:
    if not token_id:
        return None
    try:
        return json.loads(storage.get(_name_key(account, token_id))).get("name")
    except (NotFound, ValueError):
        return None


def _put_name(storage: Storage, account: str, token_id: str, name: str, job_id: str) -> None:
    storage.put(_name_key(account, token_id), json.dumps({"name": name, "job_id": job_id}).encode())


def _list(ingress: Any, account: str) -> dict[str, Any]:
    store, jobs = ingress.auth.store, ingress.style_jobs()
    records = {r.token_id: r for r in store.list_styles(account)}
    job_list = jobs.list(account)
    by_token = {j.token_id: j for j in job_list if j.token_id}
    styles = [_view(by_token[t].to_dict() if t in by_token else None, r, _name(ingress.storage, account, t))
              for t, r in records.items()]
    pending = [_view(j.to_dict(), None, _name(ingress.storage, account, j.token_id))
               for j in job_list if j.token_id not in records]
    return {"styles": styles, "jobs": pending}


def _get(ingress: Any, account: str, ident: str) -> dict[str, Any]:
    job, record = _find(ingress, account, ident)
    if job is None and record is None:
        raise style_not_found(ident)
    token_id = record.token_id if record else job.token_id
    return _view(job.to_dict() if job else None, record, _name(ingress.storage, account, token_id))


def _find(ingress: Any, account: str, ident: str) -> tuple[Any, StyleRecord | None]:
    store, jobs = ingress.auth.store, ingress.style_jobs()
    if ident.startswith("job_"):
        job = jobs.status(account, ident)
        record = store.get_style(account, job.token_id) if job and job.token_id else None
        return job, record
    if is_style_token(ident):
        record = store.get_style(account, ident)
        job = next((j for j in jobs.list(account) if j.token_id == ident), None)
        return job, record
    return None, None


def _delete(ingress: Any, account: str, ident: str) -> None:
    job, record = _find(ingress, account, ident)
    if job is None and record is None:
        raise style_not_found(ident)
    token_id = record.token_id if record else job.token_id
    if job is not None:
        ingress.style_jobs().delete(account, job.job_id)          # cancels it when still queued or running
    if token_id:
        ingress.auth.store.delete_style(account, token_id)
        try:
            delete_token(ingress.storage, account, token_id)
        except NotFound:
            pass
        ingress.storage.delete(_name_key(account, token_id))
    log.info("style %s deleted for account %s", token_id or ident, account)


# ---------------------------------------------------------------- helpers
def _name_key(account: str, token_id: str) -> str:
    return f"style-names/{account}/{token_id}.json"


def _view(job: dict[str, Any] | None, record: StyleRecord | None, name: str | None) -> dict[str, Any]:
    """One style as the API shows it: the job's progress (when there is a job) and the token (when it is ready)."""
    body: dict[str, Any] = {"job_id": None, "token_id": None, "name": name, "state": "succeeded", "ready": False,
                            "version": None}
    if job:
        body.update({k: v for k, v in job.items() if k != "account_id"})
    if record is not None:
        manifest = record.manifest
        body.update(token_id=record.token_id, ready=True, version=token_version(manifest),
                    base_style=manifest.get("base_style"), trained_at=manifest.get("created_at"))
        body["job_id"] = body["job_id"] or (manifest.get("training") or {}).get("job_id")
        body.setdefault("examples", (manifest.get("examples") or {}).get("count"))
    return body


def _options(fields: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """What a client may choose: `epochs` (1-50) and `base_style` (a built-in style); `name` is a label."""
    allowed = {"images", "images_uri", "name", "epochs", "base_style"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
                             field=unknown[0], code="unknown_field")
    options: dict[str, Any] = {}
    if fields.get("epochs") not in (None, ""):
        options["epochs"] = _epochs(fields["epochs"])
    if fields.get("base_style") not in (None, ""):
        if fields["base_style"] not in BUILTIN_STYLES:
            raise InvalidRequest(f"base_style must be one of {', '.join(BUILTIN_STYLES)}", field="base_style")
        options["base_style"] = fields["base_style"]
    name = fields.get("name")
    if name is not None and (not isinstance(name, str) or len(name.strip()) > MAX_NAME):
        raise InvalidRequest(f"name must be a string of at most {MAX_NAME} characters", field="name")
    return options, (name.strip() or None) if isinstance(name, str) else None


def _epochs(value: Any) -> int:
    """A whole number from 1 to MAX_EPOCHS: a JSON integer or the digits of a form field (not true, 2.5 or 1e400)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 3:
        value = int(value.strip())
    if type(value) is not int or not 1 <= value <= MAX_EPOCHS:
        raise InvalidRequest(f"epochs must be an integer from 1 to {MAX_EPOCHS}", field="epochs")
    return value


def _check_images_uri(uri: str, account: str, prefixes: list[str]) -> None:
    """Only locations the operator opened (`styles.images_uri_prefixes`, `{account}` expands to the caller's id):
    an arbitrary path would let a caller train on files of the server or of other accounts."""
    allowed = [p.replace("{account}", account) for p in prefixes]
    if ".." in uri.replace("\\", "/").split("/") or not any(uri.startswith(p) for p in allowed):
        raise InvalidRequest("images_uri is not in a location this service reads examples from; upload the images "
                             "as multipart 'images' files instead", field="images_uri", code="images_uri_refused")


def _examples(read: Payload) -> dict[str, bytes]:
    """The `images` file parts by file name (repeated names made unique)."""
    files: dict[str, bytes] = {}
    for filename, data in read.files:
        name = filename or f"image_{len(files):03d}"
        unique, n = name, 1
        while unique in files:
            unique, n = f"{n}_{name}", n + 1
        files[unique] = data
    if not files:
        raise InvalidRequest("no 'images' file parts in the upload", field="images", code="missing_images")
    return files
