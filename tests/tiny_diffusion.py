"""Tiny randomly initialised diffusion components, saved in the standard diffusers directory layout.

Real weights cannot be fetched in CI (no model hub), so the tests build these once per session and load them through
the engine's real `from_pretrained(..., local_files_only=True)` path. Every builder is seeded: equal calls give equal
files.
"""

from __future__ import annotations

from pathlib import Path

import torch

CROSS_DIM = 32          # text and image-prompt token width the tiny UNet attends to
IMAGE_EMBED_DIM = 16    # CLIP image encoder projection width (what the IP-Adapter projects from)
BLOCKS = (32, 64)
TOKENS = ["<|startoftext|>", "<|endoftext|>", "a", "portrait", "photo", "face", "style", "studio", "anime", "light",
          "background", "grey", "blue", "warm", "of", "person", "in", "the", ","]


def _unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=BLOCKS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_DIM, norm_num_groups=8, attention_head_dim=8)


def _vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32)


def _tokenizer():
    from transformers import CLIPTokenizer
    vocab = {}
    for word in TOKENS:
        vocab[word] = len(vocab)
        if not word.startswith("<|"):
            vocab[word + "</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz<>_0123456789":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(
        hidden_size=CROSS_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=vocab_size, max_position_embeddings=77, projection_dim=CROSS_DIM,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))


def build_sd(root: Path, *, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-shaped pipeline directory (model_index.json + unet/vae/text_encoder/tokenizer/scheduler)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    pipe = StableDiffusionImg2ImgPipeline(
        unet=_unet(), vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(root)
    return root


def build_controlnet(root: Path, *, seed: int = 1) -> Path:
    """A ControlNet matching the tiny UNet (same blocks and cross-attention width)."""
    from diffusers import ControlNetModel
    torch.manual_seed(seed)
    net = ControlNetModel(
        in_channels=4, layers_per_block=1, block_out_channels=BLOCKS, down_block_types=(
            "DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=CROSS_DIM, norm_num_groups=8,
        attention_head_dim=8, conditioning_embedding_out_channels=(8, 16))
    # Random ControlNets are initialised with zero output convolutions (no effect); give them some weight so the
    # test can see the conditioning reach the UNet.
    with torch.no_grad():
        zeroed = [net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        for p in (q for m in zeroed for q in m.parameters()):
            p.normal_(0, 0.05)
    net.save_pretrained(root)
    return root


def build_image_encoder(root: Path, *, seed: int = 2) -> Path:
    """A CLIPVisionModelWithProjection + CLIPImageProcessor (the image-prompt encoder an IP-Adapter reads)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=IMAGE_EMBED_DIM))
    model.save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def build_ip_adapter(root: Path, unet_dir: Path, *, seed: int = 3,
                     weight_name: str = "ip-adapter_tiny.safetensors") -> Path:
    """IP-Adapter weights in the original checkpoint format (`image_proj.*` + `ip_adapter.<n>.to_{k,v}_ip.weight`).

    The cross-attention layers are numbered 1, 3, 5, ... in the UNet's attention-processor order, which is how
    diffusers' loader maps them back.
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    rev = list(reversed(unet.config.block_out_channels))
    tensors = {"image_proj.proj.weight": torch.randn(4 * CROSS_DIM, IMAGE_EMBED_DIM) * 0.2,
               "image_proj.proj.bias": torch.zeros(4 * CROSS_DIM),
               "image_proj.norm.weight": torch.ones(CROSS_DIM), "image_proj.norm.bias": torch.zeros(CROSS_DIM)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = rev[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        for kind in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key}.{kind}.weight"] = torch.randn(hidden, CROSS_DIM) * 0.2
        key += 2
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / weight_name))
    return root


def build_textual_inversion(path: Path, *, token: str = "<sty_tiny>", seed: int = 4) -> Path:
    """A textual-inversion embedding file in the diffusers format (`{token: tensor(CROSS_DIM)}` safetensors)."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: torch.randn(CROSS_DIM) * 5.0}, str(path))
    return path


def build_all(root: Path) -> dict[str, Path]:
    """Everything the engine tests need, under `root`."""
    base = build_sd(root / "sd-tiny")
    return {"base": base, "controlnet": build_controlnet(root / "controlnet-tiny"),
            "image_encoder": build_image_encoder(root / "image-encoder-tiny"),
            "ip_adapter": build_ip_adapter(root / "ip-adapter-tiny", base / "unet"),
            "textual_inversion": build_textual_inversion(root / "tokens" / "sty_tiny.safetensors")}
