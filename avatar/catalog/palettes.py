"""Colour palettes: the one table every engine reads a palette name from.

The CPU background engine draws with the colours, the diffusion background engine pre-fills with `base` and writes
`words` into its prompt, and the safer-background retry keeps a palette only when it is `calm`. Requests validate
`palette` against this table's names.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """A mid `base` tone, a `light` and a `dark` tone, vivid `accents`, the prompt `words` naming it, and whether it
    is `calm` (low saturation, fit for the plain background a content-safety retry falls back to)."""

    base: RGB
    light: RGB
    dark: RGB
    accents: tuple[RGB, ...]
    words: str
    calm: bool = False


PALETTES: dict[str, Palette] = {
    "neutral_grey": Palette((150, 150, 153), (222, 222, 225), (78, 78, 84), ((190, 190, 195), (120, 120, 126)),
                            "neutral grey tones", calm=True),
    "warm_beige": Palette((200, 180, 155), (242, 230, 212), (120, 98, 78), ((225, 200, 165), (170, 140, 110)),
                          "warm beige tones", calm=True),
    "cool_blue": Palette((120, 150, 185), (205, 222, 240), (45, 66, 105), ((150, 190, 230), (90, 120, 170)),
                         "cool blue tones", calm=True),
    "navy": Palette((36, 52, 92), (90, 115, 170), (12, 18, 40), ((120, 150, 210), (60, 80, 140)),
                    "deep navy blue"),
    "forest": Palette((52, 92, 66), (130, 170, 128), (18, 40, 28), ((160, 200, 120), (90, 140, 90)),
                      "forest green tones"),
    "sunset": Palette((225, 120, 72), (255, 205, 130), (70, 25, 60), ((255, 160, 70), (240, 90, 110), (255, 220, 150)),
                      "orange and pink sunset colours"),
    "neon": Palette((120, 40, 200), (60, 230, 255), (14, 8, 34), ((255, 40, 200), (40, 230, 255), (140, 255, 60)),
                    "vivid neon magenta and cyan"),
    "pastel": Palette((225, 205, 225), (245, 235, 245), (160, 150, 185), ((200, 225, 245), (210, 240, 215)),
                      "soft pastel colours", calm=True),
    "monochrome": Palette((128, 128, 128), (235, 235, 235), (28, 28, 28), ((200, 200, 200), (90, 90, 90)),
                          "black and white", calm=True),
}

CALM_PALETTES: frozenset[str] = frozenset(name for name, p in PALETTES.items() if p.calm)
SAFE_PALETTE = "neutral_grey"   # the calm palette a retry uses when the requested one is not calm
