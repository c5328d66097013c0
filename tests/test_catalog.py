"""The style catalogue: every style module is registered, every table derived from it agrees with it, one palette and
one background table serve every engine, a style registered from outside renders through the whole CPU path with
nothing else edited, and custom tokens find their base style by one rule."""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass

import numpy as np
import pytest

import avatar.catalog.styles as catalogue
from avatar import contracts
from avatar.catalog.backgrounds import BACKGROUNDS, safer_background
from avatar.catalog.palettes import CALM_PALETTES, PALETTES
from avatar.catalog.platforms import BUILTIN_STYLES, PLATFORMS
from avatar.catalog.styles import (CUSTOM_ENHANCE, DEFAULT_BASE_STYLE, STYLES, EnhanceLook, StyleDefinition,
                                   base_style_of, enhance_look, is_photoreal, register, resolve_background)
from avatar.contracts import GenerateRequest
from avatar.engines.cpu_background import DRAWERS, CpuBackgroundEngine, generate_background
from avatar.engines.cpu_style import CpuStyleEngine
from avatar.engines.diffusion.recipes import RecipeBook, StyleRecipe
from avatar.engines.enhance import DetailEnhancer
from avatar.types import StyleSpec


# ------------------------------------------------------------------------------------------------- the table itself
def test_every_style_module_is_registered_under_its_name():
    modules = {m.name for m in pkgutil.iter_modules(catalogue.__path__) if not m.name.startswith("_")}
    assert modules == set(STYLES) and len(modules) >= 3
    for name, definition in STYLES.items():
        assert definition.name == name and definition.description and "\n" not in definition.description
        assert definition.render.__module__ == f"avatar.catalog.styles.{name}"


def test_derived_tables_agree_with_the_catalogue():
    assert list(BUILTIN_STYLES) == list(STYLES)
    assert dict(contracts.DEFAULT_INTENSITY) == {n: d.intensity for n, d in STYLES.items()}
    assert contracts.PALETTES is PALETTES and contracts.BACKGROUNDS is BACKGROUNDS
    assert {p.default_style for p in PLATFORMS.values()} <= set(STYLES)
    assert DEFAULT_BASE_STYLE in STYLES
    for name, d in STYLES.items():
        assert GenerateRequest(image="x", style=name).resolved_intensity == d.intensity
        assert is_photoreal(name) == d.photoreal
        assert enhance_look(name) is d.enhance
        assert resolve_background(StyleSpec(name, 0.5)) == d.backdrop
        assert d.backdrop[0] in BACKGROUNDS and d.backdrop[1] in PALETTES
    assert {n for n in STYLES if is_photoreal(n)} == {"corporate_headshot", "editorial_portrait"}
    assert enhance_look("sty_abcdefgh12") is CUSTOM_ENHANCE and not is_photoreal("sty_abcdefgh12")


def test_training_defaults_come_from_the_catalogue():
    from training.train_style import TrainConfig, parse_args
    assert TrainConfig.base_style == DEFAULT_BASE_STYLE
    assert parse_args(["--account", "a", "--images", "x"]).base_style == DEFAULT_BASE_STYLE


# -------------------------------------------------------------------------------------- palettes and backgrounds
def test_every_catalogued_background_kind_has_a_cpu_drawing():
    assert set(DRAWERS) == set(BACKGROUNDS)


def test_cpu_and_diffusion_read_the_same_palette_and_background_tables():
    solid = generate_background("solid", "forest", (8, 8), None, seed=0)
    assert np.array_equal(solid[4, 4], np.asarray(PALETTES["forest"].base, np.float32))
    recipe = StyleRecipe(base_model="m", prompt="p", background_prompt="{background} | {palette}")
    for kind, palette in (("bokeh", "navy"), ("solid", "sunset")):
        assert RecipeBook.background_prompt(recipe, kind, palette) == \
            f"{BACKGROUNDS[kind].words} | {PALETTES[palette].words}"


def test_safer_background_keeps_only_calm_palettes():
    assert CALM_PALETTES == {n for n, p in PALETTES.items() if p.calm} and "neon" not in CALM_PALETTES
    for palette in (None, *PALETTES):
        safe = safer_background(StyleSpec("anime_character", 0.8, palette=palette, background="neon_geometric"))
        assert safe.background == "studio_light" and safe.palette in CALM_PALETTES
        assert safe.palette == (palette if palette in CALM_PALETTES else "neutral_grey")


# ----------------------------------------------------------------------------------------- a style added from outside
@dataclass(frozen=True)
class SepiaLook:
    tone: tuple[float, float, float] = (1.07, 0.95, 0.72)   # channel gains of the sepia print
    amount: float = 1.0


def _render_sepia(x: np.ndarray, lm: np.ndarray, look: SepiaLook, t: float) -> np.ndarray:
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None] * np.asarray(look.tone, np.float32)
    return x + (grey - x) * (look.amount * t)


SEPIA = StyleDefinition(name="sepia_print", description="Warm sepia print.", look=SepiaLook, render=_render_sepia,
                        backdrop=("gradient", "warm_beige"), intensity=0.55, photoreal=True,
                        enhance=EnhanceLook(esr_blend=0.0, feature_sharpen=0.0, skin_tone=0.0, dof_blur=0.004))


@pytest.fixture
def sepia():
    register(SEPIA)
    yield SEPIA
    STYLES.pop(SEPIA.name)


