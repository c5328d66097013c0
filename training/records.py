"""Style training job records: ids, states, storage keys and the one JSON record per job.

A job's state lives in `style-jobs/<account_id>/<job_id>.json` in the service storage, written by the driver (state
changes) and by rank 0 (epoch, loss, ETA), so any replica can answer status queries without talking to the job.
Everything that reads or writes a record (the job registry, the runner, the trainers, the HTTP layer, the CLI) meets
here; this module imports nothing else of `training`.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any

from avatar.errors import NotFound
from avatar.store.storage import Storage

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATES = (QUEUED, RUNNING)

RECORDS_PREFIX = "style-jobs"
UPLOADS_PREFIX = "style-uploads"


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


def record_key(account_id: str, job_id: str) -> str:
    """The job's record key; NotFound for ids that could name another account's keys."""
    if not account_id or "/" in account_id or not job_id.startswith("job_") or "/" in job_id:
        raise NotFound(f"no job {job_id!r}", field="job_id", code="job_not_found")
    return f"{RECORDS_PREFIX}/{account_id}/{job_id}.json"


def records_prefix(account_id: str) -> str | None:
    """Where an account's records are listed from; None for an id that could reach outside its own."""
    return None if "/" in account_id else f"{RECORDS_PREFIX}/{account_id}"


def job_id_of(key: str) -> str:
    """The job id a record key names."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def uploads_prefix(account_id: str, job_id: str) -> str:
    """Where the example files uploaded for a job are kept."""
    return f"{UPLOADS_PREFIX}/{account_id}/{job_id}"


@dataclass
class JobStatus:
    """What `GET /v1/styles/jobs/{job_id}` returns."""

    job_id: str
    account_id: str
    state: str = QUEUED                  # one of STATES
    token_id: str | None = None          # assigned at submit; usable as `style` once state == succeeded
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    val_loss: float | None = None
    eta_s: float | None = None
    examples: int | None = None
    resumed_from: int = -1               # last checkpointed epoch a restarted worker group resumed from
    error: str | None = None
    bad_files: list[dict[str, str]] | None = None
    seconds: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobStatus":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ProgressWriter:
    """Read-modify-write of one job record. Last writer wins per field; the driver and rank 0 touch disjoint ones."""

    def __init__(self, storage_uri: str, account_id: str, job_id: str) -> None:
        self.storage = Storage(storage_uri)
        self.key = record_key(account_id, job_id)
        self.account_id, self.job_id = account_id, job_id

    def exists(self) -> bool:
        return self.storage.exists(self.key)

    def read(self) -> JobStatus | None:
        try:
            return JobStatus.from_dict(json.loads(self.storage.get(self.key)))
        except (NotFound, ValueError):
            return None

    def update(self, create: bool = True, **changes: Any) -> JobStatus | None:
        """Apply `changes`; with create=False a missing (deleted) record stays missing."""
        status = self.read()
        if status is None and not create:
            return None
        status = status or JobStatus(self.job_id, self.account_id)
        if status.state == CANCELLED:
            return status
        for k, v in changes.items():
            if hasattr(status, k):
                setattr(status, k, v)
        status.updated_at = time.time()
        self.storage.put(self.key, json.dumps(status.to_dict()).encode())
        return status
