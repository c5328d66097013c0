"""Train a custom diffusion style for an account: a textual-inversion embedding on the configured base model.

    python -m training.train_diffusion_style --account acc_... --images DIR|URI|manifest.parquet \
        --recipes configs/diffusion.yaml [--style editorial_portrait] --storage var/storage
    ray job submit --working-dir . -- python -m training.train_diffusion_style --account acc_... --gpu ...

What is learnt: one new word (`<token_id>`) in the text encoder's vocabulary, a single embedding vector, optimised so
that the frozen UNet denoises the account's examples well when the prompt contains it ("a portrait in the style of
<sty_...>"). Everything else (UNet, VAE, text encoder) stays frozen, so the artefact is one vector (3 KB for SD 1.5)
that loads into the running pipeline in milliseconds and cannot change how other styles or accounts render.

Same order of work as `training.train_style`: validate the examples (nothing written on bad input), check the
cluster's resources, fit with Ray Train (data parallel over N workers, a checkpoint every epoch, a failed worker group
resumes from the latest), then save the token through the storage layer and register it for the account. Progress
(epoch, loss, ETA) goes to `style-jobs/<account>/<job>.json`, readable by `training.jobs.StyleJobs`.

SD 1.x / 2.x base models (one text encoder) are supported; SDXL bases are refused before anything starts.
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
from avatar.errors import AvatarError, InvalidRequest
from avatar.storage import Storage
from avatar.styles.token import DiffusionToken, build_diffusion_manifest, new_token_id, save_diffusion_token
from training.dataset import MAX_IMAGES, MIN_IMAGES, ExampleSet, load_examples
from training.jobs import ProgressWriter, new_job_id
from training.train_style import TrainingFailed, _ensure_ray, _remove_run, check_resources

ENGINE = "diffusion"
TEMPLATES = ("a portrait in the style of {}", "a photo of a person, {} style", "a face in {} style",
             "{} style portrait", "a studio portrait, {}", "a picture of a person in the style of {}")


@dataclass
class DiffusionTrainConfig:
    account_id: str
    images: str
    storage_uri: str
    recipes: Any = "configs/diffusion.yaml"   # the recipe book the service uses (YAML path or dict)
    base_style: str | None = None             # recipe whose base model the embedding is learnt on; default `custom`
    models_dir: str | None = None             # where relative model references live (as the engine's models_dir)
    local_files_only: bool = True
    accounts_uri: str | None = None
    job_id: str = field(default_factory=new_job_id)
    token_id: str = field(default_factory=new_token_id)
    init_word: str = "style"                  # the embedding starts from this word's embedding
    epochs: int = 4
    steps_per_epoch: int = 50
    batch_size: int = 4                       # per worker
    image_size: int = 512                     # training resolution (SD 1.5: 512, SD 2.x 768 models: 768)
    lr: float = 5e-3
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    checkpoint_uri: str | None = None         # default: <storage>/style-runs
    min_images: int = MIN_IMAGES
    max_images: int = MAX_IMAGES
    seed: int = 0
    fail_once_at_epoch: int | None = None     # fault drill: rank 0 raises once at this epoch (needs fail_flag)
    fail_flag: str | None = None

    engine = ENGINE                           # class attribute: which trainer `StyleJobs` runs

    @property
    def run_name(self) -> str:
        return f"dstyle-{self.account_id}-{self.job_id}"

    @property
    def placeholder(self) -> str:
        return f"<{self.token_id}>"

    def checkpoint_root(self) -> str:
        if self.checkpoint_uri:
            return self.checkpoint_uri
        root = self.storage_uri.rstrip("/")
        return f"{root}/style-runs" if "://" in root else str(Path(root).resolve() / "style-runs")


@dataclass
class BaseModel:
    """The resolved base model a job trains against (picked from the recipe book on the driver)."""

    style: str
    ref: str            # the recipe's reference, as written
    path: str           # resolved local directory or hub id
    family: str
    fingerprint: str


@dataclass
class TrainResult:
    job_id: str
    token_id: str
    manifest: dict[str, Any]
    metrics: dict[str, float]
    seconds: float


def resolve_base(cfg: DiffusionTrainConfig) -> BaseModel:
    """The recipe's base model, resolved the way the serving engine resolves it. ModelUnavailable when missing."""
    from avatar.errors import ModelUnavailable
    from avatar.styles.diffusion import _family, _Loader, fingerprint
    from avatar.styles.recipes import load_recipes
    book = load_recipes(cfg.recipes)
    style = cfg.base_style or book.custom or next(iter(book.recipes))
    if style not in book.recipes:
        raise InvalidRequest(f"no diffusion recipe {style!r}; recipes: {', '.join(book.recipes)}",
                             field="base_style", code="unknown_base_style")
    recipe = book.recipes[style]
    loader = _Loader(Path(cfg.models_dir).expanduser() if cfg.models_dir else None, cfg.local_files_only, "cpu", None)
    path = loader.resolve(recipe.base_model, "base model")
    family = _family(path, recipe.family)
    if family != "sd":
        raise ModelUnavailable(f"diffusion style training supports SD 1.x/2.x base models; recipe {style!r} uses an "
                               f"{family.upper()} model")
    return BaseModel(style=style, ref=recipe.base_model, path=path, family=family, fingerprint=fingerprint(path))