def test_a_registered_style_is_accepted_rendered_backed_and_enhanced(sepia, aligned_astronaut):
    image, lm = aligned_astronaut.image, np.asarray(aligned_astronaut.landmarks, np.float32)
    request = GenerateRequest(image="x", style="sepia_print")
    assert request.resolved_intensity == 0.55 and "sepia_print" in BUILTIN_STYLES and is_photoreal("sepia_print")

    styled = CpuStyleEngine().apply(image, lm, StyleSpec("sepia_print", request.resolved_intensity))
    expected = _render_sepia(image.astype(np.float32) / 255.0, lm, SepiaLook(), 0.55)
    assert np.array_equal(styled, np.clip(expected * 255.0 + 0.5, 0, 255).astype(np.uint8))
    token = {"params": {"base_style": "sepia_print", "amount": 0.0}, "manifest": {}}
    assert np.array_equal(CpuStyleEngine().apply(image, lm, StyleSpec("sty_sepia00001", 0.55, token=token)), image)

    mask = np.zeros(image.shape[:2], np.float32)
    composed = CpuBackgroundEngine().render(styled, mask, lm, StyleSpec("sepia_print", 0.55))
    spec_default = StyleSpec("sepia_print", 0.55, background="gradient", palette="warm_beige")
    assert np.array_equal(composed, CpuBackgroundEngine().render(styled, mask, lm, spec_default))

    result = DetailEnhancer(net=None).enhance(styled, lm, 384, "sepia_print")
    assert result.steps == ("lanczos", "depth_of_field")   # its own strengths, not the custom-style defaults
    assert DetailEnhancer(net=None).enhance(styled, lm, 384, "sty_x1234567").steps != result.steps


def test_registration_refuses_clashes_and_malformed_definitions(sepia):
    with pytest.raises(ValueError, match="twice"):
        register(SEPIA)

    @dataclass
    class Mutable:
        amount: float = 1.0

    for bad in ({"name": "x1", "backdrop": ("wallpaper", "navy")}, {"name": "x2", "backdrop": ("solid", "plaid")},
                {"name": "x3", "look": Mutable}, {"name": "x4", "intensity": 1.5}):
        with pytest.raises(ValueError):
            register(StyleDefinition(**{**SEPIA.__dict__, **bad}))
    assert not {"x1", "x2", "x3", "x4"} & set(STYLES)


# ------------------------------------------------------------------------------------------------- base-style rule
@pytest.mark.parametrize("style, token, expected", [
    ("editorial_portrait", None, "editorial_portrait"),                                 # a built-in is its own base
    ("anime_character", {"params": {"base_style": "editorial_portrait"}}, "anime_character"),
    ("sty_abcdefgh12", {"params": {"base_style": "anime_character"},
                        "manifest": {"base_style": "editorial_portrait"}}, "anime_character"),   # params first
    ("sty_abcdefgh12", {"params": {"base_style": None},
                        "manifest": {"base_style": "editorial_portrait"}}, "editorial_portrait"),  # then the manifest
    ("sty_abcdefgh12", {"base_style": "plain", "params": {}}, "plain"),        # loaded diffusion token: top level
    ("sty_abcdefgh12", {"lut": None}, DEFAULT_BASE_STYLE),                      # nothing declared: the default
    ("sty_abcdefgh12", None, "sty_abcdefgh12"),                                 # no token: nothing to go on
    ("watercolour", None, "watercolour"),
])
def test_base_style_rule(style, token, expected):
    assert base_style_of(style, token) == expected


def test_every_consumer_follows_the_base_style_rule(monkeypatch):
    from avatar.engines import registry
    token = {"params": {}, "manifest": {"base_style": "anime_character"}}   # declared in the manifest only
    spec = StyleSpec("sty_abcdefgh12", 0.5, token=token)
    assert resolve_background(spec) == STYLES["anime_character"].backdrop
    assert resolve_background(StyleSpec("sty_abcdefgh12", 0.5, token={})) == STYLES[DEFAULT_BASE_STYLE].backdrop

    class Marker:
        def __init__(self, value: int) -> None:
            self.name, self.version, self.value = "marker", "1", value

    monkeypatch.setitem(registry.STYLE_ENGINES, "marker", lambda options: Marker(**options))
    engine = registry.create_style_engine("routed", {
        "default": {"name": "marker", "options": {"value": 1}},
        "styles": {"anime_character": {"name": "marker", "options": {"value": 2}},
                   DEFAULT_BASE_STYLE: {"name": "marker", "options": {"value": 3}}}})
    assert engine.engine_for(spec).value == 2
    assert engine.engine_for(StyleSpec("sty_abcdefgh12", 0.5, token={"params": {}})).value == 3
    assert engine.engine_for(StyleSpec("sty_abcdefgh12", 0.5)).value == 1

    recipe = StyleRecipe(base_model="m", prompt="p")
    book = RecipeBook(recipes={"plain": recipe, "anime_character": recipe}, custom="plain")
    assert book.for_style("sty_abcdefgh12", token)[0] == "anime_character"
    assert book.for_style("sty_abcdefgh12", {"params": {"base_style": "editorial_portrait"}})[0] == "plain"
    assert book.for_style("sty_abcdefgh12", None)[0] == "plain"


def test_cpu_engine_renders_a_token_on_its_manifest_base_and_refuses_an_unknown_one(aligned_astronaut):
    image, lm = aligned_astronaut.image, np.asarray(aligned_astronaut.landmarks, np.float32)
    engine = CpuStyleEngine()
    plain = engine.apply(image, lm, StyleSpec("editorial_portrait", 0.6))
    token = {"params": {}, "manifest": {"base_style": "editorial_portrait"}}
    assert np.array_equal(engine.apply(image, lm, StyleSpec("sty_abcdefgh12", 0.6, token=token)), plain)
    with pytest.raises(ValueError, match="plain"):
        engine.apply(image, lm, StyleSpec("sty_abcdefgh12", 0.6, token={"params": {"base_style": "plain"}}))
