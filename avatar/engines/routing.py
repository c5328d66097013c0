"""Engines chosen per request by platform or style, so one deployment can, say, render gaming platforms with the
diffusion engine and professional ones with the CPU engine:

    engine:
      name: routed
      options:
        default: {name: cpu}
        styles: {editorial_portrait: {name: diffusion, options: {recipes: configs/diffusion.yaml}}}
        platforms: {discord: {name: diffusion, options: {recipes: configs/diffusion.yaml}}}

A platform route wins over a style route; custom tokens route by their base style (`base_style_of`). Identical engine
configurations are built once and shared.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from avatar.catalog.styles import base_style_of
from avatar.types import StyleSpec


class _Router:
    name = "routed"

    def __init__(self, create: Callable[[str, dict[str, Any] | None], Any], default: dict[str, Any],
                 styles: dict[str, dict[str, Any]] | None = None,
                 platforms: dict[str, dict[str, Any]] | None = None) -> None:
        built: dict[str, Any] = {}

        def engine(cfg: dict[str, Any]) -> Any:
            key = json.dumps(cfg, sort_keys=True, default=str)
            if key not in built:
                built[key] = create(cfg.get("name", "cpu"), cfg.get("options"))
            return built[key]

        self.default = engine(default)
        self.styles = {style: engine(cfg) for style, cfg in (styles or {}).items()}
        self.platforms = {platform: engine(cfg) for platform, cfg in (platforms or {}).items()}
        self.engines = list(built.values())
        self.version = "+".join(sorted({f"{e.name}/{e.version}" for e in self.engines}))

    def engine_for(self, spec: StyleSpec) -> Any:
        """The engine that renders `spec`: its platform's route, else its (base) style's, else the default."""
        if spec.platform in self.platforms:
            return self.platforms[spec.platform]
        return self.styles.get(base_style_of(spec.style, spec.token), self.default)

    def close(self) -> None:
        for engine in self.engines:
            close = getattr(engine, "close", None)
            if callable(close):
                close()


class RoutedStyleEngine(_Router):
    """`create` builds the routed engines (the registry passes its own factory)."""

    def __init__(self, create: Callable[[str, dict[str, Any] | None], Any], default: dict[str, Any] | None = None,
                 styles: dict[str, dict[str, Any]] | None = None,
                 platforms: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(create, default or {"name": "cpu"}, styles, platforms)

    def apply(self, image: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray:
        return self.engine_for(spec).apply(image, landmarks, spec)


class RoutedBackgroundEngine(_Router):
    def __init__(self, create: Callable[[str, dict[str, Any] | None], Any], default: dict[str, Any] | None = None,
                 styles: dict[str, dict[str, Any]] | None = None,
                 platforms: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(create, default or {"name": "cpu"}, styles, platforms)

    def render(self, image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray:
        return self.engine_for(spec).render(image, mask, landmarks, spec)