# ---------------------------------------------------------------- the per-worker loop
class TokenEmbedding(torch.nn.Module):
    """The one trainable vector, spliced into the frozen text encoder wherever the placeholder id appears.

    The text encoder is held outside the module's parameters (DDP then synchronises only this vector, not a
    100M-parameter encoder whose weights never change), and a forward hook on its token-embedding layer swaps the
    placeholder's row for `vector`, so any CLIP-like encoder works without reimplementing its forward pass.
    """

    def __init__(self, text_encoder: torch.nn.Module, placeholder_id: int, init: torch.Tensor) -> None:
        super().__init__()
        self.vector = torch.nn.Parameter(init.detach().clone().float())
        object.__setattr__(self, "_encoder", text_encoder)
        self.placeholder_id = placeholder_id
        text_encoder.get_input_embeddings().register_forward_hook(self._splice)

    def _splice(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = (inputs[0] == self.placeholder_id)[..., None]
        return torch.where(mask, self.vector.to(output.dtype).expand_as(output), output)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._encoder(input_ids)[0]


@dataclass
class _Models:
    tokenizer: Any
    text_encoder: Any
    unet: Any
    scheduler: Any
    placeholder_id: int
    init: torch.Tensor
    device: torch.device
    dtype: torch.dtype


def _load_models(cfg: DiffusionTrainConfig, base_path: str, device: torch.device) -> tuple[_Models, Any]:
    """Frozen SD components from the base model's diffusers directory, the placeholder added to the tokenizer.
    Returns the models used every step and the VAE (needed once, to encode the examples)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    kw = {"local_files_only": cfg.local_files_only}
    # frozen UNet/VAE in bf16 on GPU (fp16's range would need loss scaling for the gradient reaching the vector);
    # the vector and the text encoder stay fp32
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(base_path, subfolder="tokenizer", **kw)
    text_encoder = CLIPTextModel.from_pretrained(base_path, subfolder="text_encoder", **kw)
    unet = UNet2DConditionModel.from_pretrained(base_path, subfolder="unet", **kw).to(device, dtype)
    vae = AutoencoderKL.from_pretrained(base_path, subfolder="vae", **kw).to(device, dtype)
    scheduler = DDPMScheduler.from_pretrained(base_path, subfolder="scheduler", **kw)
    if tokenizer.add_tokens(cfg.placeholder) != 1:
        raise TrainingFailed(f"placeholder {cfg.placeholder!r} already exists in the tokenizer")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)   # the hook fills the row
    placeholder_id = tokenizer.convert_tokens_to_ids(cfg.placeholder)
    init_ids = tokenizer(cfg.init_word, add_special_tokens=False).input_ids or [tokenizer.eos_token_id]
    table = text_encoder.get_input_embeddings().weight
    init = table[init_ids].mean(0).detach()
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
        module.eval()
    text_encoder.to(device)
    return _Models(tokenizer, text_encoder, unet, scheduler, placeholder_id, init, device, dtype), vae


def _encode_latents(vae: Any, images: np.ndarray, device: torch.device, dtype: torch.dtype,
                    batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and std (scaled) of every example, then of its mirror image: the VAE runs once per worker, not
    once per step. Rows [0, n) are the examples, [n, 2n) their mirrors."""
    out: dict[bool, tuple[list[torch.Tensor], list[torch.Tensor]]] = {False: ([], []), True: ([], [])}
    with torch.no_grad():
        for flip in (False, True):
            for i in range(0, len(images), batch):
                x = torch.tensor(images[i:i + batch]).permute(0, 3, 1, 2).float()   # a copy: Ray's arrays are read-only
                x = (x / 127.5 - 1.0).flip(-1) if flip else x / 127.5 - 1.0
                dist = vae.encode(x.to(device, dtype)).latent_dist
                out[flip][0].append(dist.mean.float().cpu())
                out[flip][1].append(dist.std.float().cpu())
    scale = float(vae.config.scaling_factor)
    mean = torch.cat(out[False][0] + out[True][0]) * scale
    std = torch.cat(out[False][1] + out[True][1]) * scale
    return mean, std


def _prompts(tokenizer: Any, placeholder: str, rng: np.random.Generator, n: int) -> torch.Tensor:
    texts = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(placeholder) for _ in range(n)]
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _denoise_loss(m: _Models, embed: torch.nn.Module, latents: torch.Tensor, ids: torch.Tensor,
                  timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The diffusion training objective: MSE between the UNet's prediction and its target (noise or velocity)."""
    dev = m.device
    latents, noise, timesteps = latents.to(dev), noise.to(dev), timesteps.to(dev)
    noisy = m.scheduler.add_noise(latents, noise, timesteps)
    hidden = embed(ids.to(dev))
    pred = m.unet(noisy.to(m.dtype), timesteps, hidden.to(m.dtype)).sample.float()
    if m.scheduler.config.prediction_type == "v_prediction":
        target = m.scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return torch.nn.functional.mse_loss(pred, target)


def _eval_losses(m: _Models, core: TokenEmbedding, mean: torch.Tensor, std: torch.Tensor,
                 cfg: DiffusionTrainConfig) -> tuple[float, float]:
    """(loss with the learnt vector, loss with the initial word) on fixed examples of the shard, fixed noise and
    timesteps: how much the learnt word explains the examples beyond the word it started from."""
    g = torch.Generator().manual_seed(cfg.seed + 999)
    n = min(len(mean), 16)
    idx = torch.randperm(len(mean), generator=g)[:n]
    latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    steps = m.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (n,), generator=g)
    ids = _prompts(m.tokenizer, cfg.placeholder, np.random.default_rng(cfg.seed + 999), n)
    out = []
    with torch.no_grad():
        learnt = core.vector.data.clone()
        for vector in (learnt, m.init):
            core.vector.data.copy_(vector)
            out.append(float(_denoise_loss(m, core, latents, ids, timesteps, noise)))
        core.vector.data.copy_(learnt)
    return out[0], out[1]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: its shard of the examples, the embedding vector under DDP, a checkpoint each epoch."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = DiffusionTrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    m, vae = _load_models(cfg, config["base_path"], device)
    images = ray.get(config["images_ref"])
    mean, std = _encode_latents(vae, images[rank::world], device, m.dtype)
    del vae
    core = TokenEmbedding(m.text_encoder, m.placeholder_id, m.init)
    start_epoch, resumed_from, opt_state = 0, -1, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        core.vector.data.copy_(state["vector"])
        opt_state, start_epoch, resumed_from = state["opt"], state["epoch"] + 1, state["epoch"]
    model = ray.train.torch.prepare_model(core, parallel_strategy="ddp" if world > 1 else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    if opt_state:
        opt.load_state_dict(opt_state)
    progress = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id) if rank == 0 else None
    steps = m.scheduler.config.num_train_timesteps
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        if (rank == 0 and cfg.fail_once_at_epoch == epoch and cfg.fail_flag
                and not os.path.exists(cfg.fail_flag)):
            Path(cfg.fail_flag).write_text(str(epoch))
            raise RuntimeError(f"fault drill: worker failure at epoch {epoch}")
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        t_epoch, total = time.time(), 0.0
        for _ in range(cfg.steps_per_epoch):
            idx = torch.from_numpy(rng.integers(0, len(mean), size=cfg.batch_size))
            latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
            noise = torch.randn(latents.shape, generator=g)
            timesteps = torch.randint(0, steps, (cfg.batch_size,), generator=g)
            ids = _prompts(m.tokenizer, cfg.placeholder, rng, cfg.batch_size)
            loss = _denoise_loss(m, model, latents, ids, timesteps, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        metrics: dict[str, float] = {"epoch": epoch, "loss": total / cfg.steps_per_epoch,
                                     "resumed_from": resumed_from, "epoch_s": time.time() - t_epoch,
                                     "elapsed_s": time.time() - t_start,
                                     "vector_norm": float(core.vector.norm()),
                                     "init_norm": float(m.init.norm())}
        if rank == 0:
            metrics["val_loss"], metrics["init_loss"] = _eval_losses(m, core, mean, std, cfg)
        _report(metrics, core, opt, epoch, rank)
        if progress:
            done = epoch + 1 - start_epoch
            eta = (time.time() - t_start) / done * (cfg.epochs - epoch - 1)
            progress.update(create=False, state="running", epoch=epoch + 1, epochs=cfg.epochs,
                            loss=metrics["loss"], val_loss=metrics["val_loss"], eta_s=round(eta, 1),
                            resumed_from=resumed_from)


def _report(metrics: dict[str, float], core: TokenEmbedding, opt: torch.optim.Optimizer, epoch: int,
            rank: int) -> None:
    import ray.train
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"vector": core.vector.detach().cpu(), "opt": opt.state_dict(), "epoch": epoch},
                   Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


