"""Train a custom style token for an account on the current Ray cluster (Ray Train, data parallel over N workers).

    python -m training.train_style --account acc_... --images DIR|URI|manifest.parquet --storage var/storage
    ray job submit --working-dir . -- python -m training.train_style --account acc_... --images s3://... ...

Order of work: validate the examples (nothing is written on bad input), check the cluster has the requested
resources, fit (a checkpoint every epoch; a failed worker group restarts from the latest one), then save the token
through the storage layer and register it for the account. Progress (epoch, loss, ETA) is written to
`style-jobs/<account>/<job>.json` while it runs (see `training.jobs`).
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
from typing import Any

import numpy as np
import torch

from avatar.accounts import open_account_store
from avatar.errors import AvatarError
from avatar.storage import Storage
from avatar.styles.token import StyleToken, build_manifest, new_token_id, save_token
from training.dataset import MAX_IMAGES, MIN_IMAGES, ExampleSet, degrade, load_examples
from training.jobs import ProgressWriter, new_job_id
from training.model import LutStyleModel

BASE_ENGINE = ("cpu", "1.0.0")


class ResourcesUnavailable(AvatarError):
    """The cluster cannot ever place the requested workers: fail now rather than wait forever."""

    status, code = 503, "training_resources_unavailable"


class TrainingFailed(AvatarError):
    status, code = 500, "training_failed"


@dataclass
class TrainConfig:
    account_id: str
    images: str
    storage_uri: str
    accounts_uri: str | None = None          # default: AVATAR_ACCOUNTS_URI or the embedded SQLite file
    job_id: str = field(default_factory=new_job_id)
    token_id: str = field(default_factory=new_token_id)
    base_style: str = "corporate_headshot"
    epochs: int = 8
    steps_per_epoch: int = 25
    batch_size: int = 8
    image_size: int = 64
    lut_size: int = 17
    curve_knots: int = 16
    lr: float = 0.03
    smoothness: float = 0.5
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    checkpoint_uri: str | None = None         # default: <storage>/style-runs
    min_images: int = MIN_IMAGES
    max_images: int = MAX_IMAGES
    seed: int = 0
    fail_once_at_epoch: int | None = None     # fault drill: rank 0 raises once at this epoch (needs fail_flag)
    fail_flag: str | None = None              # file created when the drill fires, so the retry passes

    @property
    def run_name(self) -> str:
        return f"style-{self.account_id}-{self.job_id}"

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
def _batch_pairs(images: np.ndarray, rng: np.random.Generator, batch: int,
                 pixels: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) colour pairs, (P, 3) each: a random pixel sample of `batch` degraded examples."""
    idx = rng.integers(0, len(images), size=batch)
    src = np.stack([degrade(images[i], rng) for i in idx]).reshape(-1, 3)
    tgt = (images[idx].astype(np.float32) / 255.0).reshape(-1, 3)
    pick = rng.choice(len(src), size=min(pixels, len(src)), replace=False)
    return torch.from_numpy(src[pick]), torch.from_numpy(tgt[pick])


def _eval_loss(model: torch.nn.Module, images: np.ndarray, seed: int) -> tuple[float, float]:
    """(model loss, identity loss) on a fixed set of degraded pairs: how much of the gap the style closes."""
    rng = np.random.default_rng(seed + 999)
    src, tgt = _batch_pairs(images, rng, min(len(images), 16))
    with torch.no_grad():
        return float((model(src) - tgt).abs().mean()), float((src - tgt).abs().mean())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: a shard of the examples, LUT + curve under DDP, a checkpoint and progress each epoch."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))   # tiny ops: extra threads only contend
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    images = ray.get(config["images_ref"])
    shard = images[rank::world]
    torch.manual_seed(cfg.seed)
    core = LutStyleModel(cfg.lut_size, cfg.curve_knots)
    start_epoch, resumed_from = 0, -1
    checkpoint = ray.train.get_checkpoint()
    opt_state = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        core.load_state_dict(state["model"])
        opt_state, start_epoch, resumed_from = state["opt"], state["epoch"] + 1, state["epoch"]
    model = ray.train.torch.prepare_model(core, parallel_strategy="ddp" if world > 1 else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if opt_state:
        opt.load_state_dict(opt_state)
    progress = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id) if rank == 0 else None
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        if (rank == 0 and cfg.fail_once_at_epoch == epoch and cfg.fail_flag
                and not os.path.exists(cfg.fail_flag)):
            Path(cfg.fail_flag).write_text(str(epoch))
            raise RuntimeError(f"fault drill: worker failure at epoch {epoch}")
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        t_epoch, total = time.time(), 0.0
        for _ in range(cfg.steps_per_epoch):
            src, tgt = _batch_pairs(shard, rng, cfg.batch_size)
            loss = (model(src) - tgt).abs().mean() + cfg.smoothness * core.smoothness()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        val, ident = _eval_loss(core, images, cfg.seed)
        metrics = {"epoch": epoch, "loss": total / cfg.steps_per_epoch, "val_loss": val, "identity_loss": ident,
                   "resumed_from": resumed_from, "epoch_s": time.time() - t_epoch,
                   "elapsed_s": time.time() - t_start}
        _report(metrics, core, opt, epoch, rank)
        if progress:
            done = epoch + 1 - start_epoch
            eta = (time.time() - t_start) / done * (cfg.epochs - epoch - 1)
            progress.update(create=False, state="running", epoch=epoch + 1, epochs=cfg.epochs,
                            loss=metrics["loss"], val_loss=val, eta_s=round(eta, 1), resumed_from=resumed_from)


