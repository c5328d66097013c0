"""Diffusion engines for StyleApply (img2img on the aligned face) and BgGenerate (background inpainting).

Identity is kept with commercially usable components only: img2img strength, an IP-Adapter that reads the face itself
through a CLIP image encoder, and a ControlNet on the face-mesh sketch or edges. Models load once in the constructor;
anything missing or corrupt raises `ModelUnavailable` there, so a replica reports unhealthy instead of serving.
Pipelines for one base model share their modules (`from_pipe`), so extra recipes on the same base cost no memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from avatar.catalog.palettes import PALETTES
from avatar.catalog.styles import resolve_background
from avatar.errors import ModelUnavailable
from avatar.engines.diffusion.control import conditioning_image
from avatar.engines.diffusion.recipes import RecipeBook, StyleRecipe, load_recipes
from avatar.types import StyleSpec

log = logging.getLogger(__name__)

ENGINE_VERSION = "1.0"


# ---------------------------------------------------------------------------------------------------------- runtime

def pick_device(device: str = "auto") -> str:
    """`cuda` when a GPU is visible at run time (Ray may grant a logical GPU on a machine without one), else `cpu`."""
    import torch
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelUnavailable(f"device {device!r} requested but no CUDA GPU is visible")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    """fp16 on GPU by default (bf16 on request), always fp32 on CPU where half-precision kernels are slow or missing."""
    import torch
    if not device.startswith("cuda"):
        return torch.float32
    table = {"auto": torch.float16, "fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ModelUnavailable(f"unknown dtype {dtype!r}; use auto, fp16, bf16 or fp32")
    return table[dtype]


def _has_peft() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ModelLoader:
    """Resolves model references (directory or hub id) and wraps every load failure into `ModelUnavailable`; the
    engines load through it, and style training resolves its base model with it, so both find the same files."""

    models_dir: Path | None
    local_files_only: bool
    device: str = "cpu"
    dtype: Any = None

    @classmethod
    def at(cls, models_dir: str | None, local_files_only: bool = True, device: str = "cpu",
           dtype: Any = None) -> "ModelLoader":
        """A loader for the `models_dir` option as configured (a path string, `~` allowed, or None)."""
        return cls(Path(models_dir).expanduser() if models_dir else None, local_files_only, device, dtype)

    def resolve(self, ref: str, what: str) -> str:
        for candidate in (Path(ref).expanduser(), (self.models_dir / ref) if self.models_dir else None):
            if candidate is not None and candidate.exists():
                return str(candidate)
        if self.local_files_only or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
            raise ModelUnavailable(f"{what} {ref!r} not found (looked in {self.models_dir or 'the working directory'}"
                                   f"{'' if not self.local_files_only else '; hub downloads are off'})")
        return ref

    def load(self, what: str, ref: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, local_files_only=self.local_files_only, **kwargs)
        except ModelUnavailable:
            raise
        except Exception as exc:  # corrupt weights, wrong layout, missing files: all start-up failures
            raise ModelUnavailable(f"cannot load {what} from {ref}: {type(exc).__name__}: {exc}") from exc


def fingerprint(ref: str) -> str:
    """A short content id for a model: directory name + hash of file names, sizes and configs; hub ids as given."""
    path = Path(ref)
    if not path.exists():
        return ref
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f"{f.relative_to(path) if f != path else f.name}:{f.stat().st_size}".encode())
        if f.suffix == ".json":
            h.update(f.read_bytes())
    return f"{path.name}@{h.hexdigest()[:10]}"


def model_family(ref: str, declared: str = "auto") -> str:
    """`sd` or `sdxl`: `declared` unless it is `auto`, else read from the pipeline's model_index.json (a hub id: its
    name). ModelUnavailable when a local directory is not a diffusers pipeline."""
    if declared != "auto":
        return declared
    index = Path(ref) / "model_index.json"
    if not index.is_file():
        if Path(ref).exists():
            raise ModelUnavailable(f"{ref} is not a diffusers pipeline directory (model_index.json missing)")
        return "sdxl" if "xl" in ref.lower() else "sd"
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except ValueError as exc:
        raise ModelUnavailable(f"{index} is not valid JSON: {exc}") from exc
    return "sdxl" if "XL" in name else "sd"


def _classes(family: str) -> tuple[type, type, type]:
    """(img2img, controlnet img2img, inpaint) pipeline classes for a model family."""
    import diffusers as d
    if family == "sdxl":
        return (d.StableDiffusionXLImg2ImgPipeline, d.StableDiffusionXLControlNetImg2ImgPipeline,
                d.StableDiffusionXLInpaintPipeline)
    return d.StableDiffusionImg2ImgPipeline, d.StableDiffusionControlNetImg2ImgPipeline, d.StableDiffusionInpaintPipeline


def _scheduler(recipe: StyleRecipe, default: Any) -> Any:
    """A fresh scheduler instance per recipe (schedulers hold per-run state), chosen by the fast path or by name."""
    import diffusers as d
    config = default.config
    kind = recipe.fast.kind if recipe.fast else recipe.scheduler
    if kind == "lcm":
        return d.LCMScheduler.from_config(config)
    if kind == "lightning":
        return d.EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    if kind == "turbo":
        return d.EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    table = {"ddim": d.DDIMScheduler, "euler": d.EulerDiscreteScheduler, "euler_a": d.EulerAncestralDiscreteScheduler,
             "dpmpp_2m": d.DPMSolverMultistepScheduler}
    return table.get(kind, type(default)).from_config(config)


# ------------------------------------------------------------------------------------------------------ base models

@dataclass
class _Base:
    """One loaded base pipeline (img2img class) plus what is attached to its shared UNet."""

    ref: str
    family: str
    pipe: Any
    model_id: str
    ip_kind: str | None = None
    loras: set[str] = field(default_factory=set)


def _load_base(loader: ModelLoader, recipe: StyleRecipe, *, adapters: bool, vae_tiling: bool) -> _Base:
    ref = loader.resolve(recipe.base_model, "base model")
    family = model_family(ref, recipe.family)
    img2img, _, _ = _classes(family)
    kwargs: dict[str, Any] = {"dtype": loader.dtype}
    if family == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)   # the service has its own safety stage
    if recipe.vae:
        from diffusers import AutoencoderKL
        vref = loader.resolve(recipe.vae, "VAE")
        kwargs["vae"] = loader.load("VAE", vref, AutoencoderKL.from_pretrained, vref, dtype=loader.dtype)
    ip = recipe.ip_adapter if adapters else None
    if ip and ip.kind == "clip":
        kwargs.update(_image_encoder(loader, ip))
    pipe = loader.load("base model", ref, img2img.from_pretrained, ref, **kwargs)
    _check_components(pipe, ref)
    if ip:
        iref = loader.resolve(ip.path, "IP-Adapter")
        loader.load("IP-Adapter", iref, pipe.load_ip_adapter, iref, subfolder=ip.subfolder,
                    weight_name=ip.weight_name, image_encoder_folder=None)
    pipe.to(loader.device)
    if vae_tiling:
        pipe.vae.enable_tiling()   # 1200 px crops decode in tiles instead of one large activation
    pipe.set_progress_bar_config(disable=True)
    return _Base(ref=ref, family=family, pipe=pipe, model_id=fingerprint(ref), ip_kind=ip.kind if ip else None)


def _image_encoder(loader: ModelLoader, ip: Any) -> dict[str, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    ref = loader.resolve(ip.image_encoder or str(Path(ip.path) / "image_encoder"), "IP-Adapter image encoder")
    enc = loader.load("image encoder", ref, CLIPVisionModelWithProjection.from_pretrained, ref, dtype=loader.dtype)
    try:
        proc = CLIPImageProcessor.from_pretrained(ref, local_files_only=True)
    except Exception:   # many published encoders ship without a processor config: CLIP's defaults at 224 px
        proc = CLIPImageProcessor()
    return {"image_encoder": enc, "feature_extractor": proc}


def _check_components(pipe: Any, ref: str) -> None:
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, n, None) is None]
    if missing:
        raise ModelUnavailable(f"base model {ref} lacks components: {', '.join(missing)}")


def _add_lora(base: _Base, loader: ModelLoader, ref: str, weight_name: str | None, name: str) -> None:
    if name in base.loras:
        return
    if not _has_peft():
        raise ModelUnavailable(f"LoRA {ref!r} needs the 'peft' package, which is not installed")
    path = loader.resolve(ref, "LoRA")
    kwargs = {"weight_name": weight_name} if weight_name else {}
    loader.load("LoRA", path, base.pipe.load_lora_weights, path, adapter_name=name, **kwargs)
    base.loras.add(name)


# ------------------------------------------------------------------------------------------------------ style tokens

class _TokenCache:
    """Custom style tokens loaded on demand, least recently used evicted so many tokens never all sit in memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.entries: OrderedDict[tuple[str, str], tuple[str, str, _Base]] = OrderedDict()

    def use(self, base: _Base, token: dict, loader: ModelLoader) -> tuple[str, str]:
        """Loads `token` into `base` if needed; returns (kind, trigger word or adapter name)."""
        kind, path = token.get("kind"), token.get("path")
        if kind not in ("textual_inversion", "lora") or not path:
            raise ModelUnavailable(f"style token needs kind textual_inversion|lora and a path, got {token!r}")
        key = (base.ref, str(path))
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key][:2]
        name = token.get("trigger") or f"<{token.get('id') or Path(path).stem}>"
        if token.get("base_model_id") and token["base_model_id"] != base.model_id:
            log.warning("style token %s was trained on %s but renders on %s; its look may differ",
                        token.get("id") or path, token["base_model_id"], base.model_id)
        if kind == "textual_inversion":
            _load_embedding(base, loader, str(path), name)
        else:
            name = "tok_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
            _add_lora(base, loader, str(path), token.get("weight_name"), name)
        self.entries[key] = (kind, name, base)
        while len(self.entries) > self.capacity:
            self._evict(*self.entries.popitem(last=False)[1])
        return kind, name

    @staticmethod
    def _evict(kind: str, name: str, base: _Base) -> None:
        if kind == "textual_inversion":
            base.pipe.unload_textual_inversion(name)
        else:
            base.pipe.delete_adapters(name)
            base.loras.discard(name)


