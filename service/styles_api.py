"""Custom style routes of the ingress and the auth policy of generation.

    POST   /v1/styles          start training: multipart `images` file parts (50-200), or JSON {"images_uri", "name"}
    GET    /v1/styles          the account's styles (ready tokens) and jobs (queued, running, failed)
    GET    /v1/styles/{id}     one job or token (job id or token id): state, epoch, epochs, loss, eta_s, ...
    DELETE /v1/styles/{id}     remove the token (registry + stored files) and cancel/forget its job -> 204

Every style route needs the account's API key; another account's ids answer 404 exactly like missing ones. Training
runs on the same Ray cluster (`training.jobs.StyleJobs` starts a detached actor); every blocking call (account store,
storage, example validation) runs in a worker thread so the ingress event loop stays free.

Generation: built-in styles are open to every caller (a key is optional unless the ingress `require_api_key` is
set); a custom style token needs a key, and the token must belong to that account (else 404 `style_not_found`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avatar.store.accounts import StyleRecord
from avatar.contracts import BUILTIN_STYLES, is_style_token
from avatar.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from avatar.job import AvatarJob
from avatar.store.storage import Storage
from avatar.tokens import delete_token
from service.auth import Authenticator
from service.http import read_body, read_form
from service.style_apply import model_id_for, token_version

log = logging.getLogger("avatar.styles_api")

DEFAULT_MAX_UPLOAD_BYTES = 200 * 2**20
MAX_EPOCHS = 50
MAX_NAME = 200


def style_apply_handle(handle: DeploymentHandle, job: AvatarJob) -> DeploymentHandle:
    """The StyleApply handle for `job`: a custom token goes through model multiplexing on `<account>/<token>`."""
    if job.account and is_style_token(job.style):
        return handle.options(multiplexed_model_id=model_id_for(job.account, job.style))
    return handle


class StylesApi:
    """Route handlers; `config` is the ingress config (its `styles` dict and `require_api_key`)."""

    def __init__(self, storage: Storage, auth: Authenticator | None = None) -> None:
        self.storage = storage
        self.auth = auth or Authenticator()

    # ------------------------------------------------------------ generation policy
    async def authenticate(self, request: Request, config: Any) -> str | None:
        """Before the body is read: 401 for a wrong key, or for no key when `require_api_key` is set."""
        if getattr(config, "require_api_key", False):
            return await self.auth.require(request.headers)
        return await self.auth.account(request.headers)

    async def authorize_style(self, account: str | None, job: AvatarJob) -> None:
        """A custom token needs a key and must be the account's own (404 otherwise); sets `job.account`."""
        job.account = account
        if not is_style_token(job.style):
            return
        if account is None:
            raise _missing_key_for_custom_style()
        if await self.auth.call("get_style", account, job.style) is None:
            raise _style_not_found(job.style)

    # ------------------------------------------------------------ routes
    async def handle(self, request: Request, path: str, method: str, config: Any) -> Response:
        account = await self.auth.require(request.headers)
        rest = path.removeprefix("/v1/styles").strip("/")
        jobs = self._jobs(config)
        if not rest:
            if method == "POST":
                return await self.create(request, account, jobs, config)
            if method == "GET":
                return JSONResponse(await asyncio.to_thread(self._list, account, jobs))
        elif "/" not in rest:
            if method == "GET":
                return JSONResponse(await asyncio.to_thread(self._get, account, jobs, rest))
            if method == "DELETE":
                await asyncio.to_thread(self._delete, account, jobs, rest)
                return Response(status_code=204)
        raise NotFound(f"no route {method} {path}", field=None)

    def _jobs(self, config: Any):
        from training.jobs import StyleJobs
        styles = dict(getattr(config, "styles", None) or {})
        return StyleJobs(self.storage.uri, self.auth.uri, **dict(styles.get("training") or {}))

    async def create(self, request: Request, account: str, jobs: Any, config: Any) -> Response:
        styles = dict(getattr(config, "styles", None) or {})
        max_bytes = int(styles.get("max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            files, fields = await _read_upload(request, max_bytes)
            options, name = _options(fields)
            status = await asyncio.to_thread(jobs.submit_upload, account, files, **options)
        elif ctype in ("application/json", ""):
            payload = _json_object(await read_body(request, 1 * 2**20))
            images_uri = payload.get("images_uri")
            if not isinstance(images_uri, str) or not images_uri.strip():
                raise InvalidRequest("send the examples as multipart 'images' files, or JSON with 'images_uri'",
                                     field="images_uri", code="missing_images")
            _check_images_uri(images_uri.strip(), account, styles.get("images_uri_prefixes") or [])
            options, name = _options(payload)
            status = await asyncio.to_thread(jobs.submit, account, images_uri.strip(), **options)
        else:
            raise UnsupportedMediaType(f"content-type {ctype!r} is not supported; send multipart/form-data or "
                                       "application/json", field="content-type", code="unsupported_content_type")
        if name:
            await asyncio.to_thread(self._put_name, account, status.token_id, name, status.job_id)
        log.info("style job %s started for account %s (%s examples)", status.job_id, account, status.examples)
        body = _view(status.to_dict(), None, name)
        body["status_url"] = f"/v1/styles/{status.job_id}"
        return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})

    # ------------------------------------------------------------ blocking parts (worker threads)
    def _store(self):
        return self.auth.store

    def _name(self, account: str, token_id: str | None) -> str | None:
        if not token_id:
            return None
        try:
            return json.loads(self.storage.get(_name_key(account, token_id))).get("name")
        except (NotFound, ValueError):
            return None

    def _put_name(self, account: str, token_id: str, name: str, job_id: str) -> None:
        self.storage.put(_name_key(account, token_id), json.dumps({"name": name, "job_id": job_id}).encode())

    def _list(self, account: str, jobs: Any) -> dict[str, Any]:
        records = {r.token_id: r for r in self._store().list_styles(account)}
        job_list = jobs.list(account)
        by_token = {j.token_id: j for j in job_list if j.token_id}
        styles = [_view(by_token[t].to_dict() if t in by_token else None, r, self._name(account, t))
                  for t, r in records.items()]
        pending = [_view(j.to_dict(), None, self._name(account, j.token_id))
                   for j in job_list if j.token_id not in records]
        return {"styles": styles, "jobs": pending}

    def _get(self, account: str, jobs: Any, ident: str) -> dict[str, Any]:
        job, record = self._find(account, jobs, ident)
        if job is None and record is None:
            raise _style_not_found(ident)
        token_id = record.token_id if record else job.token_id
        return _view(job.to_dict() if job else None, record, self._name(account, token_id))

    def _find(self, account: str, jobs: Any, ident: str) -> tuple[Any, StyleRecord | None]:
        if ident.startswith("job_"):
            job = jobs.status(account, ident)
            record = self._store().get_style(account, job.token_id) if job and job.token_id else None
            return job, record
        if is_style_token(ident):
            record = self._store().get_style(account, ident)
            job = next((j for j in jobs.list(account) if j.token_id == ident), None)
            return job, record
        return None, None

    def _delete(self, account: str, jobs: Any, ident: str) -> None:
        job, record = self._find(account, jobs, ident)
        if job is None and record is None:
            raise _style_not_found(ident)
        token_id = record.token_id if record else job.token_id
        if job is not None:
            jobs.delete(account, job.job_id)          # cancels it when still queued or running
        if token_id:
            self._store().delete_style(account, token_id)
            try:
                delete_token(self.storage, account, token_id)
            except NotFound:
                pass
            self.storage.delete(_name_key(account, token_id))
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
        try:
            epochs = int(fields["epochs"])
        except (TypeError, ValueError):
            epochs = 0
        if not 1 <= epochs <= MAX_EPOCHS:
            raise InvalidRequest(f"epochs must be an integer from 1 to {MAX_EPOCHS}", field="epochs")
        options["epochs"] = epochs
    if fields.get("base_style") not in (None, ""):
        if fields["base_style"] not in BUILTIN_STYLES:
            raise InvalidRequest(f"base_style must be one of {', '.join(BUILTIN_STYLES)}", field="base_style")
        options["base_style"] = fields["base_style"]
    name = fields.get("name")
    if name is not None and (not isinstance(name, str) or len(name.strip()) > MAX_NAME):
        raise InvalidRequest(f"name must be a string of at most {MAX_NAME} characters", field="name")
    return options, (name.strip() or None) if isinstance(name, str) else None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON", field=None, code="invalid_json", status=400) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object", field=None, code="invalid_body", status=400)
    return payload


