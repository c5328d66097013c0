"""Wires the avatar DAG: the ingress composes the six stages and the quality gate. Nothing else lives here."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from service.bg_generate import BgGenerate
from service.detail_enhance import DetailEnhance
from service.face_detect import FaceDetect
from service.ingress import AvatarIngress
from service.load_photo import LoadPhoto
from service.quality_gate import QualityGate
from service.save_avatar import SaveAvatar
from service.style_apply import StyleApply

STAGES = (LoadPhoto, FaceDetect, StyleApply, BgGenerate, DetailEnhance, QualityGate, SaveAvatar)


def build_app(options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The app; `options` maps deployment names to `.options(...)` overrides (how `avatar serve` applies the config)."""
    options = options or {}

    def bound(deployment, *args):
        return deployment.options(**options.get(deployment.name, {})).bind(*args)

    return bound(AvatarIngress, *(bound(stage) for stage in STAGES))


app = build_app()
