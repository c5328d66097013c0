"""Diffusion engines on tiny random models built once per session and loaded through the engines' real loaders."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_diffusion  # noqa: E402

from avatar.errors import ModelUnavailable  # noqa: E402
from avatar.engines.base import BackgroundEngine, StyleEngine  # noqa: E402
from avatar.engines.diffusion.recipes import StyleRecipe, lerp, load_recipes  # noqa: E402
from avatar.types import StyleSpec  # noqa: E402

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_diffusion.build_all(tmp_path_factory.mktemp("diffusion-models"))


@pytest.fixture(scope="session")
def book(models) -> dict:
    ip = {"path": str(models["ip_adapter"]), "weight_name": "ip-adapter_tiny.safetensors",
          "image_encoder": str(models["image_encoder"])}
    base = {"base_model": str(models["base"]), "steps": 2, "guidance_scale": 3.0}
    return {"custom": "plain", "recipes": {
        "plain": {**base, "prompt": "a portrait photo {token}"},
        "controlled": {**base, "prompt": "anime portrait", "controlnet": {"path": str(models["controlnet"])}},
        "ip_low": {**base, "prompt": "a portrait", "strength": [0.6, 0.6], "ip_adapter": {**ip, "scale": [0.0, 0.0]}},
        "ip_high": {**base, "prompt": "a portrait", "strength": [0.6, 0.6], "ip_adapter": {**ip, "scale": [1.0, 1.0]}},
        "fast_lcm": {**base, "prompt": "a portrait", "fast": {"kind": "lcm", "steps": 4, "guidance_scale": 1.0}},
    }}


@pytest.fixture(scope="session")
def engine(book):
    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    return DiffusionStyleEngine(book, warmup=True, warmup_size=SIZE, token_cache_size=1)


@pytest.fixture(scope="session")
def background(book):
    from avatar.engines.diffusion.engine import DiffusionBackgroundEngine
    return DiffusionBackgroundEngine({"recipes": {"plain": book["recipes"]["plain"]}}, warmup=False, vae_tiling=False)


@pytest.fixture(scope="session")
def face() -> tuple[np.ndarray, np.ndarray]:
    """A smooth synthetic 'face' (a disc on a gradient) and pseudo landmarks on an ellipse around it."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.stack([200 * xx + 30, 160 * yy + 40, 120 + 60 * xx * yy], -1)
    img[(xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08] = (225, 180, 150)
    angle = np.linspace(0, 2 * np.pi, 468, endpoint=False)
    landmarks = np.stack([32 + 20 * np.cos(angle * 7), 30 + 24 * np.sin(angle * 5)], -1)
    return img.astype(np.uint8), landmarks


def spec(style: str, intensity: float = 0.5, **extra) -> StyleSpec:
    return StyleSpec(style=style, intensity=intensity, **extra)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def vae_roundtrip(engine, image: np.ndarray) -> np.ndarray:
    """What the model sees of the input: encode + decode through the (random) VAE, i.e. img2img at zero strength."""
    import torch
    pipe = engine._recipe_base["plain"].pipe
    x = pipe.image_processor.preprocess(image[None].astype(np.float32) / 255.0)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean
        out = pipe.vae.decode(latents).sample
    return (pipe.image_processor.postprocess(out, output_type="np")[0] * 255 + 0.5).astype(np.uint8)


def test_output_size_dtype_and_identity(engine, face):
    img, lm = face
    out = engine.apply(img, lm, spec("plain"))
    assert out.shape == img.shape and out.dtype == np.uint8
    odd = engine.apply(img[:60, :60], lm, spec("plain"))          # not a multiple of 8: resized back
    assert odd.shape == (60, 60, 3)
    assert isinstance(engine, StyleEngine) and engine.name == "diffusion"
    assert "sd-tiny@" in engine.model_id and "diffusers" in engine.version
    meta = engine.describe(spec("controlled", 0.5))
    assert meta["engine"] == "diffusion" and meta["model_id"].startswith("sd-tiny@")
    assert meta["recipe"] == "controlled" and meta["device"] == "cpu" and meta["dtype"] == "float32"


def test_deterministic_with_seed(engine, face):
    img, lm = face
    a = engine.apply(img, lm, spec("plain", extras={"seed": 7}))
    assert np.array_equal(a, engine.apply(img, lm, spec("plain", extras={"seed": 7})))
    assert not np.array_equal(a, engine.apply(img, lm, spec("plain", extras={"seed": 8})))


def test_lower_intensity_stays_closer_to_input(engine, face):
    img, lm = face
    reference = vae_roundtrip(engine, img)
    low, high = (engine.apply(img, lm, spec("plain", i)) for i in (0.1, 1.0))
    assert mad(low, high) > 1.0
    assert mad(low, reference) < mad(high, reference)
    meta_low, meta_high = engine.describe(spec("plain", 0.1)), engine.describe(spec("plain", 1.0))
    assert meta_low["strength"] < meta_high["strength"]


def test_controlnet_path_uses_landmarks(engine, face):
    img, lm = face
    a = engine.apply(img, lm, spec("controlled"))
    b = engine.apply(img, lm * 0.5, spec("controlled"))         # a different face-mesh sketch
    c = engine.apply(img, None, spec("controlled"))             # no landmarks: edge conditioning
    assert a.shape == b.shape == c.shape == img.shape
    assert mad(a, b) > 0.1 and mad(a, c) > 0.1


def test_ip_adapter_scale_reaches_the_unet(engine, face):
    img, lm = face
    assert engine._recipe_base["ip_low"] is engine._recipe_base["ip_high"]   # one loaded base serves both
    low, high = engine.apply(img, lm, spec("ip_low")), engine.apply(img, lm, spec("ip_high"))
    assert mad(low, high) > 0.1
    assert engine.describe(spec("ip_high"))["ip_adapter_scale"] == 1.0


def test_fast_path_lcm(engine, face):
    img, lm = face
    pipe = engine._pipes[("fast_lcm", False)]
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert engine.describe(spec("fast_lcm"))["steps"] == 4
    assert engine.apply(img, lm, spec("fast_lcm")).shape == img.shape


def test_batch_matches_single_requests(engine, face):
    img, lm = face
    specs = [spec("plain", 0.4), spec("controlled", 0.6), spec("plain", 0.4, extras={"seed": 3}), spec("ip_high")]
    batch = engine.apply_batch([img] * 4, [lm] * 4, specs)
    for out, s in zip(batch, specs):
        assert np.abs(out.astype(int) - engine.apply(img, lm, s).astype(int)).max() <= 2


def test_textual_inversion_token_and_lru(engine, models, face, tmp_path):
    img, lm = face
    token_a = {"kind": "textual_inversion", "path": str(models["textual_inversion"]), "id": "sty_tinyAAAA"}
    path_b = tiny_diffusion.build_textual_inversion(tmp_path / "b.safetensors", token="<sty_tinyBBBB>", seed=9)
    token_b = {"kind": "textual_inversion", "path": str(path_b), "id": "sty_tinyBBBB"}
    plain = engine.apply(img, lm, spec("sty_tinyAAAA"))          # unknown token style without a token: custom recipe
    styled = engine.apply(img, lm, spec("sty_tinyAAAA", token=token_a))
    tokenizer = engine._recipe_base["plain"].pipe.tokenizer
    assert "<sty_tinyAAAA>" in tokenizer.get_vocab()
    assert mad(plain, styled) > 0.1
    engine.apply(img, lm, spec("sty_tinyBBBB", token=token_b))   # capacity 1: A is evicted
    assert "<sty_tinyAAAA>" not in tokenizer.get_vocab() and "<sty_tinyBBBB>" in tokenizer.get_vocab()
    assert np.array_equal(styled, engine.apply(img, lm, spec("sty_tinyAAAA", token=token_a)))   # reloads


def test_lora_token_without_peft_is_a_clear_error(engine, face, monkeypatch):
    import avatar.engines.diffusion.engine as diffusion
    monkeypatch.setattr(diffusion, "_has_peft", lambda: False)
    with pytest.raises(ModelUnavailable, match="peft"):
        engine.apply(face[0], face[1], spec("sty_loraXXXXX", token={"kind": "lora", "path": "x.safetensors"}))


def test_background_changes_only_outside_the_mask(background, face):
    img, lm = face
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[12:56, 16:48] = 1.0
    mask[10:12, 16:48] = 0.5                                   # a soft edge row
    out = background.render(img, mask, lm, spec("plain", palette="navy", background="bokeh"))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 1.0], img[mask == 1.0])
    assert mad(out[mask == 0.0], img[mask == 0.0]) > 5.0
    assert isinstance(background, BackgroundEngine) and background.name == "diffusion"
    assert np.array_equal(out, background.render(img, mask, lm, spec("plain", palette="navy", background="bokeh")))