def _load_embedding(base: _Base, loader: ModelLoader, path: str, trigger: str) -> None:
    """Textual inversion into the text encoder(s); SDXL files carry one vector set per encoder (clip_l, clip_g)."""
    ref = loader.resolve(path, "textual inversion")
    pipe = base.pipe
    if base.family == "sdxl":
        from safetensors.torch import load_file
        state = load_file(ref)
        for key, enc, tok in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                              ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):
            loader.load("textual inversion", ref, pipe.load_textual_inversion, state[key], token=trigger,
                        text_encoder=enc, tokenizer=tok)
        return
    loader.load("textual inversion", ref, pipe.load_textual_inversion, ref, token=trigger)


# -------------------------------------------------------------------------------------------------------- shared core

def _img2img_steps(steps: int, strength: float) -> int:
    """Scheduler length so img2img runs `steps` denoising steps whatever the strength (diffusers runs int(n * s))."""
    n = max(steps, math.ceil(steps / strength - 1e-9))
    while int(n * strength) < steps:
        n += 1
    return n


def _work_size(recipe: StyleRecipe, size: int, multiple: int) -> int:
    target = recipe.work_size or size
    return max(multiple, int(round(target / multiple)) * multiple)


def _to_pil(image: np.ndarray, size: int) -> Image.Image:
    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return pil if pil.size == (size, size) else pil.resize((size, size), Image.Resampling.LANCZOS)


