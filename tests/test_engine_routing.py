"""One deployment, several engines: requests are routed to an engine by platform, then style, else the default."""

from __future__ import annotations

import numpy as np

from avatar.job import AvatarJob
from avatar.stages.style_apply import StyleApplyStage
from avatar.engines import registry
from avatar.engines.registry import create_style_engine
from avatar.types import StyleSpec


class Marker:
    """A tiny engine that paints a constant, so the output shows which engine ran."""

    def __init__(self, value: int = 0) -> None:
        self.name, self.version, self.value = f"marker{value}", "1", value

    def apply(self, image, landmarks, spec):
        return np.full_like(image, self.value)


def test_routes_by_platform_then_style_then_default(monkeypatch):
    built = []

    def marker(options):
        built.append(options)
        return Marker(**options)

    monkeypatch.setitem(registry.STYLE_ENGINES, "marker", marker)
    engine = create_style_engine("routed", {
        "default": {"name": "marker", "options": {"value": 1}},
        "styles": {"editorial_portrait": {"name": "marker", "options": {"value": 2}}},
        "platforms": {"discord": {"name": "marker", "options": {"value": 3}},
                      "steam": {"name": "marker", "options": {"value": 3}}}})
    assert len(built) == 3   # identical configurations share one engine
    image, lm = np.zeros((8, 8, 3), np.uint8), np.zeros((468, 2), np.float32)
    run = lambda style, platform, token=None: int(engine.apply(image, lm, StyleSpec(style, 0.5, token=token,
                                                                                   platform=platform))[0, 0, 0])
    assert run("corporate_headshot", "linkedin") == 1
    assert run("editorial_portrait", "linkedin") == 2
    assert run("editorial_portrait", "discord") == 3 and run("anime_character", "steam") == 3
    assert run("sty_abcdefgh12", "twitter", {"params": {"base_style": "editorial_portrait"}}) == 2


def test_stage_metadata_names_the_engine_that_ran(monkeypatch, aligned_astronaut):
    monkeypatch.setitem(registry.STYLE_ENGINES, "marker", lambda options: Marker(**options))
    stage = StyleApplyStage(create_style_engine("routed", {
        "default": {"name": "cpu"}, "platforms": {"discord": {"name": "marker", "options": {"value": 7}}}}))
    from avatar.vision.imageio import Pixels
    for platform, expected in (("discord", "marker7/1"), ("linkedin", "cpu/")):
        job = AvatarJob(request_id="r", style="anime_character", platform=platform, size=800, intensity=0.5)
        job.aligned, job.landmarks = Pixels.of(aligned_astronaut.image), aligned_astronaut.landmarks
        assert stage.run(job).versions["style_engine"].startswith(expected)