def test_missing_model_directory(tmp_path):
    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    recipes = {"plain": {"base_model": str(tmp_path / "nowhere"), "prompt": "x"}}
    with pytest.raises(ModelUnavailable, match="not found"):
        DiffusionStyleEngine(recipes, warmup=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="model_index.json missing"):
        DiffusionStyleEngine({"plain": {"base_model": str(tmp_path / "empty"), "prompt": "x"}}, warmup=False)


def test_corrupt_model_directory(models, tmp_path):
    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    broken = shutil.copytree(models["base"], tmp_path / "broken")
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelUnavailable, match="cannot load base model"):
        DiffusionStyleEngine({"plain": {"base_model": str(broken), "prompt": "x"}}, warmup=False)
    recipes = {"plain": {"base_model": str(models["base"]), "prompt": "x",
                         "controlnet": {"path": str(tmp_path / "no-controlnet")}}}
    with pytest.raises(ModelUnavailable, match="ControlNet"):
        DiffusionStyleEngine(recipes, warmup=False)


def test_research_licence_adapter_is_opt_in(models):
    recipe = {"base_model": str(models["base"]), "prompt": "x", "ip_adapter": {"path": "faceid", "kind": "faceid"}}
    with pytest.raises(ModelUnavailable, match="research"):
        load_recipes({"plain": recipe})
    assert load_recipes({"plain": {**recipe, "allow_research_licence": True}}).recipes["plain"].ip_adapter.kind == "faceid"


