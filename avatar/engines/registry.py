"""Engines by name, so `serve_config.yaml` (or the CLI) picks the style and background engines without code changes.

Each entry is a factory taking the engine's options dict (from configuration) and returning a loaded engine.
"""

from __future__ import annotations

from typing import Any, Callable

from avatar.errors import ModelUnavailable
from avatar.engines.base import BackgroundEngine, StyleEngine


def _cpu_style(options: dict[str, Any]) -> StyleEngine:
    from avatar.engines.cpu_style import CpuStyleEngine
    return CpuStyleEngine(**options)


def _cpu_background(options: dict[str, Any]) -> BackgroundEngine:
    from avatar.engines.cpu_background import CpuBackgroundEngine
    return CpuBackgroundEngine(**options)


def _diffusion_style(options: dict[str, Any]) -> StyleEngine:
    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    return DiffusionStyleEngine(**options)


def _diffusion_background(options: dict[str, Any]) -> BackgroundEngine:
    from avatar.engines.diffusion.engine import DiffusionBackgroundEngine
    return DiffusionBackgroundEngine(**options)


def _routed_style(options: dict[str, Any]) -> StyleEngine:
    from avatar.engines.routing import RoutedStyleEngine
    return RoutedStyleEngine(create_style_engine, **options)


def _routed_background(options: dict[str, Any]) -> BackgroundEngine:
    from avatar.engines.routing import RoutedBackgroundEngine
    return RoutedBackgroundEngine(create_background_engine, **options)


STYLE_ENGINES: dict[str, Callable[[dict[str, Any]], StyleEngine]] = {
    "cpu": _cpu_style, "diffusion": _diffusion_style, "routed": _routed_style}
BACKGROUND_ENGINES: dict[str, Callable[[dict[str, Any]], BackgroundEngine]] = {
    "cpu": _cpu_background, "diffusion": _diffusion_background, "routed": _routed_background}


def create_style_engine(name: str = "cpu", options: dict[str, Any] | None = None) -> StyleEngine:
    return _create(STYLE_ENGINES, "style", name, options)


def create_background_engine(name: str = "cpu", options: dict[str, Any] | None = None) -> BackgroundEngine:
    return _create(BACKGROUND_ENGINES, "background", name, options)


def _create(table: dict[str, Callable[[dict[str, Any]], Any]], kind: str, name: str,
            options: dict[str, Any] | None) -> Any:
    try:
        factory = table[name]
    except KeyError:
        raise ModelUnavailable(f"unknown {kind} engine {name!r}; available: {', '.join(sorted(table))}") from None
    return factory(dict(options or {}))