def _report(metrics: dict[str, float], core: LutStyleModel, opt: torch.optim.Optimizer, epoch: int,
            rank: int) -> None:
    import ray.train
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": core.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


# ---------------------------------------------------------------- the driver
def check_resources(cfg: TrainConfig) -> None:
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


def run_training(cfg: TrainConfig, examples: ExampleSet | None = None) -> TrainResult:
    """Validate, fit, save and register the token. Raises DatasetError / ResourcesUnavailable / TrainingFailed."""
    t0 = time.time()
    progress = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id)
    try:
        examples = examples or load_examples(cfg.images, size=cfg.image_size, min_count=cfg.min_images,
                                             max_count=cfg.max_images)
        accounts = open_account_store(cfg.accounts_uri)
        if accounts.get_account(cfg.account_id) is None:
            raise AvatarError(f"unknown account {cfg.account_id!r}", code="unknown_account", status=404)
        _ensure_ray()
        check_resources(cfg)
        progress.update(create=True, state="running", epoch=0, epochs=cfg.epochs, examples=len(examples.names),
                        token_id=cfg.token_id)
        core, metrics = _fit(cfg, examples)
        manifest = _publish(cfg, examples, core, metrics, accounts)
    except Exception as exc:
        progress.update(create=False, state="failed", error=str(getattr(exc, "message", exc)),
                        bad_files=getattr(exc, "extra", {}).get("bad_files"))
        raise
    seconds = time.time() - t0
    progress.update(state="succeeded", token_id=cfg.token_id, eta_s=0.0, seconds=round(seconds, 1))
    return TrainResult(cfg.job_id, cfg.token_id, manifest, metrics, seconds)


def _ensure_ray() -> None:
    import ray
    if not ray.is_initialized():
        ray.init(log_to_driver=False)   # RAY_ADDRESS (set by `ray job submit`) or a local cluster


def _fit(cfg: TrainConfig, examples: ExampleSet) -> tuple[LutStyleModel, dict[str, float]]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": asdict(cfg), "images_ref": ray.put(examples.images)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=cfg.run_name, storage_path=cfg.checkpoint_root(),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise TrainingFailed(f"training failed: {exc}") from exc
    if result.error or result.checkpoint is None:
        raise TrainingFailed(f"training failed: {result.error or 'no checkpoint was reported'}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=False)
    core = LutStyleModel(cfg.lut_size, cfg.curve_knots)
    core.load_state_dict(state["model"])
    _remove_run(cfg)
    return core, {k: float(v) for k, v in (result.metrics or {}).items()}


def _remove_run(cfg: TrainConfig) -> None:
    """Checkpoints are only for resuming this run; the token is the product."""
    import pyarrow.fs as pafs
    root = cfg.checkpoint_root()
    fs, base = pafs.FileSystem.from_uri(root if "://" in root else str(Path(root).resolve()))
    try:
        fs.delete_dir(f"{base.rstrip('/')}/{cfg.run_name}")
    except (FileNotFoundError, OSError):
        pass


def _publish(cfg: TrainConfig, examples: ExampleSet, core: LutStyleModel, metrics: dict[str, float],
             accounts: Any) -> dict[str, Any]:
    lut, curve = core.bake()
    manifest = build_manifest(cfg.token_id, cfg.account_id, base_engine=BASE_ENGINE, base_style=cfg.base_style,
                              fingerprint=examples.fingerprint, example_count=len(examples.names), metrics=metrics,
                              lut_size=cfg.lut_size, curve_knots=cfg.curve_knots,
                              training={"job_id": cfg.job_id, "epochs": cfg.epochs, "workers": cfg.num_workers,
                                        "image_size": cfg.image_size})
    token = StyleToken(cfg.token_id, cfg.account_id, lut, curve, {"base_style": cfg.base_style}, manifest)
    save_token(Storage(cfg.storage_uri), token)
    accounts.register_style(cfg.account_id, cfg.token_id, token.manifest)
    return token.manifest


# ---------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.train_style", description=__doc__.split("\n")[0])
    p.add_argument("--account", required=True, help="account id (acc_...)")
    p.add_argument("--images", required=True, help="directory, URI or Parquet manifest of 50-200 example images")
    p.add_argument("--storage", default=os.environ.get("AVATAR_STORAGE_URI", "var/storage"),
                   help="storage root URI the service reads tokens from")
    p.add_argument("--accounts", default=None, help="account store URI (default AVATAR_ACCOUNTS_URI)")
    p.add_argument("--job-id", default=None)
    p.add_argument("--token-id", default=None)
    p.add_argument("--base-style", default="corporate_headshot")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--checkpoints", default=None, help="checkpoint storage URI (default <storage>/style-runs)")
    a = p.parse_args(argv)
    extra = {k: v for k, v in (("job_id", a.job_id), ("token_id", a.token_id)) if v}
    return TrainConfig(account_id=a.account, images=a.images, storage_uri=a.storage, accounts_uri=a.accounts,
                       base_style=a.base_style, epochs=a.epochs, num_workers=a.workers,
                       cpus_per_worker=a.cpus_per_worker, use_gpu=a.gpu, max_failures=a.max_failures,
                       checkpoint_uri=a.checkpoints, **extra)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        result = run_training(cfg)
    except AvatarError as exc:
        print(json.dumps(exc.to_body()), file=sys.stderr)
        return 2
    print(json.dumps({"job_id": result.job_id, "token_id": result.token_id, "seconds": round(result.seconds, 1),
                      "metrics": result.metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