def test_registry_creates_diffusion_engines(book):
    from avatar.engines.registry import create_background_engine, create_style_engine
    style = create_style_engine("diffusion", {"recipes": book, "warmup": False, "device": "auto"})
    bg = create_background_engine("diffusion", {"recipes": {"plain": book["recipes"]["plain"]}, "warmup": False})
    assert type(style).__name__ == "DiffusionStyleEngine" and type(bg).__name__ == "DiffusionBackgroundEngine"


def test_device_and_dtype_choice():
    import torch
    from avatar.engines.diffusion.engine import pick_device, pick_dtype
    assert pick_dtype("fp16", "cpu") == torch.float32
    assert pick_dtype("bf16", "cuda") == torch.bfloat16 and pick_dtype("auto", "cuda") == torch.float16
    if not torch.cuda.is_available():
        assert pick_device("auto") == "cpu"
        with pytest.raises(ModelUnavailable, match="no CUDA"):
            pick_device("cuda")


def test_recipe_intensity_mapping_and_example_config():
    recipe = StyleRecipe(base_model="m", prompt="p", strength=(0.2, 0.6), ip_adapter={"path": "ip", "scale": (0.8, 0.4)})
    assert lerp((0.2, 0.6), 0.5) == pytest.approx(0.4) and lerp((0.2, 0.6), 2.0) == pytest.approx(0.6)
    assert recipe.strength_at(0.0) < recipe.strength_at(1.0) and recipe.ip_scale_at(0.0) > recipe.ip_scale_at(1.0)
    book = load_recipes(ROOT / "configs" / "diffusion.yaml")
    assert {"corporate_headshot", "anime_character", "editorial_portrait"} <= set(book.recipes)
    assert book.recipes["corporate_headshot"].effective_steps == 4
    with pytest.raises(ModelUnavailable, match="strength"):
        load_recipes({"x": {"base_model": "m", "prompt": "p", "strength": [0.0, 0.5]}})


def test_img2img_step_count_is_exact():
    from avatar.engines.diffusion.engine import _img2img_steps
    for steps in (1, 2, 4, 8, 20):
        for strength in (0.05, 0.15, 0.3, 0.45, 0.7, 1.0):
            n = _img2img_steps(steps, strength)
            assert int(n * strength) >= steps and int((n - 1) * strength) < steps or n == steps


def test_control_images():
    from avatar.engines.diffusion.control import FACE_OVAL, conditioning_image, edge_map, landmark_sketch
    angle = np.linspace(0, 2 * np.pi, 468, endpoint=False)
    lm = np.stack([50 + 30 * np.cos(angle), 50 + 30 * np.sin(angle)], -1)
    sketch = np.asarray(landmark_sketch(lm, 100))
    x, y = lm[FACE_OVAL[0]].round().astype(int)
    assert sketch.shape == (100, 100, 3) and sketch[y - 1:y + 2, x - 1:x + 2].sum() > 0 and sketch[50, 50].sum() == 0
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 255
    edges = np.asarray(edge_map(img))
    assert edges[:, 19:21].max() == 255 and edges[:, :10].max() == 0
    assert conditioning_image("landmarks", img, None, 32).size == (32, 32)   # falls back to edges
    with pytest.raises(ValueError):
        landmark_sketch(np.zeros((10, 2)), 64)


def test_lora_recipe_without_peft_fails_at_start_up(models, monkeypatch):
    import avatar.engines.diffusion.engine as diffusion
    monkeypatch.setattr(diffusion, "_has_peft", lambda: False)
    recipes = {"plain": {"base_model": str(models["base"]), "prompt": "x", "lora": {"path": str(models["base"])}}}
    with pytest.raises(ModelUnavailable, match="peft"):
        diffusion.DiffusionStyleEngine(recipes, warmup=False)


LORA_FILE = "pytorch_lora_weights.safetensors"