# ---------------------------------------------------------------- the driver
def run_training(cfg: DiffusionTrainConfig, examples: ExampleSet | None = None) -> TrainResult:
    """Validate, fit, save and register the embedding. Raises DatasetError / ModelUnavailable /
    ResourcesUnavailable / TrainingFailed."""
    t0 = time.time()
    progress = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id)
    try:
        examples = examples or load_examples(cfg.images, size=cfg.image_size, min_count=cfg.min_images,
                                             max_count=cfg.max_images)
        accounts = open_account_store(cfg.accounts_uri)
        if accounts.get_account(cfg.account_id) is None:
            raise AvatarError(f"unknown account {cfg.account_id!r}", code="unknown_account", status=404)
        base = resolve_base(cfg)
        _ensure_ray()
        check_resources(cfg)
        progress.update(create=True, state="running", epoch=0, epochs=cfg.epochs, examples=len(examples.names),
                        token_id=cfg.token_id)
        vector, metrics = _fit(cfg, examples, base)
        manifest = _publish(cfg, examples, base, vector, metrics, accounts)
    except Exception as exc:
        progress.update(create=False, state="failed", error=str(getattr(exc, "message", exc)),
                        bad_files=getattr(exc, "extra", {}).get("bad_files"))
        raise
    seconds = time.time() - t0
    progress.update(state="succeeded", token_id=cfg.token_id, eta_s=0.0, seconds=round(seconds, 1))
    return TrainResult(cfg.job_id, cfg.token_id, manifest, metrics, seconds)


