"""GPU benchmark of the diffusion engines: StyleApply and BgGenerate latency, memory and throughput at SDXL size.

No weights are downloaded: the real SDXL architecture (UNet, VAE, both text encoders, with the published config values
written below) is built with random weights on the GPU, saved in the diffusers layout and loaded through the engines'
own loaders. Timings depend on shapes and kernels, not on weight values, so they stand for the real model.

    python bench/diffusion_gpu.py                       # 800/1200 px, 4/8 steps, batch 1/4, fp16, on cuda
    python bench/diffusion_gpu.py --tiny --device cpu   # smoke run on tiny random models, no GPU needed
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SDXL_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.13025, force_upcast=False)   # as the fp16-fix VAE: decodes in fp16
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def build_sdxl(root: Path, device: str) -> Path:
    """Random-weight SDXL in the diffusers layout (fp16 files), initialised on `device` for speed."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_diffusion import _tokenizer   # a small in-memory CLIP tokenizer; ids stay inside the real vocabulary

    torch.manual_seed(0)
    with torch.device(device):
        parts = dict(unet=UNet2DConditionModel(**SDXL_UNET), vae=AutoencoderKL(**SDXL_VAE),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)))
    for module in parts.values():
        module.to(torch.float16)
    pipe = StableDiffusionXLImg2ImgPipeline(
        **parts, tokenizer=_tokenizer(), tokenizer_2=_tokenizer(),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="trailing", steps_offset=1))
    pipe.save_pretrained(root)
    return root


def build_tiny(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_diffusion import build_sd
    return build_sd(root)


def time_calls(fn, repeats: int, sync) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


def run(args: argparse.Namespace) -> int:
    import torch
    from avatar.engines.diffusion.engine import DiffusionBackgroundEngine, DiffusionStyleEngine
    from avatar.types import StyleSpec

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("No CUDA GPU is visible: this benchmark needs one. Run `--tiny --device cpu` for a smoke test.")
        return 2
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        model = build_tiny(Path(tmp) / "sd") if args.tiny else build_sdxl(Path(tmp) / "sdxl", args.device)
        print(f"built {'tiny SD' if args.tiny else 'random SDXL'} in {time.perf_counter() - t0:.1f} s")
        if cuda:
            torch.cuda.empty_cache()
        print(f"{'stage':<10} {'px':>5} {'steps':>5} {'batch':>5} {'p50 ms':>9} {'p95 ms':>9} {'GiB':>6} {'avatars/s':>9}")
        for steps in args.steps:
            recipes = {"bench": {"base_model": str(model), "prompt": "a professional portrait photo", "steps": steps,
                                 "guidance_scale": args.guidance, "strength": [0.6, 0.6],
                                 "background_strength": 1.0}}
            options = dict(device=args.device, dtype=args.dtype, warmup=False, vae_tiling=not args.tiny)
            style = DiffusionStyleEngine(recipes, **options)
            background = DiffusionBackgroundEngine(recipes, **options)
            for size in args.sizes:
                rng = np.random.default_rng(0)
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                mask = np.zeros((size, size), np.float32)
                mask[size // 5:, size // 4: 3 * size // 4] = 1.0
                for batch in args.batches:
                    specs = [StyleSpec(style="bench", intensity=0.6, extras={"seed": i}) for i in range(batch)]
                    calls = {
                        "StyleApply": lambda: style.apply_batch([image] * batch, [None] * batch, specs),
                        "BgGenerate": lambda: background.render_batch([image] * batch, [mask] * batch,
                                                                      [None] * batch, specs)}
                    for stage, fn in calls.items():
                        fn()   # warm-up for this shape
                        if cuda:
                            torch.cuda.reset_peak_memory_stats()
                        ms = time_calls(fn, args.repeats, sync)
                        gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                        p50 = statistics.median(ms)
                        print(f"{stage:<10} {size:>5} {steps:>5} {batch:>5} {p50:>9.1f} {p95(ms):>9.1f} "
                              f"{gib:>6.1f} {batch * 1000.0 / p50:>9.2f}", flush=True)
            del style, background
            if cuda:
                torch.cuda.empty_cache()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="square sizes in px (default 800 1200)")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="denoising steps (default 4 8)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=1.0, help="> 1 doubles the UNet batch (classifier-free guidance)")
    ap.add_argument("--tiny", action="store_true", help="tiny random SD model instead of SDXL (smoke test)")
    ap.add_argument("--workdir", default=None, help="where the random model is saved (needs ~7 GB for SDXL)")
    args = ap.parse_args(argv)
    args.sizes = args.sizes or ([64] if args.tiny else [800, 1200])
    args.steps = args.steps or ([2] if args.tiny else [4, 8])
    if args.tiny:
        args.repeats = min(args.repeats, 3)
    return args


if __name__ == "__main__":
    sys.exit(run(parse()))
