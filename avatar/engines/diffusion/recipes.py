"""Declarative per-style diffusion recipes: which components a style uses and how `style_intensity` drives them.

A recipe names its models (local directories or hub ids) and its sampling settings; the engine turns it into loaded
pipelines once at start-up. Every intensity-dependent knob is a `(at_intensity_0, at_intensity_1)` pair interpolated
linearly, so the quality gate's retries, which only lower `style_intensity`, move img2img strength down and the
identity-keeping adapters up without knowing anything about diffusion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from avatar.catalog.backgrounds import BACKGROUNDS
from avatar.catalog.palettes import PALETTES
from avatar.catalog.styles import base_style_of
from avatar.errors import ModelUnavailable

Span = tuple[float, float]   # (value at style_intensity 0, value at style_intensity 1)


def lerp(span: Span, intensity: float) -> float:
    """The span's value at `intensity`, clamped to 0..1."""
    t = min(1.0, max(0.0, float(intensity)))
    return span[0] + (span[1] - span[0]) * t


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSpec(_Part):
    """A style LoRA fused in at `scale` for this recipe (needs the `peft` package)."""

    path: str
    weight_name: str | None = None
    scale: float = 1.0


class IPAdapterSpec(_Part):
    """Image-prompt conditioning on the aligned face itself: keeps identity and colouring.

    `kind: clip` is the original IP-Adapter on a CLIP image encoder (Apache-2.0 weights). `kind: faceid` is
    IP-Adapter-FaceID, whose embeddings come from InsightFace models licensed for non-commercial research only: it is
    refused unless the recipe sets `allow_research_licence: true`, and needs a `face_embedder` given to the engine.
    """

    path: str
    weight_name: str = "ip-adapter_sd15.safetensors"
    subfolder: str = ""
    kind: Literal["clip", "faceid"] = "clip"
    image_encoder: str | None = None     # CLIPVisionModelWithProjection dir/hub id; default <path>/image_encoder
    scale: Span = (0.8, 0.35)            # more identity when intensity drops


class ControlNetSpec(_Part):
    """Structure conditioning drawn from the face-mesh landmarks (or image edges) of the aligned crop."""

    path: str
    source: Literal["landmarks", "edges"] = "landmarks"
    scale: Span = (0.9, 0.45)
    guidance_end: float = 1.0            # stop conditioning after this share of the steps


class FastPath(_Part):
    """A few-step sampler: LCM-LoRA, SDXL-Lightning (LoRA) or a Turbo checkpoint (base model itself is distilled)."""

    kind: Literal["lcm", "lightning", "turbo"]
    lora: str | None = None
    lora_weight_name: str | None = None
    steps: int = Field(4, ge=1, le=12)
    guidance_scale: float = 1.0


class StyleRecipe(_Part):
    """Everything the engine needs to render one style. See docs/diffusion.md for each field."""

    base_model: str
    prompt: str
    negative_prompt: str = "blurry, deformed, disfigured, extra fingers, watermark, text, lowres"
    family: Literal["auto", "sd", "sdxl"] = "auto"
    vae: str | None = None
    lora: LoraSpec | None = None
    steps: int = Field(20, ge=1, le=150)
    guidance_scale: float = 6.0
    strength: Span = (0.2, 0.7)
    ip_adapter: IPAdapterSpec | None = None
    controlnet: ControlNetSpec | None = None
    fast: FastPath | None = None
    scheduler: Literal["default", "ddim", "euler", "euler_a", "dpmpp_2m", "lcm"] = "default"
    work_size: int | None = Field(None, ge=64)   # square size the model renders at; None = the input size
    allow_research_licence: bool = False
    background_prompt: str = "{background} background, {palette}, soft light, professional photograph"
    background_strength: float = Field(0.98, gt=0.0, le=1.0)
    inpaint_model: str | None = None              # a dedicated 9-channel inpainting checkpoint for backgrounds

    @field_validator("strength")
    @classmethod
    def _strength_positive(cls, span: Span) -> Span:
        if not all(0.0 < s <= 1.0 for s in span):
            raise ValueError("strength values must lie in (0, 1]")
        return span

    @model_validator(mode="after")
    def _licence_gate(self) -> "StyleRecipe":
        if self.ip_adapter and self.ip_adapter.kind == "faceid" and not self.allow_research_licence:
            raise ValueError("ip_adapter kind 'faceid' uses InsightFace (non-commercial research licence); "
                             "set allow_research_licence: true to opt in")
        return self

    # Effective settings: the fast path overrides the sampler knobs.
    @property
    def effective_steps(self) -> int:
        return self.fast.steps if self.fast else self.steps

    @property
    def effective_guidance(self) -> float:
        return self.fast.guidance_scale if self.fast else self.guidance_scale

    def strength_at(self, intensity: float) -> float:
        return lerp(self.strength, intensity)

    def ip_scale_at(self, intensity: float) -> float:
        return lerp(self.ip_adapter.scale, intensity) if self.ip_adapter else 0.0

    def control_scale_at(self, intensity: float) -> float:
        return lerp(self.controlnet.scale, intensity) if self.controlnet else 0.0


class RecipeBook(_Part):
    """Recipes by style name; `custom` is the recipe for a base style without its own (default: the first), and the
    one diffusion style training learns on unless told otherwise."""

    recipes: dict[str, StyleRecipe]
    custom: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "RecipeBook":
        if not self.recipes:
            raise ValueError("at least one recipe is required")
        if self.custom is not None and self.custom not in self.recipes:
            raise ValueError(f"custom recipe {self.custom!r} is not among the recipes")
        return self

    @property
    def fallback(self) -> str:
        """The recipe for base styles that have none of their own: `custom`, else the first."""
        return self.custom or next(iter(self.recipes))

    def for_style(self, style: str, token: dict | None = None) -> tuple[str, StyleRecipe]:
        """The style's own recipe, else its base style's (`base_style_of`: how a custom token names its base), else
        the fallback recipe."""
        name = style if style in self.recipes else base_style_of(style, token)
        name = name if name in self.recipes else self.fallback
        return name, self.recipes[name]

    @staticmethod
    def background_prompt(recipe: StyleRecipe, background: str, palette: str) -> str:
        """The recipe's background prompt with the catalogue's words for the background kind and palette."""
        return recipe.background_prompt.format(background=BACKGROUNDS[background].words,
                                               palette=PALETTES[palette].words)


def load_recipes(source: "RecipeBook | dict[str, Any] | str | Path") -> RecipeBook:
    """A RecipeBook from an object, a dict (as in serve_config options) or a YAML file path."""
    if isinstance(source, RecipeBook):
        return source
    data: Any = source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ModelUnavailable(f"diffusion recipe file {path} does not exist")
        import yaml
        data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "recipes" not in data:
        data = {"recipes": data}   # a bare mapping of style name -> recipe
    try:
        return RecipeBook.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise ModelUnavailable(f"invalid diffusion recipe at {where}: {err.get('msg')}") from None