def _fit(cfg: DiffusionTrainConfig, examples: ExampleSet, base: BaseModel) -> tuple[torch.Tensor, dict[str, float]]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": asdict(cfg), "images_ref": ray.put(examples.images), "base_path": base.path},
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
    _remove_run(cfg)
    return state["vector"], {k: float(v) for k, v in (result.metrics or {}).items()}


def _publish(cfg: DiffusionTrainConfig, examples: ExampleSet, base: BaseModel, vector: torch.Tensor,
             metrics: dict[str, float], accounts: Any) -> dict[str, Any]:
    manifest = build_diffusion_manifest(
        cfg.token_id, cfg.account_id, placeholder=cfg.placeholder, base_style=base.style,
        base_model={"ref": base.ref, "family": base.family, "fingerprint": base.fingerprint,
                    "embedding_dim": int(vector.numel())},
        fingerprint=examples.fingerprint, example_count=len(examples.names), metrics=metrics,
        training={"job_id": cfg.job_id, "epochs": cfg.epochs, "steps_per_epoch": cfg.steps_per_epoch,
                  "batch_size": cfg.batch_size, "workers": cfg.num_workers, "image_size": cfg.image_size,
                  "lr": cfg.lr, "init_word": cfg.init_word, "gpu": cfg.use_gpu})
    token = DiffusionToken(cfg.token_id, cfg.account_id, cfg.placeholder,
                           vector.detach().float().cpu().numpy(), manifest)
    save_diffusion_token(Storage(cfg.storage_uri), token)
    accounts.register_style(cfg.account_id, cfg.token_id, token.manifest)
    return token.manifest


# ---------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> DiffusionTrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.train_diffusion_style", description=__doc__.split("\n")[0])
    p.add_argument("--account", required=True, help="account id (acc_...)")
    p.add_argument("--images", required=True, help="directory, URI or Parquet manifest of 50-200 example images")
    p.add_argument("--recipes", required=True, help="the diffusion recipe YAML the service uses")
    p.add_argument("--style", default=None, help="recipe whose base model to train on (default: the book's custom)")
    p.add_argument("--models-dir", default=None, help="where relative model references live")
    p.add_argument("--storage", default=os.environ.get("AVATAR_STORAGE_URI", "var/storage"),
                   help="storage root URI the service reads tokens from")
    p.add_argument("--accounts", default=None, help="account store URI (default AVATAR_ACCOUNTS_URI)")
    p.add_argument("--job-id", default=None)
    p.add_argument("--token-id", default=None)
    p.add_argument("--init-word", default="style")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4, help="per worker")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--checkpoints", default=None, help="checkpoint storage URI (default <storage>/style-runs)")
    a = p.parse_args(argv)
    extra = {k: v for k, v in (("job_id", a.job_id), ("token_id", a.token_id)) if v}
    return DiffusionTrainConfig(
        account_id=a.account, images=a.images, storage_uri=a.storage, recipes=a.recipes, base_style=a.style,
        models_dir=a.models_dir, accounts_uri=a.accounts, init_word=a.init_word, epochs=a.epochs,
        steps_per_epoch=a.steps_per_epoch, batch_size=a.batch_size, image_size=a.image_size, lr=a.lr,
        num_workers=a.workers, cpus_per_worker=a.cpus_per_worker, use_gpu=a.gpu, max_failures=a.max_failures,
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
