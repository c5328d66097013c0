"""Platform profiles: output size, framing and default style per platform, and the likeness minimum its tier demands.

Framing is expressed on the canonical face template (see `avatar.vision.face.align`): where the eye midpoint sits (as a share
of the side) and how far apart the eyes are. A professional headshot shows shoulders (smaller face); a gaming avatar is
a tight crop (larger face).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from avatar.catalog.styles import STYLES, StyleDefinition
from avatar.errors import InvalidRequest

BUILTIN_STYLES: Mapping[str, StyleDefinition] = STYLES   # the catalogue itself, so new styles appear at once

RESOLUTIONS: dict[str, int] = {"standard": 800, "high": 1200}

# Likeness minimum per platform tier (overridable per platform in serve_config.yaml `likeness_minimums`).
TIER_LIKENESS_MIN: dict[str, float] = {"professional": 0.85, "social": 0.75, "gaming": 0.60}


@dataclass(frozen=True)
class Framing:
    """Canonical head placement in the square output, as shares of the side length."""

    eye_y: float = 0.42          # vertical position of the eye midpoint
    eye_distance: float = 0.20   # distance between eye centres


@dataclass(frozen=True)
class PlatformProfile:
    name: str
    tier: str
    default_style: str
    framing: Framing
    sizes: tuple[tuple[str, int], ...] = tuple(RESOLUTIONS.items())

    def size_for(self, resolution: str) -> int:
        return dict(self.sizes)[resolution]

    @property
    def likeness_min(self) -> float:
        return TIER_LIKENESS_MIN[self.tier]


_HEADSHOT = Framing(eye_y=0.42, eye_distance=0.18)
_PORTRAIT = Framing(eye_y=0.40, eye_distance=0.19)
_TIGHT = Framing(eye_y=0.44, eye_distance=0.24)

PLATFORMS: dict[str, PlatformProfile] = {p.name: p for p in (
    PlatformProfile("linkedin", "professional", "corporate_headshot", _HEADSHOT),
    PlatformProfile("slack", "professional", "corporate_headshot", _HEADSHOT),
    PlatformProfile("github", "professional", "corporate_headshot", _PORTRAIT),
    PlatformProfile("teams", "professional", "corporate_headshot", _HEADSHOT),
    PlatformProfile("twitter", "social", "editorial_portrait", _PORTRAIT),
    PlatformProfile("instagram", "social", "editorial_portrait", _PORTRAIT),
    PlatformProfile("portfolio", "social", "editorial_portrait", _PORTRAIT),
    PlatformProfile("generic", "social", "corporate_headshot", _PORTRAIT),
    PlatformProfile("discord", "gaming", "anime_character", _TIGHT),
    PlatformProfile("steam", "gaming", "anime_character", _TIGHT),
    PlatformProfile("twitch", "gaming", "anime_character", _TIGHT),
)}


def get_platform(name: str) -> PlatformProfile:
    """The profile for `name`; unknown names are a 422 that lists the allowed values."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise InvalidRequest(f"unknown platform {name!r}; allowed: {', '.join(sorted(PLATFORMS))}",
                             field="platform", code="unknown_platform") from None
