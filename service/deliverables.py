"""What a finished team batch leaves for its owner (results JSON, a ZIP of the avatars, a contact sheet), stored and
signed; and the removal of an expired job's files. Storage only: the job runner decides when."""

from __future__ import annotations

import json
import time
from typing import Any

from avatar.deliverables import Member, avatars_zip, contact_sheet
from avatar.errors import NotFound
from avatar.store.jobs import FAILED, SUCCEEDED, ItemRecord, JobRecord
from avatar.store.storage import Storage, UrlSigner
from service.answers import item_view

BATCHES_PREFIX = "batches"
FILES = (("results_url", "results.json"), ("zip_url", "avatars.zip"), ("contact_sheet_url", "contact_sheet.png"))


def batch_outputs(storage: Storage, signer: UrlSigner, job: JobRecord, items: list[ItemRecord],
                  tile: int) -> tuple[str, dict | None, dict | None]:
    """The batch's state, output (signed URLs and counts) and error; failed items are listed, not billed."""
    members = [Member(item.external_id or str(item.idx), png, _member_code(item, png))
               for item, png in ((item, _avatar_png(storage, item)) for item in items)]
    prefix = f"{BATCHES_PREFIX}/{job.job_id}"
    results = {"job_id": job.job_id, "params": public_params(job.params), "items": [item_view(i) for i in items]}
    storage.put(f"{prefix}/results.json", json.dumps(results).encode())
    storage.put(f"{prefix}/avatars.zip", avatars_zip(members))
    storage.put(f"{prefix}/contact_sheet.png",
                contact_sheet(members, tile=tile, title=f"{job.params.get('style')} - {job.params.get('platform')}"))
    urls = {name: signer.sign(job.base_url, f"{prefix}/{file}") for name, file in FILES}
    succeeded = sum(i.state == SUCCEEDED for i in items)
    output = {**{k: v[0] for k, v in urls.items()},
              "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(urls["zip_url"][1])),
              "succeeded": succeeded, "failed": sum(i.state == FAILED for i in items),
              "billable": sum(i.billable for i in items)}
    if succeeded:
        return SUCCEEDED, output, None
    error = {"error": {"code": "all_items_failed", "message": "no member of the batch got an avatar; see "
                                                             "each item's error", "field": "items"}}
    return FAILED, output, error


def delete_outputs(storage: Storage, job: JobRecord, items: list[ItemRecord]) -> None:
    """An expired job's avatars, uploads and batch files."""
    for item in items:
        for key in item.outputs + ([item.source["upload"]] if "upload" in item.source else []):
            storage.delete(key)
    for key in storage.list(f"{BATCHES_PREFIX}/{job.job_id}"):
        storage.delete(key)


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """The job's parameters a results file shows (not its billing terms)."""
    return {k: params.get(k) for k in ("style", "platform", "palette", "background", "size", "template",
                                       "match_lighting")}


def _avatar_png(storage: Storage, item: ItemRecord) -> bytes | None:
    if item.state != SUCCEEDED or not item.outputs:
        return None
    try:
        return storage.get(item.outputs[0])
    except NotFound:
        return None


def _member_code(item: ItemRecord, png: bytes | None) -> str | None:
    code = (item.error or {}).get("error", {}).get("code") if item.state != SUCCEEDED else None
    return code or (None if png else "missing")


__all__ = ["BATCHES_PREFIX", "batch_outputs", "delete_outputs", "public_params"]
