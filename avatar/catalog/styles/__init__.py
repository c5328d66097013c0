"""The style catalogue: each built-in style is one module of this package, and `STYLES` is the one table the rest of
the service reads a style from.

A style module defines `STYLE = StyleDefinition(...)`: its look parameters, its CPU render function, its default
background, its enhancement strengths, its default intensity, whether it is photo-real, and a one-line description.
Request validation, default intensities, platform defaults, the quality gate, DetailEnhance, the background engines,
the CPU style engine, engine routing, the styles API and training all read this table, so adding a style is adding
one file (docs/styles.md). Modules are found with `pkgutil` (stdlib) when the package is imported: Python entry
points would also find them, but only after the package is reinstalled.

`base_style_of` is the one rule for which built-in style a custom style token builds on.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import numpy as np

from avatar.catalog.backgrounds import BACKGROUNDS
from avatar.catalog.palettes import PALETTES
from avatar.types import StyleSpec

# (float RGB image 0..1, (468, 2) landmarks, look, intensity in (0, 1]) -> float RGB image (clipped by the engine)
Render = Callable[[np.ndarray, np.ndarray, Any, float], np.ndarray]


@dataclass(frozen=True)
class EnhanceLook:
    """DetailEnhance strengths of a style (training code and configuration may override them by name)."""

    esr_blend: float = 0.6          # 0..1 share of the Real-ESRGAN face blended over the Lanczos face
    feature_sharpen: float = 0.8    # 0..2 unsharp-mask amount on eyes, brows and lips
    skin_tone: float = 0.5          # 0..1 share of the skin hue correction applied (casts only, never lightness)
    dof_blur: float = 0.0           # background blur sigma as a share of the output side (0 = no depth of field)


@dataclass(frozen=True)
class StyleDefinition:
    """Everything the service knows about one built-in style."""

    name: str                   # the `style` value of a request; equal to the module's name
    description: str            # one line, for listings and docs
    look: type                  # frozen dataclass of float (or float tuple) look parameters; tokens override by name
    render: Render              # the CPU engine's rendering of `look` at an intensity
    backdrop: tuple[str, str]   # (background kind, palette) rendered when the request names neither
    enhance: EnhanceLook        # DetailEnhance strengths
    intensity: float            # default `style_intensity`
    photoreal: bool             # the quality gate then demands a face the detector finds (no structure fallback)

    def look_for(self, overrides: Mapping[str, Any] | None = None) -> Any:
        """The default look with the known fields of `overrides` applied (unknown keys, e.g. `base_style`, ignored)."""
        look = self.look()
        if not overrides:
            return look
        names = {f.name for f in fields(look)}
        return replace(look, **{k: _coerce(getattr(look, k), v) for k, v in overrides.items() if k in names})


def _coerce(default: Any, value: Any) -> Any:
    if isinstance(default, tuple):
        return tuple(float(v) for v in value)
    return float(value)


STYLES: dict[str, StyleDefinition] = {}

DEFAULT_BASE_STYLE = "corporate_headshot"   # the base of a custom token that declares none
CUSTOM_INTENSITY = 0.8                       # default `style_intensity` of custom tokens
# Enhancement of custom tokens: DetailEnhance is given the request's style name only, not the token's base.
CUSTOM_ENHANCE = EnhanceLook(esr_blend=0.55, feature_sharpen=0.7, skin_tone=0.3, dof_blur=0.001)


def register(definition: StyleDefinition) -> StyleDefinition:
    """Add a style to `STYLES`; ValueError when its name is taken or its backdrop or look is malformed."""
    if definition.name in STYLES:
        raise ValueError(f"style {definition.name!r} is registered twice")
    kind, palette = definition.backdrop
    if kind not in BACKGROUNDS or palette not in PALETTES:
        raise ValueError(f"style {definition.name!r}: unknown background {kind!r} or palette {palette!r}")
    if not (is_dataclass(definition.look) and definition.look.__dataclass_params__.frozen):
        raise ValueError(f"style {definition.name!r}: look must be a frozen dataclass")
    if not 0.0 <= definition.intensity <= 1.0:
        raise ValueError(f"style {definition.name!r}: intensity must lie in 0..1")
    STYLES[definition.name] = definition
    return definition


def base_style_of(style: str, token: Mapping[str, Any] | None = None) -> str:
    """The style a request builds on: a built-in style is its own base; a custom token's is its `params.base_style`,
    else its manifest's `base_style` (a loaded diffusion token also carries it at the top level), else
    `DEFAULT_BASE_STYLE`. A name that is neither built in nor given with a token is returned as it is.

    The base may lie outside the catalogue (a diffusion recipe book can name more styles); callers decide.
    """
    if style in STYLES or token is None:
        return style
    declared = ((token.get("params") or {}).get("base_style") or (token.get("manifest") or {}).get("base_style")
                or token.get("base_style"))
    return declared or DEFAULT_BASE_STYLE


def look_for(style: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The look of built-in `style` with `overrides` applied (KeyError for an unknown style)."""
    return STYLES[style].look_for(overrides)


def resolve_background(spec: StyleSpec) -> tuple[str, str]:
    """The (background kind, palette) a spec renders: its overrides, else its base style's backdrop (the default
    base style's when the base lies outside the catalogue)."""
    definition = STYLES.get(base_style_of(spec.style, spec.token)) or STYLES[DEFAULT_BASE_STYLE]
    kind, palette = definition.backdrop
    return spec.background or kind, spec.palette or palette


def enhance_look(style: str) -> EnhanceLook:
    """The DetailEnhance strengths of `style` (`CUSTOM_ENHANCE` for a name outside the catalogue)."""
    definition = STYLES.get(style)
    return definition.enhance if definition else CUSTOM_ENHANCE


def is_photoreal(style: str) -> bool:
    definition = STYLES.get(style)
    return bool(definition and definition.photoreal)


class _Field(Mapping[str, Any]):
    """A read-only {style: attribute} view of `STYLES` that follows registrations (the tables other modules import)."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __getitem__(self, style: str) -> Any:
        return getattr(STYLES[style], self._attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(STYLES)

    def __len__(self) -> int:
        return len(STYLES)


DEFAULT_INTENSITY: Mapping[str, float] = _Field("intensity")


def _discover() -> None:
    """Register the `STYLE` of every public module of this package (module name == style name)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        definition = getattr(importlib.import_module(f"{__name__}.{info.name}"), "STYLE", None)
        if not isinstance(definition, StyleDefinition) or definition.name != info.name:
            raise ImportError(f"{__name__}.{info.name} must define STYLE = StyleDefinition(name={info.name!r}, ...)")
        register(definition)
    if DEFAULT_BASE_STYLE not in STYLES:
        raise ImportError(f"the default base style {DEFAULT_BASE_STYLE!r} has no module")


_discover()   # last: style modules import the types above from this partly initialised package
