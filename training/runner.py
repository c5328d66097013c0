"""The Ray Train job around a style trainer: what `training.train_style` (colour LUT tokens) and
`training.train_diffusion_style` (textual-inversion tokens) share.

A trainer brings its config (a `StyleJobConfig` with its own hyperparameters), its per-worker loop and how it turns
the final checkpoint into a token; this module does the rest:

- driver: `run_job` validates the examples and the account, checks the cluster can place the workers, fits, publishes
  and keeps the job record (`style-jobs/<account>/<job>.json`, see `training.records`) up to date, failures included;
  `fit` assembles the `TorchTrainer` (unique run name, bounded retries, the last two checkpoints kept) and removes
  the run's checkpoints once it is done; `publish` saves the token and registers it for the account;
- worker: `WorkerSession` resumes from the latest checkpoint, runs the fault drill, reports each epoch's metrics with
  a checkpoint from rank 0 and writes progress (epoch, loss, ETA);
- command line: the arguments every trainer takes (`job_parser`, `job_config_args`) and `main`'s error exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch

from avatar.store.accounts import open_account_store
from avatar.errors import AvatarError
from avatar.settings import settings
from avatar.store.storage import Storage
from avatar.tokens import new_token_id
from training.dataset import MAX_IMAGES, MIN_IMAGES, ExampleSet, load_examples
from training.records import CANCELLED, FAILED, RUNNING, SUCCEEDED, ProgressWriter, new_job_id

STATE_FILE = "state.pt"


class ResourcesUnavailable(AvatarError):
    """The cluster cannot ever place the requested workers: fail now rather than wait forever."""

    status, code = 503, "training_resources_unavailable"


class TrainingFailed(AvatarError):
    status, code = 500, "training_failed"


@dataclass
class StyleJobConfig:
    """The fields every style training job has; trainers subclass it with their hyperparameters."""

    account_id: str
    images: str
    storage_uri: str
    accounts_uri: str | None = None          # default: AVATAR_ACCOUNTS_URI or the embedded SQLite file
    job_id: str = field(default_factory=new_job_id)
    token_id: str = field(default_factory=new_token_id)
    epochs: int = 8
    image_size: int = 64                      # the examples are decoded at this size for the workers
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    checkpoint_uri: str | None = None         # default: <storage>/style-runs
    min_images: int = MIN_IMAGES
    max_images: int = MAX_IMAGES
    seed: int = 0
    account_max_running: int = 0              # jobs of the account that may run at once (0: no limit); the job
                                              # stays queued while the account has that many running
    fail_once_at_epoch: int | None = None     # fault drill: rank 0 raises once at this epoch (needs fail_flag)
    fail_flag: str | None = None              # file created when the drill fires, so the retry passes

    engine: ClassVar[str]                     # the trainer's name in `training.trainers.TRAINERS`
    run_prefix: ClassVar[str] = "style"       # the Ray Train run is <prefix>-<account>-<job>

    @property
    def run_name(self) -> str:
        return f"{self.run_prefix}-{self.account_id}-{self.job_id}"

    def checkpoint_root(self) -> str:
        if self.checkpoint_uri:
            return self.checkpoint_uri
        root = self.storage_uri.rstrip("/")
        return f"{root}/style-runs" if "://" in root else str(Path(root).resolve() / "style-runs")


@dataclass
class TrainResult:
    job_id: str
    token_id: str
    manifest: dict[str, Any]
    metrics: dict[str, float]
    seconds: float


# ---------------------------------------------------------------- the per-worker loop
class WorkerSession:
    """One Ray Train worker's view of the job: rank and world size, the state it resumes from, the epochs still to
    run (with the fault drill), and each epoch's report, checkpoint (rank 0) and progress record (rank 0)."""

    def __init__(self, cfg: StyleJobConfig) -> None:
        import ray.train
        self.cfg = cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.state: dict[str, Any] | None = None     # the checkpointed state a restarted worker group resumes from
        self.start_epoch, self.resumed_from = 0, -1
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                self.state = torch.load(Path(d) / STATE_FILE, weights_only=False)
            self.start_epoch, self.resumed_from = self.state["epoch"] + 1, self.state["epoch"]
        self.progress = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id) if self.rank == 0 else None
        self.t_start = self.t_epoch = time.time()

    def prepare(self, core: torch.nn.Module,
                optimizer: Callable[[Any], torch.optim.Optimizer]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """`core` under DDP (when there is more than one worker) and its optimizer, restored when resuming."""
        import ray.train.torch
        model = ray.train.torch.prepare_model(core, parallel_strategy="ddp" if self.world > 1 else None)
        opt = optimizer(model.parameters())
        if self.state and self.state["opt"]:
            opt.load_state_dict(self.state["opt"])
        return model, opt

    def epochs(self) -> Iterator[int]:
        """The epochs left to run; rank 0 raises once at `fail_once_at_epoch` when the fault drill is armed."""
        cfg = self.cfg
        self.t_start = time.time()
        for epoch in range(self.start_epoch, cfg.epochs):
            if (self.rank == 0 and cfg.fail_once_at_epoch == epoch and cfg.fail_flag
                    and not os.path.exists(cfg.fail_flag)):
                Path(cfg.fail_flag).write_text(str(epoch))
                raise RuntimeError(f"fault drill: worker failure at epoch {epoch}")
            self.t_epoch = time.time()
            yield epoch

    def metrics(self, epoch: int, loss: float, **extra: float) -> dict[str, float]:
        """The metrics every trainer reports for an epoch (`loss`: the epoch's mean training loss), plus `extra`."""
        return {"epoch": epoch, "loss": loss, **extra, "resumed_from": self.resumed_from,
                "epoch_s": time.time() - self.t_epoch, "elapsed_s": time.time() - self.t_start}

    def end_epoch(self, epoch: int, metrics: dict[str, float], weights: dict[str, Any],
                  opt: torch.optim.Optimizer) -> None:
        """Report `metrics`; rank 0 attaches a checkpoint (`weights`, the optimizer, the epoch) and writes progress
        (`metrics` must then hold `val_loss`)."""
        import ray.train
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save({**weights, "opt": opt.state_dict(), "epoch": epoch}, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if self.progress:
            cfg = self.cfg
            done = epoch + 1 - self.start_epoch
            eta = (time.time() - self.t_start) / done * (cfg.epochs - epoch - 1)
            self.progress.update(create=False, state=RUNNING, epoch=epoch + 1, epochs=cfg.epochs,
                                 loss=metrics["loss"], val_loss=metrics["val_loss"], eta_s=round(eta, 1),
                                 resumed_from=self.resumed_from)


# ---------------------------------------------------------------- the driver
def check_resources(cfg: StyleJobConfig) -> None:
    """Fail with a clear message when the cluster has fewer CPUs/GPUs in total than the workers need."""
    import ray
    total = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    if total.get("CPU", 0.0) + 1e-9 < need_cpu:
        raise ResourcesUnavailable(f"{cfg.num_workers} workers x {cfg.cpus_per_worker} CPU = {need_cpu:g} CPU "
                                   f"requested, the cluster has {total.get('CPU', 0):g}")
    if cfg.use_gpu and total.get("GPU", 0.0) < cfg.num_workers:
        raise ResourcesUnavailable(f"{cfg.num_workers} GPU workers requested, the cluster has "
                                   f"{total.get('GPU', 0):g} GPUs")


class JobCancelled(AvatarError):
    status, code = 409, "job_cancelled"


def wait_for_turn(cfg: StyleJobConfig, progress: ProgressWriter, poll_s: float = 1.0) -> bool:
    """Stay `queued` until the account holds fewer than `account_max_running` running turns (taken atomically, see
    `training.gate.AccountTurns`) and the workers' CPUs are free (Serve replicas and other jobs share the node);
    False when the job was cancelled meanwhile. Only for jobs started through `training.jobs` (a driver actor)."""
    import ray
    from training.gate import account_turns
    need = cfg.num_workers * cfg.cpus_per_worker
    turns = account_turns(_JOBS_NAMESPACE) if cfg.account_max_running > 0 and _in_job_driver(cfg) else None
    while True:
        status = progress.read()
        if status is not None and status.state == CANCELLED:
            if turns is not None:
                turns.release.remote(cfg.account_id, cfg.job_id)
            return False
        if turns is None or ray.get(turns.acquire.remote(cfg.account_id, cfg.job_id, cfg.account_max_running,
                                                         _JOBS_NAMESPACE)):
            if ray.available_resources().get("CPU", 0.0) + 1e-9 >= need:
                return True
        time.sleep(poll_s)


_JOBS_NAMESPACE = "avatar-style-jobs"   # training.jobs.NAMESPACE (that module imports this one)


def _in_job_driver(cfg: StyleJobConfig) -> bool:
    """Whether this process is the job's driver actor (the CLI and tests also call `run_job` directly)."""
    import ray
    try:
        return ray.get_runtime_context().get_actor_name() == cfg.job_id
    except Exception:  # noqa: BLE001 - not in an actor
        return False


def ensure_ray() -> None:
    import ray
    if not ray.is_initialized():
        ray.init(log_to_driver=False)   # RAY_ADDRESS (set by `ray job submit`) or a local cluster


def run_job(cfg: StyleJobConfig, examples: ExampleSet | None,
            train: Callable[[ExampleSet, Any, Any], tuple[dict[str, Any], dict[str, float]]],
            before_fit: Callable[[], Any] | None = None) -> TrainResult:
    """Validate, fit, save and register a token, recording the job's state. Raises DatasetError /
    ResourcesUnavailable / TrainingFailed, or what `before_fit` raises.

    `before_fit()`: the trainer's own checks, run once the examples and the account are valid and before Ray starts;
    its value is passed on. `train(examples, accounts, checked)`: fits (`fit`), publishes (`publish`) and returns
    (manifest, metrics).
    """
    t0 = time.time()
    progress = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id)
    try:
        examples = examples or load_examples(cfg.images, size=cfg.image_size, min_count=cfg.min_images,
                                             max_count=cfg.max_images)
        accounts = open_account_store(cfg.accounts_uri)
        if accounts.get_account(cfg.account_id) is None:
            raise AvatarError(f"unknown account {cfg.account_id!r}", code="unknown_account", status=404)
        checked = before_fit() if before_fit else None
        ensure_ray()
        check_resources(cfg)
        if not wait_for_turn(cfg, progress):
            raise JobCancelled("the job was cancelled while queued")
        started = progress.update(create=True, state=RUNNING, epoch=0, epochs=cfg.epochs,
                                  examples=len(examples.names), token_id=cfg.token_id)
        if started is not None and started.state == CANCELLED:
            raise JobCancelled("the job was cancelled as its turn came")
        manifest, metrics = train(examples, accounts, checked)
    except Exception as exc:
        progress.update(create=False, state=FAILED, error=str(getattr(exc, "message", exc)),
                        bad_files=getattr(exc, "extra", {}).get("bad_files"))
        raise
    seconds = time.time() - t0
    progress.update(state=SUCCEEDED, token_id=cfg.token_id, eta_s=0.0, seconds=round(seconds, 1))
    return TrainResult(cfg.job_id, cfg.token_id, manifest, metrics, seconds)


def fit(cfg: StyleJobConfig, loop: Callable[[dict[str, Any]], None], examples: ExampleSet,
        **loop_config: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Run `loop` on `cfg.num_workers` Ray Train workers. The loop's config holds `cfg` (as a dict), `images_ref`
    (the example images in the object store) and `loop_config`. Returns the final checkpoint's state and the last
    reported metrics; the run's checkpoints are removed."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config={"cfg": asdict(cfg), "images_ref": ray.put(examples.images), **loop_config},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=cfg.run_name, storage_path=cfg.checkpoint_root(),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[cancel_watch(cfg)]),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise TrainingFailed(f"training failed: {exc}") from exc
    if result.error or result.checkpoint is None:
        raise TrainingFailed(f"training failed: {result.error or 'no checkpoint was reported'}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, weights_only=False)
    remove_run(cfg)
    return state, {k: float(v) for k, v in (result.metrics or {}).items()}


def cancel_watch(cfg: StyleJobConfig, poll_s: float = 0.5) -> Any:
    """A Train controller callback: when the job's record turns `cancelled`, the controller aborts the run itself,
    which stops its workers, removes its placement group and stops Train's placement-group cleaner. (Killing the
    controller instead leaves the cleaner running for good: it watches the controller through Ray's state API,
    which needs the dashboard.)"""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    class CancelWatch(ControllerCallback):
        def __init__(self, storage_uri: str, account_id: str, job_id: str) -> None:
            self.args = (storage_uri, account_id, job_id)

        def after_controller_start(self, train_run_context: Any) -> None:
            import threading

            import ray
            controller = ray.get_runtime_context().current_actor
            progress = ProgressWriter(*self.args)

            def watch() -> None:
                while True:
                    status = progress.read()
                    if status is None or status.state == CANCELLED:
                        controller.abort.remote()
                        return
                    time.sleep(poll_s)
            threading.Thread(target=watch, name="cancel-watch", daemon=True).start()

    return CancelWatch(cfg.storage_uri, cfg.account_id, cfg.job_id)


def remove_run(cfg: StyleJobConfig) -> None:
    """Checkpoints are only for resuming this run; the token is the product."""
    import pyarrow.fs as pafs
    root = cfg.checkpoint_root()
    fs, base = pafs.FileSystem.from_uri(root if "://" in root else str(Path(root).resolve()))
    try:
        fs.delete_dir(f"{base.rstrip('/')}/{cfg.run_name}")
    except (FileNotFoundError, OSError):
        pass


def publish(cfg: StyleJobConfig, token: Any, save: Callable[[Storage, Any], Any], accounts: Any) -> dict[str, Any]:
    """Save `token` with `save` in the service storage and register it for the account; returns its manifest."""
    save(Storage(cfg.storage_uri), token)
    accounts.register_style(cfg.account_id, cfg.token_id, token.manifest)
    return token.manifest


# ---------------------------------------------------------------- CLI
def job_parser(prog: str, description: str, epochs: int) -> argparse.ArgumentParser:
    """The arguments every trainer takes; the trainer adds its own."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--account", required=True, help="account id (acc_...)")
    p.add_argument("--images", required=True, help="directory, URI or Parquet manifest of 50-200 example images")
    p.add_argument("--storage", default=settings().resolved_storage_uri,
                   help="storage root URI the service reads tokens from (default: the service's, AVATAR_STORAGE_URI)")
    p.add_argument("--accounts", default=None, help="account store URI (default AVATAR_ACCOUNTS_URI)")
    p.add_argument("--job-id", default=None)
    p.add_argument("--token-id", default=None)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--checkpoints", default=None, help="checkpoint storage URI (default <storage>/style-runs)")
    return p


def job_config_args(a: argparse.Namespace) -> dict[str, Any]:
    """`StyleJobConfig` keyword arguments from `job_parser`'s arguments (ids only when given)."""
    extra = {k: v for k, v in (("job_id", a.job_id), ("token_id", a.token_id)) if v}
    return {"account_id": a.account, "images": a.images, "storage_uri": a.storage, "accounts_uri": a.accounts,
            "epochs": a.epochs, "num_workers": a.workers, "cpus_per_worker": a.cpus_per_worker, "use_gpu": a.gpu,
            "max_failures": a.max_failures, "checkpoint_uri": a.checkpoints, **extra}


def main(cfg: StyleJobConfig, run_training: Callable[[Any], TrainResult]) -> int:
    """Train, print the result as JSON and return 0; a service error goes to stderr as JSON with exit status 2."""
    try:
        result = run_training(cfg)
    except AvatarError as exc:
        print(json.dumps(exc.to_body()), file=sys.stderr)
        return 2
    print(json.dumps({"job_id": result.job_id, "token_id": result.token_id, "seconds": round(result.seconds, 1),
                      "metrics": result.metrics}))
    return 0
