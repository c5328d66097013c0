"""The pipeline's stages, named once: the orchestrator, the stage table, the Serve graph, metrics and timings use these."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    LOAD_PHOTO = "load_photo"
    FACE_DETECT = "face_detect"
    STYLE_APPLY = "style_apply"
    BG_GENERATE = "bg_generate"
    DETAIL_ENHANCE = "detail_enhance"
    QUALITY_GATE = "quality_gate"
    SAVE_AVATAR = "save_avatar"

    @property
    def deployment(self) -> str:
        """Its Serve deployment's name (`style_apply` -> `StyleApply`), as serve_config.yaml spells it."""
        return "".join(part.title() for part in self.value.split("_"))


RENDER_STAGES: tuple[Stage, ...] = (Stage.STYLE_APPLY, Stage.BG_GENERATE, Stage.DETAIL_ENHANCE, Stage.QUALITY_GATE)
