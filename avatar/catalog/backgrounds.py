"""Background kinds: the one table of names requests may ask for, with the words diffusion prompts use for each.

Each engine brings its own way to render a kind (the CPU engine maps every name to a drawing function, and a test
checks none is missing); the names and their meaning live here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from avatar.catalog.palettes import CALM_PALETTES, SAFE_PALETTE
from avatar.types import StyleSpec


@dataclass(frozen=True)
class BackgroundKind:
    """`words`: how a diffusion background prompt names this kind."""

    words: str


BACKGROUNDS: dict[str, BackgroundKind] = {
    "studio_light": BackgroundKind("bright seamless studio"),
    "studio_dark": BackgroundKind("dark seamless studio"),
    "gradient": BackgroundKind("smooth gradient"),
    "neon_geometric": BackgroundKind("neon geometric shapes"),
    "bokeh": BackgroundKind("blurred city lights bokeh"),
    "solid": BackgroundKind("plain solid colour"),
}

SAFE_BACKGROUND = "studio_light"   # what a content-safety retry renders


def safer_background(spec: StyleSpec) -> StyleSpec:
    """`spec` with a calm, low-saturation studio background (after a content-safety failure on a busy or dark one)."""
    palette = spec.palette if spec.palette in CALM_PALETTES else SAFE_PALETTE
    return replace(spec, background=SAFE_BACKGROUND, palette=palette)
