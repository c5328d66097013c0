"""Train a custom diffusion style for an account: a textual-inversion embedding on the configured base model.

    python -m training.train_diffusion_style --account acc_... --images DIR|URI|manifest.parquet \
        --recipes configs/diffusion.yaml [--style editorial_portrait] --storage var/storage
    ray job submit --working-dir . -- python -m training.train_diffusion_style --account acc_... --gpu ...

What is learnt: one new word (`<token_id>`) in the text encoder's vocabulary, a single embedding vector, optimised so
that the frozen UNet denoises the account's examples well when the prompt contains it ("a portrait in the style of
<sty_...>"). Everything else (UNet, VAE, text encoder) stays frozen, so the artefact is one vector (3 KB for SD 1.5)
that loads into the running pipeline in milliseconds and cannot change how other styles or accounts render.

Same order of work as `training.train_style` (both run on `training.runner`): validate the examples (nothing written
on bad input), check the cluster's resources, fit with Ray Train (data parallel over N workers, a checkpoint every
epoch, a failed worker group resumes from the latest), then save the token through the storage layer and register it
for the account. Progress (epoch, loss, ETA) goes to the job's record (`training.records`), readable through
`training.jobs.StyleJobs`.

SD 1.x / 2.x base models (one text encoder) are supported; SDXL bases are refused before anything starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from avatar.engines.diffusion.engine import ModelLoader, fingerprint, model_family
from avatar.engines.diffusion.recipes import load_recipes
from avatar.errors import InvalidRequest, ModelUnavailable
from avatar.tokens import DiffusionToken, build_diffusion_manifest, save_diffusion_token
from training import runner
from training.dataset import ExampleSet
from training.runner import ResourcesUnavailable, TrainingFailed, TrainResult  # noqa: F401 - part of this API

ENGINE = "diffusion"
# The repository's recipe book, found from this package (not from the working directory).
RECIPES_PATH = Path(__file__).resolve().parent.parent / "configs" / "diffusion.yaml"
TEMPLATES = ("a portrait in the style of {}", "a photo of a person, {} style", "a face in {} style",
             "{} style portrait", "a studio portrait, {}", "a picture of a person in the style of {}")


@dataclass
class DiffusionTrainConfig(runner.StyleJobConfig):
    recipes: Any = str(RECIPES_PATH)          # the recipe book the service uses (YAML path or dict)
    base_style: str | None = None             # recipe whose base model the embedding is learnt on; default the
                                              # book's `custom` (recorded as the token's base style)
    models_dir: str | None = None             # where relative model references live (as the engine's models_dir)
    local_files_only: bool = True
    init_word: str = "style"                  # the embedding starts from this word's embedding
    epochs: int = 4
    steps_per_epoch: int = 50
    batch_size: int = 4                       # per worker
    image_size: int = 512                     # training resolution (SD 1.5: 512, SD 2.x 768 models: 768)
    lr: float = 5e-3

    engine: ClassVar[str] = ENGINE
    run_prefix: ClassVar[str] = "dstyle"

    @property
    def placeholder(self) -> str:
        return f"<{self.token_id}>"


@dataclass
class BaseModel:
    """The resolved base model a job trains against (picked from the recipe book on the driver)."""

    style: str
    ref: str            # the recipe's reference, as written
    path: str           # resolved local directory or hub id
    family: str
    fingerprint: str


def resolve_base(cfg: DiffusionTrainConfig) -> BaseModel:
    """The recipe's base model, resolved the way the serving engine resolves it. ModelUnavailable when missing."""
    book = load_recipes(cfg.recipes)
    style = cfg.base_style or book.fallback   # the SD 1.x recipe a book names `custom` (SDXL cannot be trained)
    if style not in book.recipes:
        raise InvalidRequest(f"no diffusion recipe {style!r}; recipes: {', '.join(book.recipes)}",
                             field="base_style", code="unknown_base_style")
    recipe = book.recipes[style]
    path = ModelLoader.at(cfg.models_dir, cfg.local_files_only).resolve(recipe.base_model, "base model")
    family = model_family(path, recipe.family)
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
    import ray.train.torch

    cfg = DiffusionTrainConfig(**config["cfg"])
    session = runner.WorkerSession(cfg)
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    m, vae = _load_models(cfg, config["base_path"], device)
    images = ray.get(config["images_ref"])
    mean, std = _encode_latents(vae, images[session.rank::session.world], device, m.dtype)
    del vae
    core = TokenEmbedding(m.text_encoder, m.placeholder_id, m.init)
    if session.state:
        core.vector.data.copy_(session.state["vector"])
    model, opt = session.prepare(core, lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0))
    steps = m.scheduler.config.num_train_timesteps
    for epoch in session.epochs():
        rng = np.random.default_rng([cfg.seed, epoch, session.rank])
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        total = 0.0
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
        metrics = session.metrics(epoch, total / cfg.steps_per_epoch, vector_norm=float(core.vector.norm()),
                                  init_norm=float(m.init.norm()))
        if session.rank == 0:
            metrics["val_loss"], metrics["init_loss"] = _eval_losses(m, core, mean, std, cfg)
        session.end_epoch(epoch, metrics, {"vector": core.vector.detach().cpu()}, opt)


# ---------------------------------------------------------------- the driver
def run_training(cfg: DiffusionTrainConfig, examples: ExampleSet | None = None) -> TrainResult:
    """Validate, fit, save and register the embedding. Raises DatasetError / ModelUnavailable /
    ResourcesUnavailable / TrainingFailed."""

    def train(examples: ExampleSet, accounts: Any, base: BaseModel) -> tuple[dict[str, Any], dict[str, float]]:
        state, metrics = runner.fit(cfg, train_loop_per_worker, examples, base_path=base.path)
        return _publish(cfg, examples, base, state["vector"], metrics, accounts), metrics

    return runner.run_job(cfg, examples, train, before_fit=lambda: resolve_base(cfg))


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
    return runner.publish(cfg, token, save_diffusion_token, accounts)


# ---------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> DiffusionTrainConfig:
    p = runner.job_parser("python -m training.train_diffusion_style", __doc__.split("\n")[0], epochs=4)
    p.add_argument("--recipes", required=True, help="the diffusion recipe YAML the service uses")
    p.add_argument("--style", default=None, help="recipe whose base model to train on (default: the book's custom)")
    p.add_argument("--models-dir", default=None, help="where relative model references live")
    p.add_argument("--init-word", default="style")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4, help="per worker")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    a = p.parse_args(argv)
    return DiffusionTrainConfig(
        recipes=a.recipes, base_style=a.style, models_dir=a.models_dir, init_word=a.init_word,
        steps_per_epoch=a.steps_per_epoch, batch_size=a.batch_size, image_size=a.image_size, lr=a.lr,
        **runner.job_config_args(a))


def main(argv: list[str] | None = None) -> int:
    return runner.main(parse_args(argv), run_training)


if __name__ == "__main__":
    sys.exit(main())
