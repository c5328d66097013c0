"""The pipeline's stages by name and the flow they make, derived from the stage modules (`avatar.stages`): the
orchestrator, the config table, the Serve graph, metrics and timings use these. No stage is named here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from avatar.stages import DEFINITIONS, Role


class _StageName(StrEnum):
    @property
    def deployment(self) -> str:
        """Its Serve deployment's name (`style_apply` -> `StyleApply`), as serve_config.yaml spells it."""
        return "".join(part.title() for part in self.value.split("_"))


Stage = _StageName("Stage", [(d.name.upper(), d.name) for d in DEFINITIONS], module=__name__, qualname="Stage")
"""One member per stage module, in flow order (`Stage.STYLE_APPLY == "style_apply"`)."""


@dataclass(frozen=True)
class Flow:
    """load -> detect -> [render chain -> gate] (retried) -> save, by stage."""

    load: Stage
    detect: Stage
    render: tuple[Stage, ...]
    gate: Stage
    save: Stage

    @property
    def per_attempt(self) -> tuple[Stage, ...]:
        """The stages every attempt runs again: their times are summed over attempts."""
        return (*self.render, self.gate)


def _flow() -> Flow:
    by_role = {role: tuple(Stage(d.name) for d in DEFINITIONS if d.role is role) for role in Role}
    (load,), (detect,), (gate,), (save,) = (by_role[r] for r in (Role.LOAD, Role.DETECT, Role.GATE, Role.SAVE))
    return Flow(load, detect, by_role[Role.RENDER], gate, save)


FLOW = _flow()
RENDER_STAGES: tuple[Stage, ...] = FLOW.per_attempt
