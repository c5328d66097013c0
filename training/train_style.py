"""Train a custom style token for an account on the current Ray cluster (Ray Train, data parallel over N workers).

    python -m training.train_style --account acc_... --images DIR|URI|manifest.parquet --storage var/storage
    ray job submit --working-dir . -- python -m training.train_style --account acc_... --images s3://... ...

Order of work: validate the examples (nothing is written on bad input), check the cluster has the requested
resources, fit (a checkpoint every epoch; a failed worker group restarts from the latest one), then save the token
through the storage layer and register it for the account. Progress (epoch, loss, ETA) is written to
`style-jobs/<account>/<job>.json` while it runs (see `training.records`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from avatar.catalog.styles import DEFAULT_BASE_STYLE
from avatar.tokens import StyleToken, build_manifest, save_token
from training import runner
from training.dataset import ExampleSet, degrade
from training.model import LutStyleModel
from training.runner import ResourcesUnavailable, TrainingFailed, TrainResult  # noqa: F401 - part of this API

ENGINE = "cpu"
BASE_ENGINE = (ENGINE, "1.0.0")


@dataclass
class TrainConfig(runner.StyleJobConfig):
    base_style: str = DEFAULT_BASE_STYLE     # the built-in style the token's look builds on
    steps_per_epoch: int = 25
    batch_size: int = 8
    lut_size: int = 17
    curve_knots: int = 16
    lr: float = 0.03
    smoothness: float = 0.5

    engine: ClassVar[str] = ENGINE


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

    cfg = TrainConfig(**config["cfg"])
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))   # tiny ops: extra threads only contend
    session = runner.WorkerSession(cfg)
    images = ray.get(config["images_ref"])
    shard = images[session.rank::session.world]
    torch.manual_seed(cfg.seed)
    core = LutStyleModel(cfg.lut_size, cfg.curve_knots)
    if session.state:
        core.load_state_dict(session.state["model"])
    model, opt = session.prepare(core, lambda params: torch.optim.Adam(params, lr=cfg.lr))
    for epoch in session.epochs():
        rng = np.random.default_rng([cfg.seed, epoch, session.rank])
        total = 0.0
        for _ in range(cfg.steps_per_epoch):
            src, tgt = _batch_pairs(shard, rng, cfg.batch_size)
            loss = (model(src) - tgt).abs().mean() + cfg.smoothness * core.smoothness()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        val, ident = _eval_loss(core, images, cfg.seed)
        metrics = session.metrics(epoch, total / cfg.steps_per_epoch, val_loss=val, identity_loss=ident)
        session.end_epoch(epoch, metrics, {"model": core.state_dict()}, opt)


# ---------------------------------------------------------------- the driver
def run_training(cfg: TrainConfig, examples: ExampleSet | None = None) -> TrainResult:
    """Validate, fit, save and register the token. Raises DatasetError / ResourcesUnavailable / TrainingFailed."""

    def train(examples: ExampleSet, accounts: Any, _: None) -> tuple[dict[str, Any], dict[str, float]]:
        state, metrics = runner.fit(cfg, train_loop_per_worker, examples)
        core = LutStyleModel(cfg.lut_size, cfg.curve_knots)
        core.load_state_dict(state["model"])
        return _publish(cfg, examples, core, metrics, accounts), metrics

    return runner.run_job(cfg, examples, train)


def _publish(cfg: TrainConfig, examples: ExampleSet, core: LutStyleModel, metrics: dict[str, float],
             accounts: Any) -> dict[str, Any]:
    lut, curve = core.bake()
    manifest = build_manifest(cfg.token_id, cfg.account_id, base_engine=BASE_ENGINE, base_style=cfg.base_style,
                              fingerprint=examples.fingerprint, example_count=len(examples.names), metrics=metrics,
                              lut_size=cfg.lut_size, curve_knots=cfg.curve_knots,
                              training={"job_id": cfg.job_id, "epochs": cfg.epochs, "workers": cfg.num_workers,
                                        "image_size": cfg.image_size})
    token = StyleToken(cfg.token_id, cfg.account_id, lut, curve, {"base_style": cfg.base_style}, manifest)
    return runner.publish(cfg, token, save_token, accounts)


# ---------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = runner.job_parser("python -m training.train_style", __doc__.split("\n")[0], epochs=8)
    p.add_argument("--base-style", default=DEFAULT_BASE_STYLE)
    a = p.parse_args(argv)
    return TrainConfig(base_style=a.base_style, **runner.job_config_args(a))


def main(argv: list[str] | None = None) -> int:
    return runner.main(parse_args(argv), run_training)


if __name__ == "__main__":
    sys.exit(main())