def _from_np(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if out.shape[1::-1] != size:
        out = np.asarray(Image.fromarray(out).resize(size, Image.Resampling.LANCZOS))
    return out


def _seed(spec: StyleSpec, default: int) -> int:
    return int(spec.extras.get("seed", default)) if spec.extras else default


class _EngineBase:
    """Loading, device/dtype choice and model identity shared by the style and background engines."""

    name = "diffusion"

    def __init__(self, recipes: Any, *, device: str = "auto", dtype: str = "auto", models_dir: str | None = None,
                 local_files_only: bool = True, vae_tiling: bool = True, adapters: bool = True) -> None:
        import diffusers
        self.book: RecipeBook = load_recipes(recipes)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self._loader = ModelLoader.at(models_dir, local_files_only, self.device, self.dtype)
        self._lock = threading.RLock()   # one generation at a time: schedulers and adapter selection are shared state
        self._bases: dict[tuple, _Base] = {}
        self._recipe_base: dict[str, _Base] = {}
        for style, recipe in self.book.recipes.items():
            self._recipe_base[style] = self._base_for(recipe, adapters, vae_tiling)
        digest = hashlib.sha256(self.book.model_dump_json().encode()).hexdigest()[:8]
        self.version = f"{ENGINE_VERSION}+diffusers{diffusers.__version__}+recipes.{digest}"
        self.model_ids = {s: b.model_id for s, b in self._recipe_base.items()}
        self.model_id = ";".join(dict.fromkeys(self.model_ids.values()))

    def _base_for(self, recipe: StyleRecipe, adapters: bool, vae_tiling: bool) -> _Base:
        ip = recipe.ip_adapter if adapters else None
        key = (recipe.base_model, recipe.vae, recipe.family, ip.model_dump_json(exclude={"scale"}) if ip else None)
        if key not in self._bases:
            self._bases[key] = _load_base(self._loader, recipe, adapters=adapters, vae_tiling=vae_tiling)
        return self._bases[key]

    def _select_adapters(self, base: _Base, active: list[tuple[str, float]]) -> None:
        if not base.loras:
            return
        if active:
            base.pipe.enable_lora()
            base.pipe.set_adapters([n for n, _ in active], [w for _, w in active])
        else:
            base.pipe.disable_lora()

    def _recipe_loras(self, style: str, recipe: StyleRecipe, base: _Base) -> list[tuple[str, float]]:
        active = []
        if recipe.lora:
            _add_lora(base, self._loader, recipe.lora.path, recipe.lora.weight_name, f"style_{style}")
            active.append((f"style_{style}", recipe.lora.scale))
        if recipe.fast and recipe.fast.lora:
            name = "fast_" + hashlib.sha1(recipe.fast.lora.encode()).hexdigest()[:8]
            _add_lora(base, self._loader, recipe.fast.lora, recipe.fast.lora_weight_name, name)
            active.append((name, 1.0))
        return active

    def _generators(self, seeds: Sequence[int]) -> list[Any]:
        import torch
        return [torch.Generator(device="cpu").manual_seed(s) for s in seeds]   # same noise on any device

    def _ip_embeds(self, base: _Base, pipe: Any, images: list[Image.Image], cfg: bool,
                   embedder: Callable[[np.ndarray], np.ndarray] | None) -> list[Any] | None:
        """Per-sample image-prompt embeddings (batch, 1, dim), negatives first under classifier-free guidance."""
        import torch
        if base.ip_kind is None:
            return None
        if base.ip_kind == "faceid":
            pos = torch.stack([torch.as_tensor(embedder(np.asarray(im)), dtype=self.dtype) for im in images])
            neg = torch.zeros_like(pos)
        else:
            pos, neg = pipe.encode_image(images, self.device, 1)
        pos, neg = pos[:, None].to(self.device, self.dtype), neg[:, None].to(self.device, self.dtype)
        return [torch.cat([neg, pos]) if cfg else pos]

    def describe(self, spec: StyleSpec) -> dict[str, Any]:
        """Metadata for the response and logs: engine, version, model and the settings this spec resolves to."""
        style, recipe = self.book.for_style(spec.style, spec.token)
        return {"engine": self.name, "engine_version": self.version, "model_id": self.model_ids[style],
                "recipe": style, "steps": recipe.effective_steps, "strength": round(recipe.strength_at(spec.intensity), 4),
                "ip_adapter_scale": round(recipe.ip_scale_at(spec.intensity), 4),
                "controlnet_scale": round(recipe.control_scale_at(spec.intensity), 4),
                "fast_path": recipe.fast.kind if recipe.fast else None, "seed": _seed(spec, self.book.seed),
                "device": self.device, "dtype": str(self.dtype).removeprefix("torch.")}


# ------------------------------------------------------------------------------------------------------- style engine

@dataclass
class _Job:
    """The resolved settings of one request; requests with equal `group` run as one batched pipeline call."""

    index: int
    style: str
    recipe: StyleRecipe
    image: np.ndarray
    landmarks: np.ndarray | None
    spec: StyleSpec

    @property
    def group(self) -> tuple:
        i = self.spec.intensity
        token = json.dumps(self.spec.token, sort_keys=True, default=str) if self.spec.token else None
        return (self.style, token, round(self.recipe.strength_at(i), 4), round(self.recipe.ip_scale_at(i), 4),
                round(self.recipe.control_scale_at(i), 4), self.image.shape[:2])


class DiffusionStyleEngine(_EngineBase):
    """StyleEngine on Stable Diffusion / SDXL img2img with optional IP-Adapter, ControlNet, LoRA and fast path.

    `recipes`: a RecipeBook, a dict (serve_config options) or a YAML path. `device`: auto|cuda|cuda:N|cpu.
    `dtype`: auto (fp16 on GPU)|fp16|bf16|fp32 (CPU always fp32). `models_dir`: where relative model references live.
    `local_files_only`: never contact a model hub. `warmup`/`warmup_size`: one generation per recipe at start-up.
    `token_cache_size`: custom style tokens kept loaded. `face_embedder`: image -> identity vector, only for recipes
    that opt into the research-licensed FaceID adapter.
    """

    def __init__(self, recipes: Any, *, device: str = "auto", dtype: str = "auto", models_dir: str | None = None,
                 local_files_only: bool = True, vae_tiling: bool = True, warmup: bool = True, warmup_size: int = 512,
                 token_cache_size: int = 8, face_embedder: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(recipes, device=device, dtype=dtype, models_dir=models_dir,
                         local_files_only=local_files_only, vae_tiling=vae_tiling)
        self._face_embedder = face_embedder
        self._tokens = _TokenCache(token_cache_size)
        self._controlnets: dict[str, Any] = {}
        self._pipes: dict[tuple[str, bool], Any] = {}
        for style, recipe in self.book.recipes.items():
            self._build_pipes(style, recipe)
        if warmup:
            self.warm_up(warmup_size)

    def _build_pipes(self, style: str, recipe: StyleRecipe) -> None:
        base = self._recipe_base[style]
        if base.ip_kind == "faceid" and self._face_embedder is None:
            raise ModelUnavailable(f"recipe {style!r} uses the FaceID adapter but no face_embedder was given")
        img2img, control_cls, _ = _classes(base.family)
        scheduler = _scheduler(recipe, base.pipe.scheduler)
        self._recipe_loras(style, recipe, base)
        if recipe.controlnet:
            net = self._controlnet(recipe.controlnet.path)
            self._pipes[(style, True)] = control_cls.from_pipe(base.pipe, controlnet=net, scheduler=scheduler)
        else:
            self._pipes[(style, False)] = img2img.from_pipe(base.pipe, scheduler=scheduler)
        for pipe in self._pipes.values():
            pipe.set_progress_bar_config(disable=True)

    def _controlnet(self, ref: str) -> Any:
        if ref not in self._controlnets:
            from diffusers import ControlNetModel
            path = self._loader.resolve(ref, "ControlNet")
            net = self._loader.load("ControlNet", path, ControlNetModel.from_pretrained, path, dtype=self.dtype)
            self._controlnets[ref] = net.to(self.device)
        return self._controlnets[ref]

    def warm_up(self, size: int = 512) -> None:
        """One generation per recipe at start-up so kernels, allocator and caches are ready for the first request."""
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for style in self.book.recipes:
            self.apply(image, None, StyleSpec(style=style, intensity=0.5))

    def apply(self, image: np.ndarray, landmarks: np.ndarray | None, spec: StyleSpec) -> np.ndarray:
        return self.apply_batch([image], [landmarks], [spec])[0]

    def apply_batch(self, images: Sequence[np.ndarray], landmarks_list: Sequence[np.ndarray | None],
                    specs: Sequence[StyleSpec]) -> list[np.ndarray]:
        """Styles many crops; requests that agree on recipe, token, size and settings share one pipeline call."""
        if not (len(images) == len(landmarks_list) == len(specs)):
            raise ValueError("images, landmarks_list and specs must have the same length")
        jobs = [_Job(i, *self.book.for_style(s.style, s.token), np.asarray(im), lm, s)
                for i, (im, lm, s) in enumerate(zip(images, landmarks_list, specs))]
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        out: list[np.ndarray | None] = [None] * len(jobs)
        with self._lock:
            for group in groups.values():
                for job, result in zip(group, self._run(group)):
                    out[job.index] = result
        return out  # type: ignore[return-value]

    def _run(self, jobs: list[_Job]) -> list[np.ndarray]:
        first = jobs[0]
        style, recipe, spec = first.style, first.recipe, first.spec
        base = self._recipe_base[style]
        pipe = self._pipes[(style, recipe.controlnet is not None)]
        h, w = first.image.shape[:2]
        size = _work_size(recipe, max(h, w), 8)
        prompt, active = recipe.prompt.replace("{token}", ""), self._recipe_loras(style, recipe, base)
        if spec.token:
            kind, name = self._tokens.use(base, spec.token, self._loader)
            if kind == "lora":
                active.append((name, float(spec.token.get("scale", 1.0))))
            else:
                prompt = recipe.prompt.replace("{token}", name) if "{token}" in recipe.prompt else f"{name} style, {prompt}"
        self._select_adapters(base, active)
        pils = [_to_pil(j.image, size) for j in jobs]
        strength = recipe.strength_at(spec.intensity)
        guidance = recipe.effective_guidance
        kwargs: dict[str, Any] = dict(
            prompt=[prompt] * len(jobs), negative_prompt=[recipe.negative_prompt] * len(jobs) if guidance > 1 else None,
            image=pils, strength=strength, num_inference_steps=_img2img_steps(recipe.effective_steps, strength),
            guidance_scale=guidance, generator=self._generators([_seed(j.spec, self.book.seed) for j in jobs]),
            output_type="np")
        embeds = self._ip_embeds(base, pipe, pils, guidance > 1, self._face_embedder)
        if embeds is not None:
            pipe.set_ip_adapter_scale(recipe.ip_scale_at(spec.intensity))
            kwargs["ip_adapter_image_embeds"] = embeds
        if recipe.controlnet:
            kwargs["control_image"] = [conditioning_image(recipe.controlnet.source, j.image, j.landmarks, size)
                                       for j in jobs]
            kwargs["controlnet_conditioning_scale"] = recipe.control_scale_at(spec.intensity)
            kwargs["control_guidance_end"] = recipe.controlnet.guidance_end
        result = pipe(**kwargs).images
        return [_from_np(arr, (w, h)) for arr in result]


# -------------------------------------------------------------------------------------------------- background engine

class DiffusionBackgroundEngine(_EngineBase):
    """BackgroundEngine that inpaints everything outside the person mask from the style's prompt and the palette.

    The person's pixels are composited back from the input at the end, so they are never altered. Uses the recipe's
    `inpaint_model` when given (a 9-channel inpainting checkpoint), else the base model in latent-blend inpainting.
    """

    def __init__(self, recipes: Any, *, device: str = "auto", dtype: str = "auto", models_dir: str | None = None,
                 local_files_only: bool = True, vae_tiling: bool = True, warmup: bool = True, warmup_size: int = 512,
                 palette_fill: bool = True) -> None:
        book = load_recipes(recipes)
        if any(r.inpaint_model for r in book.recipes.values()):
            book = book.model_copy(update={"recipes": {
                s: r.model_copy(update={"base_model": r.inpaint_model or r.base_model})
                for s, r in book.recipes.items()}})
        super().__init__(book, device=device, dtype=dtype, models_dir=models_dir, local_files_only=local_files_only,
                         vae_tiling=vae_tiling, adapters=False)
        self._palette_fill = palette_fill
        self._pipes: dict[str, Any] = {}
        for style, recipe in self.book.recipes.items():
            base = self._recipe_base[style]
            self._recipe_loras(style, recipe, base)
            self._pipes[style] = _classes(base.family)[2].from_pipe(
                base.pipe, scheduler=_scheduler(recipe, base.pipe.scheduler))
            self._pipes[style].set_progress_bar_config(disable=True)
        if warmup:
            self.warm_up(warmup_size)

    def warm_up(self, size: int = 512) -> None:
        image = np.full((size, size, 3), 127, np.uint8)
        mask = np.zeros((size, size), np.float32)
        mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
        for style in self.book.recipes:
            self.render(image, mask, None, StyleSpec(style=style, intensity=0.5))

    def render(self, image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray | None, spec: StyleSpec) -> np.ndarray:
        return self.render_batch([image], [mask], [landmarks], [spec])[0]

    def render_batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                     landmarks_list: Sequence[np.ndarray | None], specs: Sequence[StyleSpec]) -> list[np.ndarray]:
        """Backgrounds for many requests; those sharing a recipe and size run as one pipeline call."""
        if not (len(images) == len(masks) == len(landmarks_list) == len(specs)):
            raise ValueError("images, masks, landmarks_list and specs must have the same length")
        groups: dict[tuple, list[int]] = {}
        for i, (im, sp) in enumerate(zip(images, specs)):
            groups.setdefault((self.book.for_style(sp.style, sp.token)[0], np.asarray(im).shape[:2]), []).append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        with self._lock:
            for (style, _), idx in groups.items():
                results = self._inpaint(style, [np.asarray(images[i]) for i in idx],
                                        [np.clip(np.asarray(masks[i], np.float32), 0.0, 1.0) for i in idx],
                                        [specs[i] for i in idx])
                for i, res in zip(idx, results):
                    out[i] = res
        return out  # type: ignore[return-value]

    def _inpaint(self, style: str, images: list[np.ndarray], persons: list[np.ndarray],
                 specs: list[StyleSpec]) -> list[np.ndarray]:
        recipe, base, pipe = self.book.recipes[style], self._recipe_base[style], self._pipes[style]
        h, w = images[0].shape[:2]
        size = _work_size(recipe, max(h, w), 8)
        self._select_adapters(base, self._recipe_loras(style, recipe, base))
        guidance = recipe.effective_guidance
        scenes = [resolve_background(s) for s in specs]   # (kind, palette): the request's, else the style's
        result = pipe(prompt=[self.book.background_prompt(recipe, kind, palette) for kind, palette in scenes],
                      negative_prompt=[recipe.negative_prompt + ", person, face"] * len(specs) if guidance > 1 else None,
                      image=[_to_pil(self._palette_init(im, m, palette), size)
                             for im, m, (_, palette) in zip(images, persons, scenes)],
                      mask_image=[Image.fromarray(((m < 0.5) * 255).astype(np.uint8)).resize(
                          (size, size), Image.Resampling.NEAREST) for m in persons],
                      height=size, width=size, strength=recipe.background_strength,
                      num_inference_steps=_img2img_steps(recipe.effective_steps, recipe.background_strength),
                      guidance_scale=guidance, generator=self._generators([_seed(s, self.book.seed) for s in specs]),
                      output_type="np").images
        return [_composite(im, m, _from_np(arr, (w, h))) for im, m, arr in zip(images, persons, result)]

    def _palette_init(self, image: np.ndarray, person: np.ndarray, palette: str) -> np.ndarray:
        """The init image with the background flooded in the palette's base colour, so partial-strength runs keep it."""
        if not self._palette_fill:
            return image[..., :3]
        rgb = np.array(PALETTES[palette].base, np.float32)
        alpha = person[..., None]
        return np.rint(image[..., :3] * alpha + rgb * (1.0 - alpha)).astype(np.uint8)


def _composite(image: np.ndarray, person: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Person from the input, background generated, soft edges blended; mask 1 keeps the input bit for bit."""
    alpha = person[..., None]
    blend = np.rint(image[..., :3].astype(np.float32) * alpha + generated.astype(np.float32) * (1.0 - alpha))
    return np.where(alpha >= 1.0, image[..., :3], blend.astype(np.uint8))


__all__ = ["DiffusionStyleEngine", "DiffusionBackgroundEngine", "ModelLoader", "fingerprint", "model_family",
           "pick_device", "pick_dtype"]
