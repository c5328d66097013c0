"""Style training jobs per account: start in the background on the current Ray cluster, follow, list, cancel.

A job is a detached Ray actor (0 CPU) that drives its trainer's `run_training`, so it outlives the replica or process
that started it; the training workers take the CPUs. Its state is the job record (`training.records`), so any replica
can answer status queries without talking to the job.

Status queries need neither Ray nor torch: the trainers (`training.trainers`, which import torch) are imported when a
job is submitted or run, and Ray when one is launched or cancelled.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from avatar.errors import NotFound
from avatar.store.storage import Storage
from training.dataset import load_examples
from training.records import (ACTIVE_STATES, CANCELLED, QUEUED, JobStatus, ProgressWriter, job_id_of, new_job_id,
                              record_key, records_prefix, uploads_prefix)

NAMESPACE = "avatar-style-jobs"


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
        from training.trainers import TRAINERS, trainer_for
        trainer = trainer_for(options.pop("engine", None) or self.defaults.get("engine") or "cpu")
        other = set().union(*(t.field_names() for t in TRAINERS.values())) - trainer.field_names()
        defaults = {k: v for k, v in self.defaults.items() if k != "engine" and k not in other}
        cfg = trainer.config(account_id=account_id, images=images, storage_uri=self.storage_uri,
                             accounts_uri=self.accounts_uri, **{**defaults, **options})
        examples = load_examples(images, size=trainer.precheck_size or cfg.image_size, min_count=cfg.min_images,
                                 max_count=cfg.max_images)
        if trainer.precheck:
            trainer.precheck(cfg)
        status = ProgressWriter(self.storage_uri, account_id, cfg.job_id).update(
            state=QUEUED, token_id=cfg.token_id, epochs=cfg.epochs, examples=len(examples.names))
        _launch(cfg)
        return status

    def submit_upload(self, account_id: str, files: Mapping[str, bytes], **options: Any) -> JobStatus:
        """Uploaded example files (name -> bytes): validated in memory first, then stored and trained on."""
        load_examples(files, size=16)
        job_id = options.pop("job_id", None) or new_job_id()
        prefix = uploads_prefix(account_id, job_id)
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
        prefix = records_prefix(account_id)
        keys = self.storage.list(prefix) if prefix else []
        jobs = [self.status(account_id, job_id_of(k)) for k in keys]
        return sorted((j for j in jobs if j), key=lambda j: j.created_at)

    def delete(self, account_id: str, job_id: str) -> bool:
        """Cancel the job if it is active and forget it (a token it already produced stays registered)."""
        status = self.status(account_id, job_id)
        if status is None:
            return False
        if status.state in ACTIVE_STATES:
            ProgressWriter(self.storage_uri, account_id, job_id).update(state=CANCELLED)
            _cancel(job_id)
        self.storage.delete(record_key(account_id, job_id))
        for key in self.storage.list(uploads_prefix(account_id, job_id)):
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


def _run_training(cfg: Any) -> Any:
    from training.trainers import trainer_for
    return trainer_for(cfg.engine).run(cfg)


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