def _check_images_uri(uri: str, account: str, prefixes: list[str]) -> None:
    """Only locations the operator opened (`styles.images_uri_prefixes`, `{account}` expands to the caller's id):
    an arbitrary path would let a caller train on files of the server or of other accounts."""
    allowed = [p.replace("{account}", account) for p in prefixes]
    if ".." in uri.replace("\\", "/").split("/") or not any(uri.startswith(p) for p in allowed):
        raise InvalidRequest("images_uri is not in a location this service reads examples from; upload the images "
                             "as multipart 'images' files instead", field="images_uri", code="images_uri_refused")


async def _read_upload(request: Request, max_bytes: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The `images` file parts (file name -> bytes; repeated names made unique) and the plain fields."""
    form = await read_form(request, max_bytes, max_files=1000, field="images")
    files: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    total = 0
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "images":
                    raise InvalidRequest(f"unexpected file part {key!r}; upload the examples as 'images'", field=key)
                data = await value.read()
                total += len(data)
                if total > max_bytes:
                    raise PayloadTooLarge(f"the examples exceed {max_bytes} bytes", field="images")
                name = value.filename or f"image_{len(files):03d}"
                unique, n = name, 1
                while unique in files:
                    unique, n = f"{n}_{name}", n + 1
                files[unique] = data
            else:
                fields[key] = value
    finally:
        await form.close()
    if not files:
        raise InvalidRequest("no 'images' file parts in the upload", field="images", code="missing_images")
    return files, fields


def _style_not_found(token: str) -> NotFound:
    return NotFound(f"no style {token!r}", field="style", code="style_not_found")


def _missing_key_for_custom_style():
    from avatar.errors import Unauthorized
    return Unauthorized("custom styles need the account's API key: send 'Authorization: Bearer <api key>'",
                        field="authorization", code="missing_api_key")
