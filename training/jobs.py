"""Style training jobs per account: start in the background on the current Ray cluster, follow, list, cancel.

A job is a detached Ray actor (0 CPU) that drives its trainer's `run_training`, so it outlives the replica or process
that started it; the training workers take the CPUs. Its state is the job record (`training.records`), so any replica
can answer status queries without talking to the job.

Admission (`training.gate`): an account may have `max_running` jobs running and `max_queued` more waiting (429
beyond); a job's driver asks for its share of the node's training memory and CPU budgets, so it stays `queued`
(pending in Ray: no process at all) until a node has room. Cancelling asks the Train controller to abort (it stops
its workers, placement group and cleaner), then removes whatever of the job is still alive.

Status queries need neither Ray nor torch: the trainers (`training.trainers`, which import torch) are imported when a
job is submitted or run, and Ray when one is launched or cancelled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

from avatar.errors import NotFound, TooManyRequests
from avatar.store.storage import Storage
from training.dataset import load_examples
from training.gate import exceeds_budget, job_resources
from training.records import (ACTIVE_STATES, CANCELLED, QUEUED, RUNNING, JobStatus, ProgressWriter, job_id_of,
                              new_job_id, record_key, records_prefix, uploads_prefix)

NAMESPACE = "avatar-style-jobs"
CANCEL_GRACE_S = 20.0


@dataclass(frozen=True)
class JobLimits:
    """Per account: jobs running at once, and jobs waiting beyond those."""

    max_running: int = 1
    max_queued: int = 2


class StyleJobs:
    """The job registry the HTTP layer calls. Every method is scoped by account: other accounts' jobs are invisible.

    `storage_uri` must be readable by the cluster's nodes (a shared path or an object store URI).
    """

    def __init__(self, storage_uri: str, accounts_uri: str | None = None, limits: JobLimits | None = None,
                 **defaults: Any) -> None:
        self.storage_uri, self.accounts_uri = storage_uri, accounts_uri
        self.storage = Storage(storage_uri)
        self.limits = limits or JobLimits()
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
                             accounts_uri=self.accounts_uri, account_max_running=self.limits.max_running,
                             **{**defaults, **options})
        self._check_account(account_id)
        examples = load_examples(images, size=trainer.precheck_size or cfg.image_size, min_count=cfg.min_images,
                                 max_count=cfg.max_images)
        if trainer.precheck:
            trainer.precheck(cfg)
        cluster = _cluster_resources()
        too_big = exceeds_budget(cfg, cluster)
        if too_big:
            from training.runner import ResourcesUnavailable
            raise ResourcesUnavailable(too_big, field="num_workers")
        status = ProgressWriter(self.storage_uri, account_id, cfg.job_id).update(
            state=QUEUED, token_id=cfg.token_id, epochs=cfg.epochs, examples=len(examples.names))
        _launch(cfg, job_resources(cfg, cluster))
        return status

    def _check_account(self, account_id: str) -> None:
        """429 when the account already has as many jobs running and waiting as it may."""
        active = [j for j in self.list(account_id) if j.state in ACTIVE_STATES]
        allowed = self.limits.max_running + self.limits.max_queued
        if len(active) >= allowed:
            running = sum(j.state == RUNNING for j in active)
            raise TooManyRequests(f"the account has {running} training jobs running and {len(active) - running} "
                                  f"queued; at most {self.limits.max_running} run and {self.limits.max_queued} wait "
                                  "at once: retry when one finishes, or cancel one", field="images",
                                  code="too_many_jobs", extra={"retry_after_s": 30})

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
            cancel(job_id)
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


def _cluster_resources() -> dict[str, float]:
    import ray
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    return ray.cluster_resources()


def _launch(cfg: Any, resources: dict[str, float]) -> None:
    """The job's driver: pending in Ray (no process) until a node has the job's share of the training budgets."""
    from training.gate import account_turns
    import ray
    turns = account_turns(NAMESPACE)   # created here, so it belongs to no job
    actor = _JobDriver.options(name=cfg.job_id, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                               resources=resources).remote()
    if getattr(cfg, "account_max_running", 0) > 0:
        ray.get(turns.enqueue.remote(cfg.account_id, cfg.job_id))   # its place in the account's line: submission order
    actor.run.remote(cfg)


def cancel(job_id: str, grace_s: float = CANCEL_GRACE_S) -> list[str]:
    """Stop the job and everything it started; returns the ids of the actors that were alive. The record must say
    `cancelled` (or be gone) first: the Train controller then aborts the run itself (`runner.cancel_watch`). What is
    left after `grace_s` (a driver stuck outside the run, helpers of a controller that died) is killed."""
    import ray
    from training.gate import alive, descendants, kill_processes
    try:
        driver = ray.get_actor(job_id, namespace=NAMESPACE)
    except ValueError:
        return []   # already finished
    root = driver._actor_id.hex()   # noqa: SLF001 - links the actor table's owners
    tree = [a for a in descendants(root) if a["State"] != "DEAD"]
    ids = [root, *(a["ActorID"] for a in tree)]
    # A driver with a process may be starting its Train run this very moment: killed then, the controller's
    # placement group outlives it (it belongs to the cluster's job, not the actor). It sees the record and stops
    # itself, so wait for that; a driver still pending in Ray has no process and nothing to stop.
    deadline = time.time() + (grace_s if tree or _state(root) == "ALIVE" else 0.0)
    while alive(ids) and time.time() < deadline:
        time.sleep(0.25)
        tree += [a for a in descendants(root) if a["State"] != "DEAD" and a["ActorID"] not in ids]
        ids = [root, *(a["ActorID"] for a in tree)]
    if root in alive([root]):
        ray.kill(driver, no_restart=True)
    time.sleep(0.5)   # the driver's own actors die with it; detached helpers do not
    left = [a for a in descendants(root) if a["State"] != "DEAD"]
    if left:
        kill_processes(left)
    return ids + [a["ActorID"] for a in left if a["ActorID"] not in ids]


def _state(actor_id: str) -> str | None:
    from ray._private import state
    return (state.actors().get(actor_id) or {}).get("State")


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
                if getattr(cfg, "account_max_running", 0) > 0:   # the account's running turn, if it held one
                    from training.gate import account_turns
                    ray.get(account_turns(NAMESPACE).release.remote(cfg.account_id, cfg.job_id))
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