def build_lora(root: Path, unet_dir: Path, *, seed: int = 5) -> Path:
    """A rank-4 LoRA on the tiny UNet's attention projections with non-zero (random) up and down weights, saved in
    the diffusers LoRA format (`unet.*.lora.{down,up}.weight`) as training scripts write it."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    # init_lora_weights=False: both factors random (the default zero `up` would make the LoRA a no-op)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(root, unet_lora_layers=layers, weight_name=LORA_FILE)
    return root / LORA_FILE


@pytest.fixture(scope="session")
def lora_engine(models, tmp_path_factory):
    """The plain recipe, the same recipe with a style LoRA, and the path of that LoRA file."""
    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    path = build_lora(tmp_path_factory.mktemp("lora-tiny"), models["base"] / "unet")
    base = {"base_model": str(models["base"]), "steps": 2, "guidance_scale": 3.0, "prompt": "a portrait photo {token}"}
    recipes = {"custom": "plain", "recipes": {
        "plain": base, "lora": {**base, "lora": {"path": str(path.parent), "weight_name": LORA_FILE}}}}
    return DiffusionStyleEngine(recipes, warmup=False, token_cache_size=1), path


def test_lora_recipe_changes_the_output_deterministically(lora_engine, face):
    engine, _ = lora_engine
    img, lm = face
    plain = engine.apply(img, lm, spec("plain"))
    styled = engine.apply(img, lm, spec("lora"))
    assert mad(plain, styled) > 1.0
    assert np.array_equal(styled, engine.apply(img, lm, spec("lora")))
    assert np.array_equal(plain, engine.apply(img, lm, spec("plain")))       # the LoRA is off for other recipes
    assert engine._recipe_base["plain"].loras == {"style_lora"}              # loaded once, on the shared base


def test_lora_token_loads_and_scales(lora_engine, face):
    engine, path = lora_engine
    img, lm = face
    token = {"kind": "lora", "path": str(path), "id": "sty_loraAAAA"}
    plain = engine.apply(img, lm, spec("sty_loraAAAA"))
    styled = engine.apply(img, lm, spec("sty_loraAAAA", token=token))
    assert mad(plain, styled) > 1.0
    assert np.array_equal(styled, engine.apply(img, lm, spec("sty_loraAAAA", token=token)))
    # same weights at scale 1 and the same prompt as the LoRA recipe: the same image
    assert np.array_equal(styled, engine.apply(img, lm, spec("lora")))
    half = engine.apply(img, lm, spec("sty_loraAAAA", token={**token, "scale": 0.5}))
    assert mad(half, plain) > 0.1 and mad(half, styled) > 0.1
    assert np.array_equal(plain, engine.apply(img, lm, spec("plain")))
    other = Path(shutil.copy(path, path.parent / "other.safetensors"))
    engine.apply(img, lm, spec("sty_loraBBBB", token={"kind": "lora", "path": str(other)}))
    loaded = engine._recipe_base["plain"].loras
    assert len([n for n in loaded if n.startswith("tok_")]) == 1 and "style_lora" in loaded   # capacity 1: A out
    assert np.array_equal(styled, engine.apply(img, lm, spec("sty_loraAAAA", token=token)))   # and back


def test_background_fill_is_the_catalogue_palette(background, face):
    """The init image is flooded with the palette's base colour from the one palette table the CPU engine draws with."""
    from avatar.catalog.palettes import PALETTES
    img, _ = face
    person = np.zeros(img.shape[:2], np.float32)
    person[20:40, 20:40] = 1.0
    for name in ("navy", "neutral_grey"):
        filled = background._palette_init(img, person, name)
        assert (filled[person == 0.0] == PALETTES[name].base).all()
        assert np.array_equal(filled[person == 1.0], img[person == 1.0])


def test_background_batch_matches_single(background, face):
    img, lm = face
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[20:, 16:48] = 1.0
    specs = [spec("plain", palette="sunset", extras={"seed": 1}), spec("plain", palette="navy", background="solid")]
    batch = background.render_batch([img, img], [mask, mask], [lm, lm], specs)
    for out, s in zip(batch, specs):
        assert np.abs(out.astype(int) - background.render(img, mask, lm, s).astype(int)).max() <= 2


def test_benchmark_arguments():
    sys.path.insert(0, str(ROOT / "bench"))
    import diffusion_gpu
    args = diffusion_gpu.parse(["--tiny", "--device", "cpu"])
    assert args.tiny and args.sizes == [64] and args.steps == [2] and args.device == "cpu"
    full = diffusion_gpu.parse([])
    assert full.sizes == [800, 1200] and full.steps == [4, 8] and full.batches == [1, 4] and full.dtype == "fp16"
    assert diffusion_gpu.SDXL_UNET["cross_attention_dim"] == 2048
