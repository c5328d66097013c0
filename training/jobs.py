"""Style training jobs per account: start in the background on the current Ray cluster, follow, list, cancel.

A job is a detached Ray actor (0 CPU) that drives `run_training`, so it outlives the replica or process that started
it; the training workers take the CPUs. Its state lives in one JSON record per job in the service storage,
`style-jobs/<account_id>/<job_id>.json`, written by the driver (state changes) and by rank 0 (epoch, loss, ETA), so
any replica can answer status queries without talking to the job.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from avatar.errors import NotFound
from avatar.store.storage import Storage

NAMESPACE = "avatar-style-jobs"
ACTIVE_STATES = ("queued", "running")


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


def _record_key(account_id: str, job_id: str) -> str:
    if not account_id or "/" in account_id or not job_id.startswith("job_") or "/" in job_id:
        raise NotFound(f"no job {job_id!r}", field="job_id", code="job_not_found")
    return f"style-jobs/{account_id}/{job_id}.json"


@dataclass
class JobStatus:
    """What `GET /v1/styles/jobs/{job_id}` returns."""

    job_id: str
    account_id: str
    state: str = "queued"                # queued | running | succeeded | failed | cancelled
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
        self.key = _record_key(account_id, job_id)
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
        if status.state == "cancelled":
            return status
        for k, v in changes.items():
            if hasattr(status, k):
                setattr(status, k, v)
        status.updated_at = time.time()
        self.storage.put(self.key, json.dumps(status.to_dict()).encode())
        return status


class StyleJobs:
    """The job registry the HTTP layer calls. Every method is scoped by account: other accounts' jobs are invisible.

    `storage_uri` must be readable by the cluster's nodes (a shared path or an object store URI).
    """

    def __init__(self, storage_uri: str, accounts_uri: str | None = None, **defaults: Any) -> None:
        self.storage_uri, self.accounts_uri = storage_uri, accounts_uri
        self.storage = Storage(storage_uri)
        self.defaults = defaults     # config fields applied to every job (epochs, num_workers, engine, ...)

    def submit(self, account_id: str, images: str, **options: Any) -> JobStatus:
        """Validate the examples now (DatasetError, 422, listing bad files; nothing written), then start the job.

        `engine`: `"cpu"` (default: a colour LUT token, `training.train_style`) or `"diffusion"` (a textual-inversion
        embedding on the recipe book's base model, `training.train_diffusion_style`; options such as `recipes`,
        `base_style`, `models_dir`, `use_gpu`). Constructor defaults that only the other trainer knows are ignored.
        """
        from training.dataset import load_examples
        cls = _config_class(options.pop("engine", None) or self.defaults.get("engine") or "cpu")
        known = {f.name for f in fields(cls)}
        other = {f.name for c in (_config_class("cpu"), _config_class("diffusion")) for f in fields(c)} - known
        defaults = {k: v for k, v in self.defaults.items() if k != "engine" and k not in other}
        cfg = cls(account_id=account_id, images=images, storage_uri=self.storage_uri,
                  accounts_uri=self.accounts_uri, **{**defaults, **options})
        # the diffusion trainer decodes at its own resolution on the workers; here only validity matters
        size = cfg.image_size if getattr(cfg, "engine", "cpu") == "cpu" else 16
        examples = load_examples(images, size=size, min_count=cfg.min_images, max_count=cfg.max_images)
        if getattr(cfg, "engine", "cpu") == "diffusion":
            from training.train_diffusion_style import resolve_base
            resolve_base(cfg)                # a missing recipe or base model fails the request, not the job
        status = ProgressWriter(self.storage_uri, account_id, cfg.job_id).update(
            state="queued", token_id=cfg.token_id, epochs=cfg.epochs, examples=len(examples.names))
        _launch(cfg)
        return status

    def submit_upload(self, account_id: str, files: Mapping[str, bytes], **options: Any) -> JobStatus:
        """Uploaded example files (name -> bytes): validated in memory first, then stored and trained on."""
        from training.dataset import load_examples
        load_examples(files, size=16)
        job_id = options.pop("job_id", None) or new_job_id()
        prefix = f"style-uploads/{account_id}/{job_id}"
        for name, data in files.items():
            self.storage.put(f"{prefix}/{_safe_name(name)}", data)
        uri = f"{self.storage.uri.rstrip('/')}/{prefix}"
        try:
            return self.submit(account_id, uri, job_id=job_id, **options)
        except Exception:
            for key in self.storage.list(prefix):
                self.storage.delete(key)
            raise

    def status(self, account_id: str, job_id: str) -> JobStatus | None:
        """The job's record, or None when missing or another account's (answer 404 for both)."""
        try:
            return ProgressWriter(self.storage_uri, account_id, job_id).read()
        except NotFound:
            return None

    def list(self, account_id: str) -> list[JobStatus]:
        keys = self.storage.list(f"style-jobs/{account_id}") if "/" not in account_id else []
        jobs = [self.status(account_id, k.rsplit("/", 1)[-1].removesuffix(".json")) for k in keys]
        return sorted((j for j in jobs if j), key=lambda j: j.created_at)

    def delete(self, account_id: str, job_id: str) -> bool:
        """Cancel the job if it is active and forget it (a token it already produced stays registered)."""
        status = self.status(account_id, job_id)
        if status is None:
            return False
        if status.state in ACTIVE_STATES:
            ProgressWriter(self.storage_uri, account_id, job_id).update(state="cancelled")
            _cancel(job_id)
        self.storage.delete(_record_key(account_id, job_id))
        for key in self.storage.list(f"style-uploads/{account_id}/{job_id}"):
            self.storage.delete(key)
        return True

    def wait(self, account_id: str, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> JobStatus:
        """Block until the job leaves the active states (CLI and tests)."""
        deadline = time.time() + timeout_s
        while True:
            status = self.status(account_id, job_id)
            if status is None or status.state not in ACTIVE_STATES or time.time() > deadline:
                if status is None:
                    raise NotFound(f"no job {job_id!r}", field="job_id", code="job_not_found")
                return status
            time.sleep(poll_s)


def _config_class(engine: str) -> type:
    if engine == "cpu":
        from training.train_style import TrainConfig
        return TrainConfig
    if engine == "diffusion":
        from training.train_diffusion_style import DiffusionTrainConfig
        return DiffusionTrainConfig
    from avatar.errors import InvalidRequest
    raise InvalidRequest(f"unknown training engine {engine!r}; use cpu or diffusion", field="engine",
                         code="unknown_engine")


def _run_training(cfg: Any) -> Any:
    if getattr(cfg, "engine", "cpu") == "diffusion":
        from training.train_diffusion_style import run_training
    else:
        from training.train_style import run_training
    return run_training(cfg)


def _safe_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lstrip(".")
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "image"


def _launch(cfg: Any) -> None:
    import ray
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    actor = _JobDriver.options(name=cfg.job_id, namespace=NAMESPACE, lifetime="detached",
                               num_cpus=0).remote()
    actor.run.remote(cfg)


def _cancel(job_id: str) -> None:
    import ray
    try:
        ray.kill(ray.get_actor(job_id, namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass   # already finished


def _job_driver_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class JobDriver:
        """Runs one job's driver (validation, fit, publish) and exits; failures are recorded by `run_training`."""

        def run(self, cfg: Any) -> None:
            try:
                _run_training(cfg)
            except Exception:
                pass
            finally:
                ray.actor.exit_actor()

    return JobDriver


class _Lazy:
    """Defers building the Ray actor class until first use, so importing this module does not import Ray."""

    _cls: Any = None

    def __getattr__(self, item: str) -> Any:
        if _Lazy._cls is None:
            _Lazy._cls = _job_driver_cls()
        return getattr(_Lazy._cls, item)


_JobDriver = _Lazy()
